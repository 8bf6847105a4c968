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
