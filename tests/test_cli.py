"""The command line through subprocesses (help, degrade, train, enhance, eval), its error
handling, and the project files: README ↔ .ci/run test command, requirements, pyproject."""
import json
import re
import tomllib

import numpy as np
import pytest

from conftest import REPO_ROOT, assert_exact_on_every_cpu, make_image, run_cli
from tolerances import TOLERANCES
from qatie.cli.main import main
from qatie.data.datasets import eval_pairs
from qatie.imageio import read_image, write_image
from qatie.metrics import psnr

SUBCOMMANDS = ("train", "degrade", "enhance", "eval")


def test_help_for_every_subcommand():
    top = run_cli("--help")
    for name in SUBCOMMANDS:
        assert name in top.stdout
        sub = run_cli(name, "--help")
        assert sub.stdout.startswith(f"usage: qatie {name}") and len(sub.stdout) > 200


def test_degrade_writes_same_stems_matching_eval(tmp_path, clean_dir):
    write_image(clean_dir / "deeper" / "d.jpg", make_image(20, 18, seed=9))
    out = tmp_path / "deg"
    run_cli("degrade", "--seed", "5", clean_dir, out)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["astronaut.png", "chelsea.png", "coffee.png", "deeper/d.png"]
    pairs = {n: (i, t) for n, i, t in eval_pairs(clean_dir=clean_dir, seed=5)}
    for name, (inp, tgt) in pairs.items():
        stem = name.rsplit(".", 1)[0]
        got = read_image(out / f"{stem}.png")
        assert np.array_equal(got, inp), name  # exactly what eval scores for this seed
        assert not np.array_equal(got, tgt)
    other = tmp_path / "deg6"
    run_cli("degrade", "--seed", "6", "--config", '{"p_jpeg": 0, "exposure_stops": [-0.5, 0.5]}', clean_dir, other)
    assert not np.array_equal(read_image(other / "coffee.png"), read_image(out / "coffee.png"))


def test_degrade_config_errors(tmp_path, clean_dir, capsys):
    assert main(["degrade", "--seed", "0", "--config", '{"nope": 1}', str(clean_dir), str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["degrade", "--seed", "0", "--config", str(tmp_path / "missing.json"), str(clean_dir),
                 str(tmp_path / "o")]) == 2
    assert main(["degrade", "--seed", "0", str(tmp_path / "absent"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "absent" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`qatie train` for 5 steps on the built-in samples (width 8) — shared by the tests below."""
    out = tmp_path_factory.mktemp("train") / "run"
    proc = run_cli("train", "--data", "samples", "--width", "8", "--steps", "5", "--batch-size", "2",
                   "--patch", "32", "--threads", "1", "--out", out)
    assert "trained 5 steps" in proc.stdout
    return out


def test_train_outputs(trained):
    for name in ("last.pt", "best.pt", "train_log.jsonl", "config.json", "summary.json"):
        assert (trained / name).is_file(), name
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5]
    assert json.loads((trained / "config.json").read_text())["width"] == 8


def test_enhance_with_checkpoint(tmp_path, trained):
    src = tmp_path / "photo.jpg"
    write_image(src, make_image(37, 29, seed=3))
    for out in (tmp_path / "o.png", tmp_path / "o.jpg"):
        run_cli("enhance", "--model", trained / "last.pt", "--threads", "1", src, out)
        img = read_image(out)
        assert img.shape == (37, 29, 3)


@pytest.mark.slow
def test_ptq_qat_and_export_write_models_exact_on_every_cpu(tmp_path, trained):
    """What `qatie ptq`, `qatie qat` and `qatie export` write is pair-safe, and each says so."""
    ptq = tmp_path / "ptq.onnx"
    out = run_cli("ptq", "--checkpoint", trained / "best.pt", "--num-calib", "2", "--out", ptq).stdout
    assert "ptq.onnx: exact on every CPU" in out
    assert_exact_on_every_cpu(ptq)
    qat = tmp_path / "qat.pt"
    out = run_cli("qat", "--checkpoint", trained / "best.pt", "--steps", "2", "--batch-size", "2", "--patch", "32",
                  "--num-calib", "2", "--threads", "1", "--out", qat).stdout
    assert "its INT8 export: exact on every CPU" in out
    out = run_cli("export", "--checkpoint", qat, "--out", tmp_path / "qat.onnx").stdout
    assert "qat.onnx: exact on every CPU" in out
    assert_exact_on_every_cpu(tmp_path / "qat.onnx")


def test_eval_clean_dir_json(tmp_path, trained, clean_dir):
    js = tmp_path / "res" / "eval.json"
    model = str(trained / "last.pt")
    proc = run_cli("eval", "--models", f"{model},{trained / 'best.pt'}", "--clean-dir", clean_dir,
                   "--seed", "2", "--limit", "2", "--json", js, "--threads", "1")
    assert "input" in proc.stdout and "PSNR" in proc.stdout
    res = json.loads(js.read_text())
    assert res["count"] == 2 and res["models"] == [model, str(trained / "best.pt")]
    summary = res["summary"]
    assert set(summary) == {"input", model, str(trained / "best.pt")}
    assert {"psnr", "ssim"} <= set(summary["input"]) and {"psnr", "ssim"} <= set(summary[model])
    assert f"agreement_with_{model}" in summary[str(trained / "best.pt")]
    assert [r["name"] for r in res["images"]] == ["astronaut.png", "chelsea.png"]
    expected = np.mean([psnr(i, t) for _, i, t in eval_pairs(clean_dir=clean_dir, seed=2, limit=2)])
    assert summary["input"]["psnr"] == pytest.approx(expected, abs=TOLERANCES["same_metric_two_ways"]["psnr_db"])
    assert res["data"]["seed"] == 2


def test_eval_pairs_dirs(tmp_path, trained, clean_dir):
    deg = tmp_path / "deg"
    run_cli("degrade", "--seed", "2", clean_dir, deg)
    js = tmp_path / "pairs.json"
    run_cli("eval", "--models", trained / "last.pt", "--input-dir", deg, "--target-dir", clean_dir, "--json", js)
    res = json.loads(js.read_text())
    assert res["count"] == 3
    # The degraded files score exactly like eval's own on-the-fly degradation at that seed.
    pairs = eval_pairs(clean_dir=clean_dir, seed=2)
    assert res["summary"]["input"]["psnr"] == pytest.approx(np.mean([psnr(i, t) for _, i, t in pairs]),
                                                            abs=TOLERANCES["same_metric_two_ways"]["psnr_db"])


def test_errors_exit_2_with_one_clear_line(tmp_path, trained, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    cases = [
        (["enhance", "--model", str(trained / "last.pt"), str(bad), str(tmp_path / "o.png")], "bad.png"),
        (["enhance", "--model", str(trained / "last.pt"), str(tmp_path / "nope.jpg"), str(tmp_path / "o.png")], "nope.jpg"),
        (["enhance", "--model", str(tmp_path / "none.pt"), str(bad), str(tmp_path / "o.png")], "bad.png"),
        (["enhance", "--model", "nonexistent_model", str(trained / "train_log.jsonl"), str(tmp_path / "o.png")], "train_log"),
        (["enhance", "--model", str(trained / "last.pt"), str(bad), str(tmp_path / "o.gif")], "o.gif"),
        (["eval", "--models", str(trained / "last.pt")], "--clean-dir"),
        (["eval", "--models", str(trained / "last.pt"), "--clean-dir", str(tmp_path / "missing")], "missing"),
        (["train", "--data", "nope:x", "--steps", "1", "--out", str(tmp_path / "t")], "nope:x"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("qatie: error:") and needle in err and "\n" not in err, (argv, err)
    good = tmp_path / "good.png"
    write_image(good, make_image(8, 8))
    for model, needle in ((str(tmp_path / "none.pt"), "none.pt"), ("nonexistent_model", "fp32")):
        assert main(["enhance", "--model", model, str(good), str(tmp_path / "o.png")]) == 2
        assert needle in capsys.readouterr().err


def test_error_exit_code_through_subprocess(tmp_path):
    proc = run_cli("enhance", "--model", "x.pt", tmp_path / "missing.png", tmp_path / "o.png", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"qatie: error: {tmp_path / 'missing.png'}: no such file"]


# ---------------------------------------------------------------------------- project files


def _readme_test_command() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    m = re.search(r"<!-- test-command[^>]*-->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
    assert m, "README.md must mark its test command with <!-- test-command --> before a code block"
    return m.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    m = re.search(r"^TEST_COMMAND='([^']+)'$", ci, re.M)
    assert m, ".ci/run must define TEST_COMMAND='...'"
    assert m.group(1) == _readme_test_command()
    assert 'eval "$TEST_COMMAND"' in ci and "set -euo pipefail" in ci
    assert "pytest" in m.group(1) and "pip install -r requirements-test.txt" in m.group(1)


def _pinned(name: str) -> list[str]:
    lines = [ln.strip() for ln in (REPO_ROOT / name).read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _names(reqs: list[str]) -> set[str]:
    return {r.split("==")[0].lower().replace("_", "-") for r in reqs}


def test_requirements_are_exact_pins():
    """requirements.txt: what the app needs at run time (what a Space installs), no test tools;
    requirements-test.txt: requirements.txt plus the test tools. Every version is an exact pin."""
    reqs = _pinned("requirements.txt")
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", r) for r in reqs), reqs
    names = _names(reqs)
    assert "torch==2.13.0" in reqs
    for needed in ("numpy", "pillow", "scikit-image", "scipy", "onnxruntime", "onnx", "gradio", "tqdm"):
        assert needed in names, needed
    test_tools = ("pytest", "pytest-xdist", "execnet", "playwright")
    assert not names & set(test_tools), names & set(test_tools)

    test_reqs = _pinned("requirements-test.txt")
    assert test_reqs[0] == "-r requirements.txt", test_reqs[:1]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", r) for r in test_reqs[1:]), test_reqs
    assert set(test_tools) <= _names(test_reqs[1:])


def test_pyproject_console_script_and_package_data():
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["qatie"] == "qatie.cli.main:main"
    assert "clean_split.json" in meta["tool"]["setuptools"]["package-data"]["qatie.data"]
    assert meta["project"]["optional-dependencies"]["tflite"] == ["ai-edge-litert>=2.3", "flatbuffers>=24"]
    assert (REPO_ROOT / "qatie" / "data" / "clean_split.json").is_file()
