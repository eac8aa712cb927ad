"""Imports point one way (docs/ARCHITECTURE.md): read from the source, every import of every project file, also
those inside functions.

- no import cycle among the project's files;
- ``tuning/`` in layers: a file imports only files of its own layer or below, and no command is imported by
  anything but tests; every file of ``tuning/`` has a layer here (a new file must be placed);
- ``modules/`` never imports Ray, ``tuning`` or ``search_spaces``; ``search_spaces`` imports only Ray Tune and
  itself; ``tuning``'s configuration and engine layers run without Ray;
- no file takes a private (leading underscore) name from another project file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("modules", "search_spaces", "tuning")
LAYERS = {  # tuning's files, bottom (0) to top (5)
    # plumbing: console output and exit codes, flags from dataclasses, library versions
    "tuning.cli": 0,
    "tuning.flags": 0,
    "tuning.provenance": 0,
    # configuration
    "tuning.config": 1,
    "tuning.data_options": 1,
    "tuning.settings": 1,
    "tuning.settings_io": 1,
    # the training engine (Lightning, no Ray) and the backbone a search shares
    "tuning.engine": 2,
    "tuning.backbone": 2,
    # the Ray runtime
    "tuning.ray_runtime": 3,
    "tuning.trainable": 3,
    "tuning.progress": 3,
    "tuning.asha": 3,
    "tuning.search_alg": 3,
    "tuning.tracking": 3,
    "tuning.tuner": 3,
    # orchestration
    "tuning.plots": 4,
    "tuning.formatting": 4,
    "tuning.html_report": 4,
    "tuning.training": 4,
    "tuning.search_report": 4,
    "tuning.refit": 4,
    "tuning.split_search": 4,
    "tuning.cv_text": 4,
    "tuning.cv_report": 4,
    "tuning.repeats_report": 4,
    "tuning.cv": 4,
    "tuning.pipeline": 4,
    "tuning.copies": 4,
    "tuning.evaluation": 4,
    "tuning.prediction": 4,
    "tuning.model_export": 4,
    # commands: a parser and main() each
    "tuning.data": 5,
    "tuning.train": 5,
    "tuning.search": 5,
    "tuning.evaluate": 5,
    "tuning.predict": 5,
    "tuning.export": 5,
}
COMMANDS = {name for name, layer in LAYERS.items() if layer == 5}
RAY_FREE_BELOW = 3  # tuning's layers under the Ray runtime never import ray


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files(*folders: str) -> dict[str, Path]:
    return {module_name(p): p for folder in folders for p in sorted((REPO / folder).glob("*.py"))}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) of every import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def project_targets(module: str, names: list[str], known: set[str]) -> set[str]:
    """The project files an import reaches: ``from tuning import engine`` reaches ``tuning.engine``."""
    targets = {module} if module in known else set()
    targets |= {f"{module}.{n}" for n in names if f"{module}.{n}" in known}
    return targets


def graph(files: dict[str, Path]) -> dict[str, set[str]]:
    known = set(files)
    return {
        name: {t for _, m, names in imports(path) for t in project_targets(m, names, known)} - {name}
        for name, path in files.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of files, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


SOURCES = project_files(*PACKAGES)
EDGES = graph(SOURCES)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    cycle = find_cycle(EDGES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_tuning_file_has_a_layer():
    tuning = {name for name in SOURCES if name.startswith("tuning.")}
    assert tuning == set(LAYERS), (
        f"unplaced: {sorted(tuning - set(LAYERS))}, gone: {sorted(set(LAYERS) - tuning)}"
    )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_tuning_imports_point_down(name):
    upward = sorted(t for t in EDGES[name] if t in LAYERS and LAYERS[t] > LAYERS[name])
    assert not upward, f"{name} (layer {LAYERS[name]}) imports {upward} from above it"
    commands = sorted(EDGES[name] & COMMANDS)
    assert not commands, f"{name} imports the command(s) {commands}; move what it needs below them"


def test_no_production_file_imports_a_command():
    files = project_files(*PACKAGES, "benchmarks")
    bad = {name: sorted(targets & COMMANDS) for name, targets in graph(files).items() if targets & COMMANDS}
    assert not bad, f"commands are entry points, imported by nothing: {bad}"


def third_party(name: str) -> set[str]:
    return {m.split(".")[0] for _, m, _ in imports(SOURCES[name]) if m.split(".")[0] not in PACKAGES}


@pytest.mark.parametrize("name", sorted(n for n in SOURCES if n.startswith("modules.")))
def test_modules_never_import_ray_or_the_tuning_layer(name):
    bad = {m.split(".")[0] for _, m, _ in imports(SOURCES[name])} & {"ray", "tuning", "search_spaces"}
    assert not bad, f"{name} imports {sorted(bad)}; modules/ is PyTorch and Lightning only"


@pytest.mark.parametrize("name", sorted(n for n in SOURCES if n.startswith("search_spaces")))
def test_search_spaces_import_only_ray_tune(name):
    bad = sorted(
        m
        for _, m, _ in imports(SOURCES[name])
        if m.split(".")[0] in ("modules", "tuning")
        or (m.startswith("ray") and m != "ray.tune" and m != "ray")
    )
    assert not bad, f"{name} imports {bad}; a search space is data and ray.tune samplers"


@pytest.mark.parametrize("name", sorted(n for n, layer in LAYERS.items() if layer < RAY_FREE_BELOW))
def test_configuration_and_engine_run_without_ray(name):
    assert "ray" not in third_party(name), f"{name} imports ray; it sits below the Ray runtime"


def private_uses(path: Path, known: set[str]) -> list[str]:
    """``from x import _y`` and ``x._y`` where ``x`` is another project file (dunder names are public)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: dict[str, str] = {}  # local name -> project module it stands for
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    bound[alias.asname or alias.name] = full
                elif alias.name.startswith("_"):
                    bad.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            bad.append(f"{node.lineno}: {bound[node.value.id]}.{node.attr}")
    return bad


ALL_FILES = project_files(*PACKAGES, "benchmarks", "tests")


@pytest.mark.parametrize("name", sorted(ALL_FILES))
def test_no_private_name_is_taken_from_another_file(name):
    bad = private_uses(ALL_FILES[name], set(ALL_FILES))
    assert not bad, f"{name} takes private names {bad}; make them public where they are needed"


def test_the_private_name_check_sees_both_spellings(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "from modules.ingest import _hidden, load_image_set\n"
        "from modules import decode\n"
        "import modules.sources as sources\n"
        "decode._internal(1)\nsources.__name__\nload_image_set._x\n"
    )
    known = {"modules.ingest", "modules.decode", "modules.sources"}
    assert private_uses(source, known) == [
        "1: from modules.ingest import _hidden",
        "4: modules.decode._internal",
    ]
