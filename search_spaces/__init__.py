"""Search spaces: a registry of built-in spaces (data: ``SPEC`` dicts) and a user's own JSON file."""

from __future__ import annotations

import copy
from pathlib import Path

from search_spaces import baseline_cnn, resnet_stage1, resnet_stage2, resnet_stage2_blocks
from search_spaces.spec import SpaceError, bounds, load_space_file, to_tune, validate_entry

SPACES = {
    "baseline_cnn": baseline_cnn.SPEC,
    "resnet_stage1": resnet_stage1.SPEC,
    "resnet_stage2": resnet_stage2.SPEC,
    "resnet_stage2_blocks": resnet_stage2_blocks.SPEC,
}

__all__ = ["SPACES", "SpaceError", "bounds", "get_spec", "to_tune", "validate_spec"]


def get_spec(name_or_path: str) -> dict:
    """A built-in space by name, or a JSON space file by path; an unknown name lists the valid ones."""
    if name_or_path in SPACES:
        return copy.deepcopy(SPACES[name_or_path])
    if name_or_path.endswith(".json") or Path(name_or_path).is_file():
        return load_space_file(name_or_path)
    raise SpaceError(
        f"unknown search space {name_or_path!r}; valid spaces: {', '.join(SPACES)} (or the path of a JSON file)"
    )


def validate_spec(spec: dict, field_types: dict[str, str]) -> None:
    """Every key must be a hyperparameter (``field_types``: name -> "int"/"float"/"str"/"bool")."""
    unknown = sorted(set(spec) - set(field_types))
    if unknown:
        raise SpaceError(
            f"unknown hyperparameter(s) {unknown} in the space; valid: {', '.join(sorted(field_types))}"
        )
    for name, value in spec.items():
        validate_entry(name, value, kind=field_types[name])
