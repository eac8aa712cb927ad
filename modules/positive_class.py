"""The positive class of a two-class set: the class that sensitivity, specificity and the ROC refer to."""

from __future__ import annotations

from collections.abc import Sequence

from modules.sources import DatasetError

DEFAULT_POSITIVE = "yes"  # the tumour class of the brain-MRI set: the positive class of a two-class set


def resolve_positive(classes: Sequence[str], positive: str | None, *, source: str = "the data") -> int | None:
    """Index in ``classes`` of the class that sensitivity, specificity and the ROC refer to.

    Two classes: ``positive`` (matched ignoring case), else ``"yes"`` when it is one of them; otherwise a
    ``DatasetError`` asks for ``--positive-class``. More classes: None (they are scored one-vs-rest, per class
    and macro-averaged), and naming a positive class is an error."""
    names = [c.lower() for c in classes]
    shown = ", ".join(classes)
    if len(classes) != 2:
        if positive is not None:
            raise DatasetError(
                f"{source}: --positive-class {positive!r} given, but the set has {len(classes)} classes "
                f"({shown}); expected it only for a two-class set (N classes are scored one-vs-rest)"
            )
        return None
    if positive is None:
        if DEFAULT_POSITIVE in names:
            return names.index(DEFAULT_POSITIVE)
        raise DatasetError(
            f"{source}: two classes ({shown}) and no '{DEFAULT_POSITIVE}' among them; expected "
            f"--positive-class naming the one that sensitivity and the ROC refer to (one of {shown})"
        )
    if positive.lower() not in names:
        raise DatasetError(
            f"{source}: --positive-class {positive!r} is not a class of this set; expected one of {shown}"
        )
    return names.index(positive.lower())
