"""Imports point one way: ``modules/`` never reaches Ray, ``tuning`` or ``search_spaces``, and none of its files
takes a private (leading underscore) name from another."""

import ast

import pytest

from tests.helpers import REPO

MODULES = sorted((REPO / "modules").glob("*.py"))
FORBIDDEN = ("ray", "tuning", "search_spaces")


def _imports(path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in a file, also those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_never_import_ray_tuning_or_search_spaces(path):
    bad = [f"{line}: {m}" for line, m, _ in _imports(path) if m.split(".")[0] in FORBIDDEN]
    assert not bad, f"{path.name} imports {bad}; modules/ must stay free of Ray and of the tuning layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_take_no_private_name_from_another_file(path):
    bad = [
        f"{line}: {m}.{n}"
        for line, m, names in _imports(path)
        for n in names
        if m.split(".")[0] == "modules" and n.startswith("_")
    ]
    assert not bad, f"{path.name} imports private names {bad}; make them public where they are needed"
