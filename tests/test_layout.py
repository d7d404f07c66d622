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


# ---------------------------------------------------------------------------------- thresholds
#: Floats a test may type into an ordering comparison (`<`, `<=`, `>`, `>=`) inside an assert, each
#: with the reason. Integers (counts, shapes, indices) and 0.0 / 1.0 (the ends of ranges such as
#: [0, 1]) are always allowed. Any other float there is a threshold: it lives in tests/tolerances.py
#: with the reason for its size, and the test reads it.
TYPED_NUMBERS_ALLOWED: dict[float, str] = {
    1e6: "mega: megabytes and megapixels to bytes and pixels (a unit conversion, not a bound)",
}
#: Names bound to a float literal that such a comparison may use, each with the reason.
TYPED_NAMES_ALLOWED: dict[str, str] = {
    "MAX_MP": "tests/test_app_hostile.py: the downscale limit the test *gives* its server (QATIE_MAX_MP); "
              "comparing with it checks that the app keeps its own setting exactly",
}
#: Calls that compare within a tolerance: the positions of their tolerance arguments (pytest.approx(expected,
#: rel, abs); numpy/torch isclose, allclose and numpy.testing.assert_allclose(a, b, rtol, atol); numpy's
#: assert_(array_)almost_equal(a, b, decimal); math.isclose and torch.testing.assert_close take keywords
#: only); their keyword forms are TOLERANCE_KEYWORDS.
TOLERANCE_CALLS = {"approx": (1, 2), "isclose": (2, 3), "allclose": (2, 3), "assert_allclose": (2, 3),
                   "assert_almost_equal": (2,), "assert_array_almost_equal": (2,), "assert_close": ()}
TOLERANCE_KEYWORDS = {"abs", "rel", "atol", "rtol", "abs_tol", "rel_tol", "decimal"}
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _typed(expr: ast.AST, names: dict[str, int]) -> list[str]:
    """Floats typed into `expr` as a bound: literals (and names bound to literals) reached through
    arithmetic only — a number passed *into* a call or an index is an input, not a bound."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, float):
        return [] if expr.value in (0.0, 1.0) or expr.value in TYPED_NUMBERS_ALLOWED else [repr(expr.value)]
    if isinstance(expr, ast.Name) and expr.id in names and expr.id not in TYPED_NAMES_ALLOWED:
        return [f"{expr.id} (= a literal, line {names[expr.id]})"]
    if isinstance(expr, ast.UnaryOp):
        return _typed(expr.operand, names)
    if isinstance(expr, ast.BinOp):
        return _typed(expr.left, names) + _typed(expr.right, names)
    return []


def _literal_names(tree: ast.AST) -> dict[str, int]:
    """Names assigned a float literal (or arithmetic on literals), anywhere in the file → line."""
    def literal(e):
        if isinstance(e, ast.Constant):
            return isinstance(e.value, (int, float)) and not isinstance(e.value, bool)
        if isinstance(e, ast.UnaryOp):
            return literal(e.operand)
        return isinstance(e, ast.BinOp) and literal(e.left) and literal(e.right)

    out = {}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if value is not None and literal(value) and _typed(value, {}) and len(targets) == 1 and isinstance(targets[0], ast.Name):
            out[targets[0].id] = node.lineno
    return out


def typed_thresholds(source: str) -> list[str]:
    """Every numeric threshold typed into a test: a float literal bounding an ordering comparison
    inside an assert, and a literal tolerance given to approx / isclose / allclose /
    assert_allclose (by keyword or position). Each as 'line: source'."""
    tree = ast.parse(source)
    names = _literal_names(tree)
    hits = []

    def hit(node, what):
        hits.append(f"{node.lineno}: {what} in `{ast.get_source_segment(source, node)}`")

    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            for cmp in ast.walk(node.test):
                if isinstance(cmp, ast.Compare) and any(isinstance(op, ORDERING) for op in cmp.ops):
                    for operand in (cmp.left, *cmp.comparators):
                        for typed in _typed(operand, names):
                            hit(cmp, typed)
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in TOLERANCE_CALLS:
                args = [a for i, a in enumerate(node.args) if i in TOLERANCE_CALLS[fn]]
                args += [k.value for k in node.keywords if k.arg in TOLERANCE_KEYWORDS]
                for arg in args:
                    literal = [n for n in ast.walk(arg) if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
                               and not isinstance(n.value, bool) and n.value != 0]
                    if literal or _typed(arg, names):
                        hit(node, f"tolerance {ast.get_source_segment(source, arg)}")
    return sorted(set(hits), key=lambda h: int(h.split(":")[0]))


def test_every_threshold_is_read_from_the_table():
    """No number that decides pass or fail is typed into a test: each lives in tests/tolerances.py
    with the reason for its size (what is measured, and why that bound)."""
    tests = Path(__file__).resolve().parent
    found = {f.name: typed_thresholds(f.read_text()) for f in sorted(tests.glob("*.py")) if f.name != "tolerances.py"}
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.parametrize("snippet, caught", [
    ("assert d.max() < 0.35 * ref", True),  # any float, not only 1e-N
    ("assert lo - 1e-6 <= x <= hi", True),
    ("assert 20.5 < psnr", True),
    ("assert all(v > 2.5 for v in vals)", True),
    ("TOL = 0.05\ndef test():\n    assert err < TOL", True),  # through a name
    ("assert x == pytest.approx(y, abs=" "1e-3)", True),  # split: not a hit for the lint above
    ("assert x == pytest.approx(y, 1e-3)", True),
    ("np.testing.assert_allclose(a, b, atol=" "1e-5)", True),
    ("np.testing.assert_allclose(a, b, 0, 2)", True),
    ("assert torch.allclose(a, b, rtol=" "1e-4)", True),
    ("assert math.isclose(a, b, rel_tol=1e-9)", True),
    ("np.testing.assert_array_almost_equal(a, b, decimal=5)", True),
    ("torch.testing.assert_close(a, b, atol=" "1e-5, rtol=" "0)", True),
    ("assert 0.0 <= out.min() and out.max() <= 1.0", False),  # the ends of a range
    ("assert len(rows) > 2 and x.shape[0] >= 16", False),  # counts and shapes
    ("assert psnr(a, 0.5) == 31.5", False),  # exact equality; an input to a call
    ("assert size <= MAX_MP * 1e6", False),  # the allowed name and unit
    ('assert d < TOLERANCES["x"]["max_abs"]', False),
    ('assert x == pytest.approx(y, abs=TOLERANCES["x"])', False),
    ("assert x == pytest.approx(0.25)", False),  # the default relative tolerance: an exact check
    ("np.testing.assert_allclose(a, b, atol=" "0)", False),
    ('assert_close(a, b, "fp32_onnx_vs_torch")', False),  # tests/conftest.py's: the key names a table entry
])
def test_the_threshold_lint_itself(snippet, caught):
    assert bool(typed_thresholds(snippet)) is caught, typed_thresholds(snippet)


def early_returns(source: str) -> list[str]:
    """`return` statements in the body of a test function itself (not in a function it defines):
    a test that returns when something is missing passes without checking anything."""
    out = []

    def visit(node, test):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Return):
                out.append(f"{test}:{child.lineno}")
            visit(child, test)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            visit(node, node.name)
    return out


def test_no_test_passes_by_returning_early():
    """A test that cannot check what it is about says so with pytest.skip(reason), never `return`."""
    tests = Path(__file__).resolve().parent
    found = {f.name: early_returns(f.read_text()) for f in sorted(tests.glob("test_*.py"))}
    assert {k: v for k, v in found.items() if v} == {}
    assert early_returns("def test_x():\n    if not ok:\n        return\n    assert f()\n") == ["test_x:3"]
    assert early_returns("def test_x():\n    def helper():\n        return 1\n    assert helper()\n") == []
