"""Command-line flags generated from a dataclass: one flag per field, its help from the field's metadata.

``tuning.train`` and ``tuning.search`` build their parsers this way, so a hyperparameter or a setting is declared
once (name, type, default, help) and every command that takes it spells it the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields


def option(help: str, *, group: str, default_text: str | None = None, **argparse_kwargs) -> dict:
    """The metadata of a field that becomes a flag. ``help`` says what it is and its unit; the flag's help
    ends with ``(default: ...)``, the field's default or ``default_text``. ``argparse_kwargs``: ``choices``,
    ``metavar`` or ``flag`` (the flag's name when it is not ``--field-name``)."""
    return {"help": help, "group": group, "default_text": default_text, **argparse_kwargs}


def field_default(f: Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default")


def flag_fields(cls, *, only: list[str] | None = None) -> list[Field]:
    """The fields of ``cls`` that have flags (``only``: these, in this order)."""
    with_flags = {f.name: f for f in fields(cls) if "help" in f.metadata}
    if only is None:
        return list(with_flags.values())
    missing = [name for name in only if name not in with_flags]
    if missing:
        raise TypeError(f"{cls.__name__} has no flag for {missing}")
    return [with_flags[name] for name in only]


def add_flags(
    parser: argparse.ArgumentParser,
    cls,
    *,
    groups: dict,
    only: list[str] | None = None,
    defaults: dict | None = None,
    default_texts: dict | None = None,
    group: str | None = None,
) -> None:
    """Add one flag per field of ``cls`` to its group (created in ``groups``, title -> argument group, on first
    use; ``group``: this title instead of the fields' own). ``defaults``: a default other than the field's, for
    this command (e.g. one read from the environment); ``default_texts``: how such a default is shown."""
    defaults, default_texts = defaults or {}, default_texts or {}
    for f in flag_fields(cls, only=only):
        meta = dict(f.metadata)
        title = group or meta["group"]
        del meta["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        default = defaults.get(f.name, field_default(f))
        text_default = meta.pop("default_text")
        shown = default_texts.get(f.name) or text_default or default
        text = f"{meta.pop('help')} (default: {shown})"
        name = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if f.type == "bool":
            groups[title].add_argument(
                name, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue
        kind = {"int": int, "float": float}.get(str(f.type).split(" | ")[0], str)
        groups[title].add_argument(name, dest=f.name, type=kind, default=default, help=text, **meta)


def values_of(args: argparse.Namespace, cls, *, only: list[str] | None = None) -> dict:
    """The values the flags of ``cls`` parsed into, by field name."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls, only=only)}
