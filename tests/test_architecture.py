"""The package's floors (docs/architecture.md): no module imports one above it, no import circles.

Every ``import`` statement in a module counts, including those inside functions and under
``TYPE_CHECKING``: a lazy import is still an arrow in the design, and a circle hidden behind one
is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "posttrain"

# Lowest floor first. A module may import from its own floor or any floor below it.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "records", "items", "config", "run_context"),  # ground: values, files, settings
    ("tracking",),  # W&B runs and the budget ledger: services every floor above may use
    ("benchmarks", "models"),  # what is evaluated, and what evaluates it
    ("generation",),  # prompts, backends, the format probe
    ("scorers",),  # deterministic checks, triage, diagnostics
    ("judges",),  # LLM-as-judge, spot check, calibration
    # Two rooms on one floor that never talk: the gate's verdict reaches training through a
    # record read by records.read_gate_verdict on the ground floor, not through analysis.
    ("analysis", "training"),  # statistics, the gate, comparisons, reports | data, negatives, SFT, DPO
    ("stages",),  # eval / sft / dpo / dpo_only
    ("job", "callbacks", "cli", "dashboard", "__main__"),  # orchestration and entrypoints
)
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The posttrain modules that ``path`` imports anywhere (resolved to modules that exist)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports a module; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            if t.startswith("posttrain") and t in known and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOOR.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_floor() -> None:
    homeless = [m for m in _modules() if m != "posttrain" and _floor(m) is None]
    assert not homeless, f"add these to FLOORS (and docs/architecture.md): {homeless}"


def _forbidden(mod: str, dep: str) -> bool:
    """Up a floor, or sideways from one subpackage into another on the same floor.

    Plain modules on one floor (records/items, job/callbacks/cli) may share; two subpackages on one
    floor are separate rooms (analysis and training; benchmarks and models).
    """
    here, there = _floor(mod), _floor(dep)
    if here is None or there is None:
        return False
    a, b = mod.split(".")[1], dep.split(".")[1]
    sideways = there == here and a != b and (PACKAGE / a).is_dir() and (PACKAGE / b).is_dir()
    return there > here or sideways


def test_no_module_imports_one_above_it() -> None:
    bad = [f"{mod} (floor {_floor(mod)}) -> {dep} (floor {_floor(dep)})"
           for mod, deps in _graph().items() for dep in deps if _forbidden(mod, dep)]
    assert not bad, "imports that run back up the flow (or across a floor):\n" + "\n".join(sorted(bad))


def test_no_import_circles() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is the package's face, not a circle:
    # only count an edge into a package's __init__ from outside that package.
    edges = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}
    seen: dict[str, int] = {}  # 0 = on the stack, 1 = done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 0
        stack.append(node)
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 0:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt, stack)
        stack.pop()
        seen[node] = 1

    for node in sorted(edges):
        if node not in seen:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(("mod", "dep", "forbidden"), [
    ("posttrain.training.common", "posttrain.analysis.comparison", True),  # the old back-arrow
    ("posttrain.judges.runner", "posttrain.analysis.stats", True),  # up a floor
    ("posttrain.stages.train", "posttrain.training.sft", False),  # down a floor
    ("posttrain.records", "posttrain.items", False),  # the ground floor shares freely
])
def test_the_floor_rule_can_fail(mod: str, dep: str, forbidden: bool) -> None:
    """The checker itself refuses the arrows the design forbids."""
    assert _forbidden(mod, dep) is forbidden
