"""``DataOptions``: which images a run reads and how they are split, shared by the commands that read a set.

Kept apart from ``TrainConfig`` so that ``python -m tuning.data`` reads its flags without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modules.dataset import PreparedData, resolve_data
from tuning.flags import option

DATA = "data"
POSITIVE_CLASS_HELP = (
    "two-class sets: the class that sensitivity, specificity and the ROC refer to (yes when there is a yes/, "
    "else required); not allowed for more classes (scored one-vs-rest)"
)


@dataclass(frozen=True)
class DataOptions:
    """Which images a run reads and how they are split; shared by ``tuning.train`` and ``tuning.search``."""

    data: str | None = field(
        default=None,
        metadata=option(
            "folder with one sub-folder per class (e.g. yes/ and no/) or a .zip of one",
            group=DATA,
            default_text="the built-in phantom set",
        ),
    )
    positive_class: str | None = field(
        default=None, metadata=option(POSITIVE_CLASS_HELP, group=DATA, metavar="NAME", default_text="yes")
    )
    split_seed: int = field(default=0, metadata=option("seed of the grouped split", group=DATA))
    strict: bool = field(
        default=False, metadata=option("refuse bad image files instead of skipping them", group=DATA)
    )
    must_link: str | None = field(
        default=None,
        metadata=option(
            "CSV of image sets that must share a split and a fold (one set per row, paths as split.csv shows "
            "them), e.g. copies that look the same by eye below the near-duplicate threshold",
            group=DATA,
            metavar="FILE",
            default_text="none",
        ),
    )

    def prepared(self, *, warn=None, **kwargs) -> PreparedData:
        """The data these options name, ingested, grouped and split (``kwargs``: more of ``prepare_data``'s)."""
        return resolve_data(
            self.data,
            seed=self.split_seed,
            strict=self.strict,
            positive_class=self.positive_class,
            must_link=self.must_link,
            warn=warn,
            **kwargs,
        )
