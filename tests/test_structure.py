"""The package reads bottom-up: no import cycle among distill/ modules (imports inside functions included),
and the README's "where things live" table names files that exist."""

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "distill"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], name: str | None = None) -> set[str]:
    """distill modules that ``path`` (module ``name``) imports anywhere in its body (top level, functions)."""
    found = set()
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_are_edges(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from distill.phases import plan\n    import distill.blocks\n")
    modules = {"distill.phases.plan", "distill.phases", "distill.blocks"}
    assert imported_modules(tmp_path / "m.py", modules, "distill.m") == {"distill.phases", "distill.phases.plan", "distill.blocks"}


def test_distill_has_no_import_cycle():
    graph = import_graph()
    assert {"distill.blocks", "distill.phases.fit", "distill.stages.distill", "distill.train"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_layers_read_bottom_up():
    """Building blocks never import phases, stages or the entry point; phases never import stages."""
    graph = import_graph()
    upper = {"distill.train"} | {m for m in graph if m.startswith(("distill.stages", "distill.phases"))}
    assert not graph["distill.blocks"] & upper
    for module, deps in graph.items():
        if module.startswith("distill.phases"):
            assert not {d for d in deps if d.startswith("distill.stages") or d == "distill.train"}, module


def test_where_things_live_table_names_existing_files():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`((?:distill|conf|scripts|tests|docs)/[^`*<>]+?)`", section)
    assert len(paths) >= 8, section
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, missing
