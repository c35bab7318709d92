"""Imports follow the data flow: base -> data -> models -> training / eval -> wire / sweep -> cli.

Every ``import interlingua.X`` in the package (lazy ones inside functions included) is an edge between
two parts (``X`` = the first name after ``interlingua``). A part may import only parts of a lower layer;
parts of one layer (training and eval, wire and sweep) do not import each other. The base modules may
import each other, but never in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import interlingua

PACKAGE = Path(interlingua.__file__).parent

LAYERS: dict[str, int] = {
    # base: no dependency on anything that runs a model
    "errors": 0, "constants": 0, "config": 0, "settings": 0, "provenance": 0, "runtime": 0, "codec": 1, "artifacts": 1,
    "data": 2,
    "losses": 3,
    "models": 4,
    "cache": 5,
    "training": 6, "eval": 6,
    "wire": 7, "sweep": 7,
    "cli": 8,
    "__main__": 9, "__init__": 9,
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "interlingua":  # from interlingua import cli
                names += [f"interlingua.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "interlingua" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = part_of(path)
        graph.setdefault(source, set()).update(p for p in imported_parts(path) if p != source)
    return graph


def test_every_part_has_a_layer():
    assert set(edges()) <= set(LAYERS), f"give these parts a layer in LAYERS: {sorted(set(edges()) - set(LAYERS))}"


def test_imports_flow_one_way():
    wrong = sorted(
        f"{source} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]})"
        for source, targets in edges().items() for target in targets
        if LAYERS.get(target, 99) > LAYERS[source] or (LAYERS.get(target) == LAYERS[source] and LAYERS[source] > 1)
    )
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_no_cycle_between_parts():
    graph = edges()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycle = trail[trail.index(target):] + [target] if target in trail else [node, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_checker_sees_lazy_imports_and_reports_a_cycle(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from interlingua.eval.jobs import eval_job\n    import interlingua.wire.service\n")
    assert imported_parts(source) == {"eval", "wire"}
