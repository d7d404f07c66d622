"""The package's imports point one way, down the pipeline (data → train → ptq | qat → export →
runtime → analysis → report → api | cli): a module may import only modules of its own or an earlier
stage, and nothing imports in a cycle — at module level or inside a function (a lazy import that
exists to dodge a cycle is still a cycle). The app (app/) is held to the same rule, from its
settings up through the handlers and the tabs (app/tabs/) to the page (ui). Read from the source
with `ast`, not by importing."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "qatie"
APP = REPO_ROOT / "app"

#: Pipeline stages, earliest first; each module belongs to exactly one.
STAGES: tuple[tuple[str, ...], ...] = (
    ("errors", "util", "paths", "config", "provenance", "cpu", "pair_safety", "metrics", "padding", "losses", "imageio",
     "degrade"),
    ("data", "model"),
    ("quant",),
    ("checkpoint",),
    ("train", "sidecar", "graph_opt"),
    ("export",),
    ("keep_float",),
    ("ptq", "qat"),
    ("runtime", "bench", "int8_reference"),
    ("evaluate",),
    ("analysis", "tflite_import", "paper_diagnosis"),
    ("paper_report",),
    ("model_card",),
    ("report",),
    ("api", "commands"),
    ("cli",),
)
#: The app's layers, lowest first: settings and pure helpers, the model sets, running them, the
#: handlers each tab calls, the tabs' layouts and events (app/tabs/), and the page that composes them
#: (ui; measure drives it from outside). Only app → app imports count here.
APP_STAGES: tuple[tuple[str, ...], ...] = (
    ("config", "render", "make_examples"),
    ("guard", "modelcard", "about", "train_progress"),
    ("box", "upload_quota", "slots"),
    ("uploads", "model_check"),
    ("models",),
    ("core", "verdict"),
    ("authors", "example_cache", "zoom", "inspect_panel"),
    ("compare",),
    ("first_view", "bench_tab", "train_tab"),
    ("tabs",),
    ("ui", "measure"),
)
RANK = {m: i for i, stage in enumerate(STAGES) for m in stage}
APP_RANK = {m: i for i, stage in enumerate(APP_STAGES) for m in stage}
RANKS = {PACKAGE: RANK, APP: APP_RANK}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module of `root` (qatie/ or app/) that `path` imports, anywhere in the file (dotted,
    relative to the package)."""
    name = module_name(path, root)
    here = name.split(".") if name else []
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == root.name:
                target = node.module.split(".")[1:]
            else:
                continue
            names = [".".join(target + [a.name]) for a in node.names]
            for n in names + [".".join(target)]:
                if n and ((root / (n.replace(".", "/") + ".py")).is_file()
                          or (root / n.replace(".", "/") / "__init__.py").is_file()):
                    out.add(n)
        elif isinstance(node, ast.Import):
            prefix = root.name + "."
            out.update(a.name[len(prefix):] for a in node.names if a.name.startswith(prefix))
    return out - {name}


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root) for p in root.rglob("*.py") if module_name(p, root)}


def stage(module: str, root: Path = PACKAGE) -> int:
    return RANKS[root][module.split(".")[0]]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


ROOTS = pytest.mark.parametrize("root", [PACKAGE, APP], ids=["qatie", "app"])


@ROOTS
def test_every_module_has_a_stage(root):
    top = {module_name(p, root).split(".")[0] for p in root.rglob("*.py") if module_name(p, root)}
    assert top - set(RANKS[root]) == set(), "add new modules to STAGES (qatie/) or APP_STAGES (app/)"


@ROOTS
def test_no_import_cycle(root):
    g = graph(root)
    assert find_cycle(g) is None, " → ".join(find_cycle(g))


@ROOTS
def test_imports_point_down_the_pipeline(root):
    upward = [f"{m} ({stage(m, root)}) imports {n} ({stage(n, root)})" for m, deps in graph(root).items()
              for n in deps if stage(n, root) > stage(m, root)]
    assert upward == []


@pytest.mark.parametrize("g, cyclic", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
])
def test_the_cycle_check_itself(g, cyclic):
    assert (find_cycle(g) is not None) is cyclic


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """A function-level `from ..x import y` inside a subpackage counts like a top-level import."""
    assert "runtime" in imports_of(PACKAGE / "analysis" / "probe.py")  # lazy, two dots
    assert {"analysis.calibration", "analysis.sqnr"} <= imports_of(PACKAGE / "analysis" / "__init__.py")
    assert {"compare", "first_view"} <= imports_of(APP / "tabs" / "compare.py", APP)  # `from .. import`
    assert "tabs.compare" in imports_of(APP / "ui.py", APP) and "train_tab" in imports_of(APP / "measure.py", APP)


#: A tolerance typed into a test instead of read from tests/tolerances.py: a keyword such as
#: `atol=1e-4` / `abs=0.5`, or a comparison with a small literal such as `< 1e-6`.
TOLERANCE_LITERAL = re.compile(r"\b(atol|rtol|abs|rel)\s*=\s*[-+]?(\d|\.\d)|[<>]=?\s*[0-9.]+e-[0-9]+")


def tolerance_literals(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if TOLERANCE_LITERAL.search(line.split("#")[0])]


def test_every_tolerance_is_read_from_the_table():
    """kornia-style: each tolerance lives once in tests/tolerances.py, with why it is that size."""
    tests = Path(__file__).resolve().parent
    found = {f.name: tolerance_literals(f.read_text()) for f in sorted(tests.glob("*.py")) if f.name != "tolerances.py"}
    assert {k: v for k, v in found.items() if v} == {}
    typed = ["assert np.allclose(a, b, atol=" + "1e-5)", "assert d.max() < " + "1e-4"]  # split: not a hit here
    assert all(tolerance_literals(line) for line in typed)
    assert not tolerance_literals('assert np.allclose(a, b, atol=TOLERANCES["x"])')
