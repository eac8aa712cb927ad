"""Search spaces as data: a dict of hyperparameter -> constant or sampler spec, validated, then made Tune samplers.

A sampler spec is a one-key dict: ``{"loguniform": [low, high]}``, ``{"uniform": [low, high]}``,
``{"randint": [low, high]}`` (high exclusive) or ``{"choice": [v1, v2, ...]}``. Anything else is a constant.
A user's own space is a JSON file of the same shape (data, never code), e.g.::

    {"model": "resnet50", "lr": {"loguniform": [1e-4, 3e-3]}, "unfreeze_depth": {"choice": [1, 2]}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from ray import tune

SAMPLERS = ("loguniform", "uniform", "randint", "choice")


class SpaceError(ValueError):
    """A search space is invalid; the message names the entry, what was found and what was expected."""


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def validate_entry(name: str, value, *, kind: str | None = None) -> None:
    """Check one entry; ``kind`` is the hyperparameter's declared type ("int", "float", "str", "bool")."""
    if not (isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in SAMPLERS):
        if isinstance(value, Mapping):
            raise SpaceError(
                f"{name}: unknown sampler {sorted(value)}; expected one of {', '.join(SAMPLERS)}"
            )
        _check_type(name, value, kind)
        return
    sampler, args = next(iter(value.items()))
    if sampler == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{name}: choice needs a non-empty list of values, got {args!r}")
        for v in args:
            _check_type(name, v, kind)
        return
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
        raise SpaceError(f"{name}: {sampler} needs [low, high] as two finite numbers, got {args!r}")
    low, high = args
    if low >= high:
        raise SpaceError(f"{name}: {sampler} needs low < high, got low={low}, high={high}")
    if sampler == "loguniform" and low <= 0:
        raise SpaceError(f"{name}: loguniform needs bounds > 0, got low={low}")
    if sampler == "randint" and not all(isinstance(a, int) for a in args):
        raise SpaceError(f"{name}: randint needs integer bounds, got {args!r}")
    if kind == "int" and sampler != "randint":
        raise SpaceError(f"{name} is an integer; use randint or choice, not {sampler}")
    if kind in ("str", "bool"):
        raise SpaceError(f"{name} is a {kind}; use a constant or choice, not {sampler}")


def _check_type(name: str, v, kind: str | None) -> None:
    ok = {
        None: True,
        "int": isinstance(v, int) and not isinstance(v, bool),
        "float": _is_number(v),
        "str": isinstance(v, str),
        "bool": isinstance(v, bool),
    }[kind]
    if not ok:
        raise SpaceError(f"{name}: expected a value of type {kind}, got {v!r}")


def to_tune(spec: Mapping) -> dict:
    """Turn a validated spec into Ray Tune's param_space (samplers and constants)."""
    out = {}
    for name, value in spec.items():
        if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in SAMPLERS:
            sampler, args = next(iter(value.items()))
            out[name] = {
                "loguniform": lambda a: tune.loguniform(*a),
                "uniform": lambda a: tune.uniform(*a),
                "randint": lambda a: tune.randint(*a),
                "choice": tune.choice,
            }[sampler](args)
        else:
            out[name] = value
    return out


def bounds(value) -> tuple[float, float] | None:
    """(min, max) a numeric entry can take (randint's high is exclusive), or None for non-numeric ones."""
    if _is_number(value):
        return (value, value)
    if isinstance(value, Mapping) and len(value) == 1:
        sampler, args = next(iter(value.items()))
        if sampler == "choice" and all(_is_number(a) for a in args):
            return (min(args), max(args))
        if sampler == "randint":
            return (args[0], args[1] - 1)
        if sampler in ("uniform", "loguniform"):
            return (args[0], args[1])
    return None


def load_space_file(path: str | Path) -> dict:
    """Read a JSON space file; a syntax error or a non-object gets a message with the file and the position."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(f"cannot read space file {p}: {exc.strerror or exc}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpaceError(
            f"space file {p}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(spec, dict) or not spec:
        raise SpaceError(f"space file {p}: expected a JSON object of hyperparameter -> value or sampler")
    return spec
