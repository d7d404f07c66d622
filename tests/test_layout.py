"""The package's imports point one way, down the pipeline: a module may import only modules of
its own or an earlier stage, and nothing imports in a cycle — at module level or inside a function
(a lazy import that exists to dodge a cycle is still a cycle). qatie/ is one subpackage per stage,
in pipeline order: data → model (the network, its quantization spec, checkpoints) → train → export
(ONNX writer, sidecar, graph passes) → quantize (PTQ calibration, QAT fine-tuning, keep-float; they
write their INT8 models through export) → runtime (ONNX Runtime, the CPU's integer kernel path, the
exact integer reference, the benchmark) → paper (the authors' files) → analysis → report → the
front doors (api, cli). The app (app/) is held to the same rule: settings, rendering, the request
boundary (app/boundary/), the model sets, one package per tab (layout and handlers side by side),
the page (ui). Read from the source with `ast`, not by importing."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "qatie"
APP = REPO_ROOT / "app"

#: Pipeline stages, earliest first; each top-level module or subpackage belongs to exactly one.
STAGES: tuple[tuple[str, ...], ...] = (
    ("errors", "util", "paths", "provenance", "config", "metrics", "padding", "imageio"),
    ("data",),
    ("model",),
    ("train",),
    ("export",),
    ("quantize",),
    ("runtime",),
    ("paper",),
    ("analysis",),
    ("report",),
    ("api",),
    ("cli",),
)
#: The app's layers, lowest first: settings and rendering, the request boundary (box, uploads,
#: model checks, slots, deadlines), the model sets, the tabs (each a package: layout + handlers),
#: the page that composes them (ui), and what drives it from outside (server, measure).
APP_STAGES: tuple[tuple[str, ...], ...] = (
    ("config", "outputs"),
    ("render",),
    ("boundary",),
    ("models",),
    ("about",),
    ("inspect",),
    ("compare",),
    ("train", "benchmark"),
    ("ui",),
    ("server", "measure"),
)
#: At most this many modules at the top of each package; the rest live in stage / tab packages.
TOP_LEVEL_MAX = {"qatie": 12, "app": 8}
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
    """A function-level import counts like a top-level one, and relative forms resolve."""
    assert "runtime.enhancer" in imports_of(PACKAGE / "analysis" / "probe.py")  # lazy, inside a function
    assert {"analysis.calibration", "analysis.sqnr"} <= imports_of(PACKAGE / "analysis" / "__init__.py")
    assert {"compare.handlers", "compare.first_view"} <= imports_of(APP / "compare" / "layout.py", APP)
    assert "compare.layout" in imports_of(APP / "ui.py", APP)
    pkg = tmp_path / "qatie"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (pkg / f).write_text("")
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import x\n    from . import b\n")
    assert {"a", "sub.b"} <= imports_of(pkg / "sub" / "c.py", pkg)


#: The longest a function in qatie/ or app/ may be, in lines (its def to its last line): a longer
#: one does several things that want names of their own.
FUNCTION_LINES_MAX = 100
#: Functions allowed to be longer, each with the reason (none today).
LONG_FUNCTIONS: dict[str, str] = {}


def long_functions(root: Path) -> dict[str, int]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES_MAX:
                    out[f"{p.relative_to(root.parent)}::{node.name}"] = lines
    return out


@ROOTS
def test_no_function_is_too_long(root):
    assert set(long_functions(root)) - set(LONG_FUNCTIONS) == set(), long_functions(root)


def test_the_length_check_itself(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def short():\n    pass\n\n\ndef long():\n" + "    x = 1\n" * FUNCTION_LINES_MAX)
    assert long_functions(pkg) == {"pkg/m.py::long": FUNCTION_LINES_MAX + 1}


@ROOTS
def test_few_modules_at_the_top(root):
    """The stages and tabs are packages: only shared basics (and the front doors) sit at the top."""
    top = [p.stem for p in root.glob("*.py") if p.stem != "__init__"]
    assert len(top) <= TOP_LEVEL_MAX[root.name], sorted(top)


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
