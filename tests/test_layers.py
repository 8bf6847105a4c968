"""The layer rules of DESIGN.md, checked on the source: storage <- factory <- trainer <- flows,
no Prefect outside flows/, no torch outside trainer/ and the local-model teacher."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["storage", "factory", "trainer", "flows"]
TORCH_OK = ("trainer/", "factory/teachers/local")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


SOURCES = [p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_imports_follow_the_layers(path):
    rel = path.relative_to(ROOT).as_posix()
    layer = rel.split("/")[0]
    found = imports_of(path)
    upward = set(LAYERS[LAYERS.index(layer) + 1 :]) & found
    assert not upward, f"{rel} imports a higher layer: {sorted(upward)}"
    if layer != "flows":
        assert "prefect" not in found, f"{rel} imports prefect outside flows/"
    if not rel.startswith(TORCH_OK):
        assert "torch" not in found, f"{rel} imports torch outside trainer/ and the local teacher"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_no_print_in_library_code(path):
    tree = ast.parse(path.read_text())
    calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert not calls, f"{path.relative_to(ROOT)} calls print() at line(s) {calls}: use logging, or the CLI's console"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (a lazy import inside a function still
    ties the two modules together), relative imports resolved, `a.b import c` read as `a.b.c`
    when that is a module. Imports under `if TYPE_CHECKING:` do not run, so they do not count."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for part in node.body for n in ast.walk(part)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name in known and name != here}


def import_cycles() -> list[list[str]]:
    """Every cycle of the project's import graph (Tarjan's strongly connected components)."""
    modules = {_module_of(p): p for p in SOURCES}
    graph = {m: project_imports(p, set(modules)) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                component.append(n)
                if n == m:
                    break
            # A package's __init__ importing its own submodules is how packages re-export.
            component = [c for c in component if not any(o != c and o.startswith(c + ".") for o in component)]
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "modules that import each other (directly or round a loop):\n" + "\n".join(" <-> ".join(c) for c in cycles)
