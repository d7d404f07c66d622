"""The package's imports point one way, down the pipeline (data → train → ptq | qat → export →
runtime → analysis → report → api | cli): a module may import only modules of its own or an earlier
stage, and nothing imports in a cycle — at module level or inside a function (a lazy import that
exists to dodge a cycle is still a cycle). Read from the source with `ast`, not by importing."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "qatie"

#: Pipeline stages, earliest first; each module belongs to exactly one.
STAGES: tuple[tuple[str, ...], ...] = (
    ("errors", "util", "paths", "config", "provenance", "cpu", "metrics", "padding", "losses", "imageio", "degrade"),
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
RANK = {m: i for i, stage in enumerate(STAGES) for m in stage}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every qatie module `path` imports, anywhere in the file (dotted, relative to the package)."""
    here = module_name(path).split(".") if module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "qatie":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [".".join(target + [a.name]) for a in node.names]
            for n in names + [".".join(target)]:
                if n and ((PACKAGE / (n.replace(".", "/") + ".py")).is_file()
                          or (PACKAGE / n.replace(".", "/") / "__init__.py").is_file()):
                    out.add(n)
        elif isinstance(node, ast.Import):
            out.update(a.name[len("qatie."):] for a in node.names if a.name.startswith("qatie."))
    return out - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py") if module_name(p)}


def stage(module: str) -> int:
    return RANK[module.split(".")[0]]


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


def test_every_module_has_a_stage():
    top = {module_name(p).split(".")[0] for p in PACKAGE.rglob("*.py") if module_name(p)}
    assert top - set(RANK) == set(), "add new modules to STAGES"


def test_no_import_cycle():
    assert find_cycle(graph()) is None, " → ".join(find_cycle(graph()))


def test_imports_point_down_the_pipeline():
    upward = [f"{m} ({stage(m)}) imports {n} ({stage(n)})" for m, deps in graph().items() for n in deps
              if stage(n) > stage(m)]
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
