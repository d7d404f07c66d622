"""Recipes: one dataclass per stage — `TrainConfig` (FP32 training), `PTQConfig` (calibration),
`QATConfig` (fine-tuning) — the single description of a run.

Defaults are the shipped recipes (configs/*.json hold the exact ones, with their data). The CLI's
flags, the app's Train tab and `qatie.api` all fill these objects; checkpoints and sidecars store
the one they were made with (`to_dict`), and `key()` hashes one for cache keys. Torch-free, so
`qatie --help` and the app read them without importing torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from qatie.errors import QatieError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.99
CALIB_CROP = 256  # calibration crops' side (0: whole photos)


class _Recipe:
    """What the three configs share: dict and JSON round trips that name unknown fields, a hash."""

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise QatieError(f"unknown {cls.__name__} options: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(f.name for f in fields(cls))})")
        return cls(**d)

    @classmethod
    def load(cls, path):
        """A recipe from a JSON file of its fields (configs/*.json)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise QatieError(f"{path}: not a readable JSON recipe ({e})") from None
        if not isinstance(data, dict):
            raise QatieError(f"{path}: a recipe is a JSON object of {cls.__name__} fields")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def resolve(cls, config=None, **options):
        """`config` (default: the defaults) with `options` overriding its fields by name; None
        values are ignored (an unset CLI flag or keyword keeps the recipe's value)."""
        base = (config or cls()).to_dict()
        return cls.from_dict({**base, **{k: v for k, v in options.items() if v is not None}})

    def key(self, n: int = 16) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:n]


@dataclass
class TrainConfig(_Recipe):
    """FP32 training. Defaults: the shipped restoration recipe (configs/fp32_c32.json) on the
    bundled sample photos: L1 loss — the paper's loss learns several times slower here — and a
    degradation mix without tone errors (every mix with them re-graded real photos)."""
    data: list[str] = field(default_factory=lambda: ["samples"])
    width: int = 32
    variant: str = "full"
    steps: int = 3000
    batch_size: int = 8
    patch: int = 128
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 100
    grad_clip: float = 1.0
    loss: str = "l1"
    seed: int = 0
    global_crops: float = 0.0  # share of crops showing the whole photo (see PatchSampler)
    degradation: dict = field(default_factory=lambda: {"p_tone": 0.0})  # DegradationConfig overrides
    distill: float = 0.0  # QAT: weight of matching the FP32 teacher's output (1 = only that)
    val_every: int = 500
    val_data: list[str] = field(default_factory=list)  # extra validation pairs, e.g. "pairs:IN,TGT"
    val_limit: int = 16
    checkpoint_every: int = 250
    threads: int = 0  # 0: leave torch's default
    device: str = "auto"


@dataclass(frozen=True)
class PTQConfig(_Recipe):
    """Post-training quantization: where the activation ranges come from. Defaults: the shipped
    minmax baseline (configs/ptq_minmax.json)."""
    method: str = "minmax"
    calib: str = "samples"
    num_calib: int = 32
    percentile: float = DEFAULT_PERCENTILE  # only for method "percentile"
    seed: int = 0
    calib_crop: int = CALIB_CROP
    keep_float: Optional[str] = None  # "auto:K" or conv names, comma-separated (qatie.quantize.keep_float)

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise QatieError(f"unknown calibration method {self.method!r}: choose {', '.join(CALIBRATION_METHODS)}")


@dataclass(frozen=True)
class QATConfig(_Recipe):
    """Quantization-aware fine-tuning. Defaults: the shipped recipe (configs/qat_c32.json):
    distilled from the FP32 output, ranges started by entropy calibration and then learned."""
    data: tuple[str, ...] = ("samples",)
    steps: int = 2000
    lr: float = 5e-5
    learnable: bool = True
    distill: float = 1.0
    batch_size: int = 8
    patch: int = 128
    num_calib: int = 32
    calib_method: str = "entropy"
    seed: int = 0
    val_data: tuple[str, ...] = ()
    val_every: int = 250
    val_limit: int = 16  # photos per validation set (TrainConfig's default)
    threads: int = 0

    def __post_init__(self):
        if self.calib_method not in CALIBRATION_METHODS:
            raise QatieError(f"unknown calibration method {self.calib_method!r}: "
                             f"choose {', '.join(CALIBRATION_METHODS)}")
        object.__setattr__(self, "data", tuple(self.data))  # JSON and the CLI give lists
        object.__setattr__(self, "val_data", tuple(self.val_data))
