"""One recipe per run: `qatie run` reads a RunRecipe holding every stage; the stage commands, the
CLI flags and the Train tab fill the same dataclasses (`qatie.config`)."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from conftest import REPO_ROOT, run_cli
from qatie.config import RUN_FILES, RUN_STEPS, PTQConfig, QATConfig, RunRecipe, TrainConfig
from qatie.errors import QatieError

CONFIGS = REPO_ROOT / "configs"
SHIPPED = sorted(CONFIGS.glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_recipe_in_configs_loads_and_plans_every_step(path):
    recipe = RunRecipe.load(path)
    assert [step for step, _ in recipe.plan()] == list(RUN_STEPS)
    assert recipe.name == path.stem, "a recipe is named after its file (its run folders carry the name)"


def test_ship_sh_rebuilds_every_shipped_model_file():
    """configs/ship.sh is `qatie run` per recipe; together they write every .pt/.onnx in checkpoints/."""
    script = (CONFIGS / "ship.sh").read_text()
    recipes = [RunRecipe.load(REPO_ROOT / m) for m in re.findall(r"^qatie run (\S+)", script, re.M)]
    assert recipes, "ship.sh runs no recipe"
    written = {str(f) for r in recipes for f in r.files().values()}
    shipped = {f"checkpoints/{p.name}" for p in (REPO_ROOT / "checkpoints").iterdir() if p.suffix in (".pt", ".onnx")}
    assert written == shipped


def test_a_stage_command_reads_its_section_of_a_run_recipe():
    paper = json.loads((CONFIGS / "paper.json").read_text())
    restoration = json.loads((CONFIGS / "restoration.json").read_text())
    assert PTQConfig.load(CONFIGS / "paper.json") == PTQConfig.from_dict(paper["ptq"])
    assert QATConfig.load(CONFIGS / "paper.json") == QATConfig.from_dict(paper["qat"][0])
    assert TrainConfig.load(CONFIGS / "restoration.json") == TrainConfig.from_dict(restoration["train"])


def test_qat_stages_override_the_stage_before():
    recipe = RunRecipe(name="t", train={}, qat=[{"steps": 7, "lr": 1e-4, "data": ["samples"]}, {"seed": 3}])
    first, second = recipe.qat_configs()
    assert (first.steps, first.lr, first.seed) == (7, 1e-4, 0)
    assert (second.steps, second.lr, second.seed, second.data) == (7, 1e-4, 3, ("samples",))


@pytest.mark.parametrize("fields, message", [
    ({"name": "x", "train": {}, "import_tflite": "a.tflite"}, "either"),
    ({"name": "x"}, "either"),
    ({"train": {}}, "needs a \"name\""),
    ({"name": "x", "train": {}, "nope": 1}, "unknown run recipe fields: nope"),
    ({"name": "x", "train": {"stepz": 1}}, "unknown TrainConfig options: stepz"),
    ({"name": "x", "train": {}, "ptq": {"method": "magic"}}, "unknown calibration method"),
    ({"name": "x", "train": {}, "qat": []}, "at least one stage"),
    ({"name": "../x", "train": {}}, "run name"),
])
def test_a_bad_recipe_is_refused_before_anything_runs(fields, message):
    with pytest.raises(QatieError, match=re.escape(message)):
        RunRecipe.from_dict(fields)


def test_recipe_files_that_are_not_recipes(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QatieError, match="not valid JSON"):
        RunRecipe.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(QatieError, match="JSON object"):
        RunRecipe.load(bad)
    with pytest.raises(QatieError, match="cannot read"):
        RunRecipe.load(tmp_path / "absent.json")


def test_cli_run_dry_run_and_unknown_steps():
    out = run_cli("run", CONFIGS / "paper.json", "--dry-run", "--steps", "ptq,qat_onnx").stdout
    assert "paper_int8_ptq.onnx" in out and "paper_int8_qat.onnx" in out and "paper_fp32.onnx" not in out
    proc = run_cli("run", CONFIGS / "paper.json", "--steps", "ptq,bake", check=False)
    assert proc.returncode == 2 and "unknown run steps bake" in proc.stderr


#: Flags of the stage commands that are not recipe fields: inputs, outputs, run control.
NOT_RECIPE_FLAGS = {"checkpoint", "teacher", "config", "out", "resume", "run_dir", "func", "command", "json"}
#: Flags named differently from their field.
FLAG_FIELDS = {"val": "val_data"}


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("ptq", PTQConfig), ("qat", QATConfig)])
def test_every_stage_flag_is_a_recipe_field(command, cls):
    """The CLI's flags set fields of the same dataclasses the recipes and the Train tab fill."""
    from qatie.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    dests = {a.dest for a in sub._actions if a.dest != "help"} - NOT_RECIPE_FLAGS
    fields = {f.name for f in dataclasses.fields(cls)}
    assert {FLAG_FIELDS.get(d, d) for d in dests} <= fields


def test_the_train_tabs_settings_are_valid_recipes():
    from app.train import handlers as tt

    low = dataclasses.replace(tt.DEFAULTS, fp32_steps=0, qat_steps=1, ptq_method="entropy")
    high = dataclasses.replace(tt.DEFAULTS, fp32_steps=tt.MAX_FP32_STEPS, qat_steps=tt.MAX_QAT_STEPS,
                               batch_size=tt.MAX_BATCH, patch=tt.MAX_PATCH)
    for s in (tt.DEFAULTS, low, high):
        train_cfg, ptq_cfg, qat_cfg = tt.stage_configs(s, "samples", s.width, threads=1)
        assert TrainConfig.from_dict(train_cfg.to_dict()) == train_cfg  # a valid recipe, round trip included
        assert (ptq_cfg.method, qat_cfg.steps, qat_cfg.lr) == (s.ptq_method, s.qat_steps, s.qat_lr)
        assert qat_cfg.distill == QATConfig().distill and qat_cfg.calib_method == QATConfig().calib_method


@pytest.mark.slow
def test_qatie_run_builds_every_file_of_a_tiny_recipe(tmp_path):
    """Every step for real, on the built-in photos: FP32 training, its ONNX, PTQ, two QAT stages
    (the second continuing the first), the INT8 ONNX — each file the next step's input."""
    from qatie.model.checkpoint import read_checkpoint
    from qatie.runtime.enhancer import OnnxEnhancer

    recipe = {"name": "tiny", "out": str(tmp_path / "out"), "work": str(tmp_path / "runs"), "prefix": "t_",
              "train": {"data": ["samples"], "width": 8, "steps": 2, "batch_size": 2, "patch": 32, "val_every": 2,
                        "val_limit": 1, "checkpoint_every": 2, "threads": 1},
              "ptq": {"calib": "samples", "num_calib": 2, "calib_crop": 32},
              "qat": [{"data": ["samples"], "steps": 2, "batch_size": 2, "patch": 32, "num_calib": 2,
                       "val_every": 2, "val_limit": 1, "threads": 1, "calib_method": "minmax"}, {"seed": 1}]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(recipe))
    run_cli("run", path, timeout=600)
    files = RunRecipe.load(path).files()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix != ".json") == \
        sorted(f"t_{name}" for name in RUN_FILES.values())
    stages = RunRecipe.load(path).qat_configs()
    assert read_checkpoint(files["qat_pt"])["steps"] == sum(c.steps for c in stages), "each QAT stage continues the last"
    x = np.random.default_rng(0).random((32, 48, 3), dtype=np.float32)
    for key in ("fp32_onnx", "ptq_onnx", "qat_onnx"):
        y = OnnxEnhancer(files[key], threads=1).enhance(x)
        assert y.shape == x.shape and np.isfinite(y).all()
