"""Recipes: one dataclass per stage — `TrainConfig` (FP32 training), `PTQConfig` (calibration),
`QATConfig` (fine-tuning) — and `RunRecipe`, a whole run in one file: where its FP32 model comes
from, its PTQ, its QAT stages and the files it writes (configs/restoration.json, configs/paper.json;
`qatie run`).

Defaults are the shipped recipes. The CLI's flags, the app's Train tab and `qatie.api` all fill
these objects (tests check that every flag is a field); checkpoints and sidecars store the one they
were made with (`to_dict`), and `key()` hashes one for cache keys. Every recipe file is read by
`read_json_object`. Torch-free, so `qatie --help` and the app read them without importing torch.
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


def read_json_object(source, what: str) -> dict:
    """The one loader of recipe files: a JSON file (or, where a flag allows it, an inline JSON
    object) → dict, with errors that say which file and what is wrong."""
    text = str(source)
    if text.lstrip().startswith("{"):
        raw, where = text, "inline JSON"
    else:
        try:
            raw, where = Path(source).read_text(), str(source)
        except OSError as e:
            raise QatieError(f"{source}: cannot read this {what} ({e.strerror or e})") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise QatieError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise QatieError(f"{where}: a {what} is a JSON object of named fields")
    return data


class _Recipe:
    """What the three configs share: dict and JSON round trips that name unknown fields, a hash."""

    #: This stage's section in a `RunRecipe` file (so `--config configs/paper.json` works too).
    SECTION = ""

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise QatieError(f"unknown {cls.__name__} options: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(f.name for f in fields(cls))})")
        return cls(**d)

    @classmethod
    def load(cls, path):
        """A recipe from a JSON file of its fields, or this stage of a run recipe (its first QAT
        stage for `QATConfig`)."""
        data = read_json_object(path, f"{cls.__name__} recipe")
        if "name" in data and cls.SECTION in data:  # a RunRecipe file
            return getattr(RunRecipe.from_dict(data), f"{cls.SECTION}_configs")()[0]
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
    SECTION = "train"
    """FP32 training. Defaults: the shipped restoration recipe (configs/restoration.json) on the
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
    minmax baseline (configs/restoration.json's "ptq")."""
    SECTION = "ptq"
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
    """Quantization-aware fine-tuning. Defaults: the shipped recipe (configs/restoration.json's
    "qat"): distilled from the FP32 output, ranges started by entropy calibration and then learned."""
    SECTION = "qat"
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


#: The files a run writes into its `out` folder, by step (with the recipe's `prefix`).
RUN_FILES = {"fp32_pt": "fp32.pt", "fp32_onnx": "fp32.onnx", "ptq_onnx": "int8_ptq.onnx", "qat_pt": "qat.pt",
             "qat_onnx": "int8_qat.onnx"}
#: A run's steps, in order, and what each does (`qatie run --steps`).
RUN_STEPS = {
    "fp32": "train the FP32 model (TrainConfig), or import the authors' TFLite file as FP32",
    "fp32_onnx": "export the FP32 checkpoint to ONNX",
    "ptq": "calibrate PTQ ranges (PTQConfig) and export the INT8 ONNX model",
    "qat": "QAT fine-tuning (QATConfig), stage after stage, each continuing the last",
    "qat_onnx": "export the QAT checkpoint to INT8 ONNX",
}


@dataclass(frozen=True)
class RunRecipe:
    """One run, every stage, in one file (BasicSR-style): `qatie run configs/paper.json`.

    The FP32 model is trained (`train`: TrainConfig fields) or imported (`import_tflite`: the
    authors' file); `ptq` holds PTQConfig fields; `qat` is a list of stages, each QATConfig fields
    overriding the stage before (the first overrides QATConfig's defaults), each continuing the
    last stage's checkpoint. Shipped files go to `out` named `prefix` + RUN_FILES; run folders and
    intermediate checkpoints to `work/<name>_*`. `notes` says why the recipe is what it is."""
    name: str
    train: Optional[dict] = None
    import_tflite: Optional[str] = None
    ptq: dict = field(default_factory=dict)
    qat: tuple = ({},)
    out: str = "checkpoints"
    work: str = "runs"
    prefix: str = ""
    notes: str = ""

    def __post_init__(self):
        if not self.name or not str(self.name).replace("_", "").replace("-", "").isalnum():
            raise QatieError(f"run name {self.name!r}: use letters, digits, - and _ (it names the run folders)")
        if (self.train is None) == (self.import_tflite is None):
            raise QatieError(f"run {self.name!r}: give either \"train\" (TrainConfig fields) or \"import_tflite\" "
                             "(the authors' TFLite file) as the source of the FP32 model")
        object.__setattr__(self, "qat", tuple(self.qat))
        if not self.qat:
            raise QatieError(f"run {self.name!r}: \"qat\" needs at least one stage (an empty object: the defaults)")
        self.train_configs(), self.ptq_configs(), self.qat_configs()  # every section is valid now, not mid-run

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecipe":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise QatieError(f"unknown run recipe fields: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(f.name for f in fields(cls))})")
        if "name" not in d:
            raise QatieError("a run recipe needs a \"name\"")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "RunRecipe":
        return cls.from_dict(read_json_object(path, "run recipe"))

    def train_configs(self) -> list[TrainConfig]:
        return [] if self.train is None else [TrainConfig.from_dict(self.train)]

    def ptq_configs(self) -> list[PTQConfig]:
        return [PTQConfig.from_dict(self.ptq)]

    def qat_configs(self) -> list[QATConfig]:
        stages, fields_so_far = [], {}
        for stage in self.qat:
            if not isinstance(stage, dict):
                raise QatieError(f"run {self.name!r}: each QAT stage is an object of QATConfig fields")
            fields_so_far = {**fields_so_far, **stage}
            stages.append(QATConfig.from_dict(fields_so_far))
        return stages

    def files(self) -> dict[str, Path]:
        return {k: Path(self.out) / f"{self.prefix}{v}" for k, v in RUN_FILES.items()}

    def work_path(self, what: str) -> Path:
        return Path(self.work) / f"{self.name}_{what}"

    def plan(self) -> list[tuple[str, str]]:
        """(step, what it does and writes) for each step, in order."""
        f = self.files()
        src = (f"import {self.import_tflite}" if self.import_tflite else
               f"train {self.train_configs()[0].steps} steps in {self.work_path('fp32')}")
        qat = " → ".join(f"{c.steps} steps" for c in self.qat_configs())
        return [("fp32", f"{src} → {f['fp32_pt']}"), ("fp32_onnx", f"export → {f['fp32_onnx']}"),
                ("ptq", f"{self.ptq_configs()[0].method} PTQ → {f['ptq_onnx']}"),
                ("qat", f"QAT {qat} in {self.work_path('qat')}* → {f['qat_pt']}"),
                ("qat_onnx", f"export → {f['qat_onnx']}")]
