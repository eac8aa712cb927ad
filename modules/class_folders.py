"""Find the class folders of a walked source (``modules.sources``): ``root/<class>/...`` under at most one
wrapping folder (``brain_tumor_dataset/yes``); the classes are the folders found there (two or more), or a list
given by the caller. A layout that fits neither raises ``DatasetError`` saying what was found and expected.
"""

from __future__ import annotations

from collections.abc import Sequence

from modules.sources import DatasetError, Entry, is_hidden


def _level(
    entries: list[Entry], dirs: set[tuple[str, ...]], prefix: tuple[str, ...], source: str
) -> tuple[dict[str, str], list[Entry]]:
    """The folders at ``prefix`` (lower-case name -> name as spelled on disk, hidden ones left out) and the
    usable files there. Folders whose names differ only in case raise ``DatasetError``."""
    subdirs = sorted(
        d[-1] for d in dirs if len(d) == len(prefix) + 1 and d[:-1] == prefix and not is_hidden(d[-1:])
    )
    # entries with a problem (unsafe archive paths, escaping links) are reported as skipped, and must not
    # turn a wrapping folder into an "unexpected layout"
    files_here = [
        e
        for e in entries
        if len(e.parts) == len(prefix) + 1
        and e.parts[:-1] == prefix
        and not is_hidden(e.parts)
        and e.problem is None
    ]
    by_lower: dict[str, list[str]] = {}
    for d in subdirs:
        by_lower.setdefault(d.lower(), []).append(d)
    clashes = sorted(v for v in by_lower.values() if len(v) > 1)
    if clashes:
        raise DatasetError(
            f"{source}: folders whose names differ only in case: {clashes}; "
            "expected one folder per class, each name used once"
        )
    return {k: v[0] for k, v in by_lower.items()}, files_here


def find_class_dirs(
    entries: list[Entry],
    dirs: set[tuple[str, ...]],
    classes: Sequence[str] | None,
    source: str,
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Return the prefix of the class folders and a map class -> folder name as spelled on disk.

    ``classes`` None: every (non-hidden) folder there is a class, named by its folder name in lower case."""
    if classes is None:
        return _discover_class_dirs(entries, dirs, source)
    prefix: tuple[str, ...] = ()
    for _ in range(2):  # the root itself, or one wrapping folder
        by_lower, files_here = _level(entries, dirs, prefix, source)
        wanted = {c.lower() for c in classes}
        present = wanted & by_lower.keys()
        if present:
            missing = sorted(wanted - present)
            if missing:
                raise DatasetError(
                    f"{source}: found class folders {sorted(by_lower[k] + '/' for k in present)} but no "
                    f"{', '.join(m + '/' for m in missing)}; expected one folder per class: "
                    f"{', '.join(c + '/' for c in classes)}"
                )
            extra = sorted(by_lower[k] for k in by_lower.keys() - wanted)
            if extra:
                raise DatasetError(
                    f"{source}: unexpected folder(s) {[e + '/' for e in extra]} next to the class folders; "
                    f"expected only {', '.join(c + '/' for c in classes)} (remove the others, or point at one "
                    "dataset copy)"
                )
            return prefix, {c: by_lower[c.lower()] for c in classes}
        if len(by_lower) == 1 and not files_here and not prefix:
            prefix = (next(iter(by_lower.values())),)
            continue
        break
    shown = "/".join(prefix) + "/" if prefix else "the top level"
    raise DatasetError(
        f"{source}: unexpected layout: at {shown} found folders {sorted(by_lower.values())[:10]} and "
        f"{len(files_here)} file(s); expected class folders {', '.join(c + '/' for c in classes)}, optionally "
        "inside one wrapping folder"
    )


def _discover_class_dirs(
    entries: list[Entry], dirs: set[tuple[str, ...]], source: str
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Every folder at the top level (or inside a single wrapping folder) is a class; two or more needed."""
    prefix: tuple[str, ...] = ()
    by_lower, files_here = _level(entries, dirs, prefix, source)
    if len(by_lower) == 1 and not files_here:  # one wrapping folder, e.g. brain_tumor_dataset/
        prefix = (next(iter(by_lower.values())),)
        by_lower, files_here = _level(entries, dirs, prefix, source)
    shown = "/".join(prefix) + "/" if prefix else "the top level"
    if len(by_lower) < 2:
        if by_lower:
            found = f"only one class folder ({next(iter(by_lower.values()))}/) at {shown}"
        elif prefix and files_here:  # a lone folder of images: one class
            found = f"only one class folder ({prefix[0]}/, {len(files_here)} file(s))"
        else:
            found = f"no folder and {len(files_here)} file(s) at {shown}"
        raise DatasetError(
            f"{source}: unexpected layout: found {found}; expected two or more class folders (one per class, "
            "e.g. yes/ and no/), optionally inside one wrapping folder"
        )
    # a class folder that holds a folder named like another class is (part of) a second copy of the set (the
    # Kaggle archive ships yes/, no/ and brain_tumor_dataset/{yes,no}/): refuse it rather than train on it
    copies = []
    for lower, name in by_lower.items():
        inner, _ = _level(entries, dirs, (*prefix, name), source)
        if inner.keys() & (by_lower.keys() - {lower}):
            copies.append(name + "/")
    if copies:
        raise DatasetError(
            f"{source}: folder(s) {sorted(copies)} at {shown} hold their own copies of the class folders; "
            "expected one folder per class (remove the copies, or point at one dataset copy)"
        )
    return prefix, {lower: by_lower[lower] for lower in sorted(by_lower)}
