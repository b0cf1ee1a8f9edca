"""The layering of docs/architecture.md, checked on the source: the import graph of edgeopt/ (imports inside
functions counted) has no cycle, each layer imports only what lies below it, and the protocol names no
device scheme. Reads files as text (ast); imports nothing from edgeopt."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgeopt"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the edgeopt modules it imports anywhere in its body (functions included; TYPE_CHECKING not)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip: set[int] = set()
        for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks are for the type checker only
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                skip.update(id(n) for b in node.body for n in ast.walk(b))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                # the longest known module the name refers to (`from edgeopt.x import y` may import module x.y)
                while n and n not in files:
                    n = n.rpartition(".")[0]
                if n and n.startswith("edgeopt") and n != mod:
                    deps.add(n)
        graph[mod] = deps
    return graph


def test_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_import_only_what_lies_below():
    graph = import_graph()
    above_harness = ("edgeopt.orchestrate", "edgeopt.api", "edgeopt.cli")
    for mod, deps in graph.items():
        bad = [d for d in deps if d.startswith(above_harness)]
        if mod.startswith("edgeopt.harness"):
            assert not bad, f"{mod} (harness) imports the layer above it: {bad}"
        if mod.startswith(("edgeopt.models", "edgeopt.passes", "edgeopt.runtimes", "edgeopt.store", "edgeopt.report")):
            assert not [d for d in deps if d.startswith((*above_harness, "edgeopt.harness"))], f"{mod} imports above itself: {deps}"
        if mod.startswith("edgeopt.models"):
            assert not [d for d in deps if d.startswith(("edgeopt.passes", "edgeopt.runtimes"))], f"{mod} imports above models: {deps}"
        if mod.startswith("edgeopt.runtimes"):
            assert not [d for d in deps if d.startswith("edgeopt.passes")], f"{mod} imports passes: {deps}"
        if mod.startswith("edgeopt.data"):  # beside export: models and the foundation only
            above = ("edgeopt.passes", "edgeopt.runtimes", "edgeopt.harness", "edgeopt.store", "edgeopt.report", *above_harness)
            assert not [d for d in deps if d.startswith(above)], f"{mod} (data) imports above itself: {deps}"
        if mod in ("edgeopt.stats", "edgeopt.fidelity", "edgeopt.bundle"):  # foundation
            assert not [d for d in deps if d.startswith(("edgeopt.models", "edgeopt.data", "edgeopt.passes", "edgeopt.export"))], deps


def test_device_side_runner_needs_no_host_layer():
    """The runner and what it imports stay below the host-only layers (it runs on boards with numpy + one runtime)."""
    graph = import_graph()
    seen, todo = set(), ["edgeopt.runner"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    host_only = ("edgeopt.api", "edgeopt.cli", "edgeopt.orchestrate", "edgeopt.store", "edgeopt.passes", "edgeopt.models", "edgeopt.export",
                 "edgeopt.report", "edgeopt.harness.protocol", "edgeopt.harness.devices")
    assert not [m for m in seen if m.startswith(host_only)], sorted(seen)


def test_protocol_names_no_device_scheme():
    src = (PKG / "harness" / "protocol.py").read_text()
    for scheme in ("local", "ssh", "adb", "qemu", "tvm-rpc", "tvm_rpc"):
        code = [ln for ln in src.splitlines() if not ln.lstrip().startswith("#")]
        strings = [n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not any(f'"{scheme}"' in ln or f"'{scheme}'" in ln for ln in code), scheme
        assert scheme not in strings, scheme
    assert "hasattr(" not in src and "scheme" not in src
