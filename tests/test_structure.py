"""Rules of the source tree that no single module's test sees.

- No module of the project imports another that imports it back, imports inside functions included:
  such a cycle works only as long as nobody moves the function-level import to the top of the file.
- Files are moved into place in one module (dnd_sdk.folders): every atomic write goes through it.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> installed package name (setup.py package_dir)
PACKAGES = {"dnd_sdk": "dnd_sdk", "training": "dnd_training", "export": "dnd_export", "engines": "dnd_engines",
            "evaluation": "dnd_eval", "benchmarks": "dnd_bench"}


def modules() -> dict:
    """module name -> (path, is a package __init__)"""
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            is_init = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return found


def imports(name: str, path: Path, is_init: bool, known) -> set:
    """The project modules `name` imports anywhere in its file."""
    package = name if is_init else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:  # `from pkg import module` imports the module
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict):
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(name, path, is_init, known) for name, (path, is_init) in known.items()}
    assert graph["dnd_training.checkpoint"], "the graph must see the project's imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_function_level_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_folders_module_renames_files():
    callers = sorted(str(path.relative_to(ROOT)) for path, _ in modules().values()
                     if "os.replace(" in path.read_text() or ".replace(path)" in path.read_text())
    assert callers == ["dnd_sdk/folders.py"]
