"""``DataOptions``: which images a run reads and how they are split, shared by the commands that read a set.

Kept apart from ``TrainConfig`` so that ``python -m tuning.data`` reads its flags without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modules.dataset import PreparedData, resolve_data
from modules.nifti import SLICE_AXES, SliceChoice
from tuning.flags import option

DATA = "data"
GROUPS_HELP = (
    "CSV of path,group rows: each image's patient (or any unit that must stay on one side of every split and "
    "fold), for any format; a path names an image or a whole file (a volume, a multi-frame DICOM) as split.csv "
    "shows them; every image whose file names no patient needs a row, and a row replaces a DICOM PatientID"
)
SLICES_HELP = (
    "slices a NIfTI volume gives: all (those with contrast), middle, or middle:K (the K about the middle)"
)
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
            "folder with one sub-folder per class (e.g. yes/ and no/) or a .zip of one; JPEG, PNG, DICOM "
            "(any name) and NIfTI files, mixed",
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

    groups: str | None = field(
        default=None, metadata=option(GROUPS_HELP, group=DATA, metavar="FILE", default_text="none")
    )
    slice_axis: str = field(
        default="axial",
        metadata=option(
            "axis along which NIfTI volumes are sliced, after turning them to the closest canonical "
            "orientation",
            group=DATA,
            choices=SLICE_AXES,
        ),
    )
    slices: str = field(default="all", metadata=option(SLICES_HELP, group=DATA, metavar="WHICH"))

    def check_data_options(self) -> None:
        """Refuse (``ValueError``) options that no data could make right, before any work starts."""
        SliceChoice(self.slice_axis, self.slices)

    @property
    def choice(self) -> SliceChoice:
        """The slices of NIfTI volumes these options ask for (``ValueError`` for a bad ``--slices``)."""
        return SliceChoice(self.slice_axis, self.slices)

    def prepared(self, *, warn=None, **kwargs) -> PreparedData:
        """The data these options name, ingested, grouped and split (``kwargs``: more of ``prepare_data``'s)."""
        return resolve_data(
            self.data,
            seed=self.split_seed,
            strict=self.strict,
            positive_class=self.positive_class,
            must_link=self.must_link,
            groups=self.groups,
            choice=self.choice,
            warn=warn,
            **kwargs,
        )
