"""NIfTI volumes (nibabel; ``.nii`` or ``.nii.gz``, NIfTI-1 or NIfTI-2) to 2-D slices along one axis.

Recognised by content: the header's size (348 or 540 bytes) and magic (``n+1``, ``n+2``), after gunzip when the
file is gzip-compressed. The volume is turned to the closest canonical orientation (RAS+, nibabel's
orientation tools), so that "axial" means the same slices whatever a file's voxel order. Slices are shown the
way radiologists view them: axial and coronal with the patient's right on the image's left and anterior (or
superior) at the top, sagittal with anterior on the left and superior at the top. Values are scaled by the
header's slope and intercept, then one percentile window over the whole volume (``modules.display``) maps them
to 8 bits, so that the slices of a volume share one contrast; pixels are made square by the voxel sizes.
Slices of a single value (the empty ends of a field of view) are left out and counted.

A slice is named ``<axis>-<index>``: its 0-based index along that axis in the file's own voxel order, the
coordinate a viewer shows for it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from modules.decode import MAX_VOXELS, Scan, ScanImage, UnreadableImage, check_size
from modules.display import percentile_window, square_pixels, square_size, window_to_uint8

SLICE_AXES = ("axial", "coronal", "sagittal")
CANONICAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # RAS+: x to the right, y anterior, z superior
MAX_UNZIPPED_BYTES = 256 * 1024**2
HEADERS = {  # format -> (header size, where the magic is, the magic of a single file, of a .hdr/.img pair)
    "NIfTI-1": (348, 344, b"n+1\x00", b"ni1\x00"),
    "NIfTI-2": (540, 4, b"n+2\x00", b"ni2\x00"),
}


@dataclass(frozen=True)
class SliceChoice:
    """Which 2-D slices a volume gives: along ``axis`` (one of ``SLICE_AXES``), ``slices`` "all", "middle" or
    "middle:K" (the K slices about the middle). Raises ``ValueError`` for anything else."""

    axis: str = "axial"
    slices: str = "all"

    def __post_init__(self) -> None:
        if self.axis not in SLICE_AXES:
            raise ValueError(f"--slice-axis {self.axis!r}: expected one of {', '.join(SLICE_AXES)}")
        slice_count(self.slices)

    @property
    def count(self) -> int | None:
        """How many slices about the middle (None: all of them)."""
        return slice_count(self.slices)

    def indices(self, n: int) -> range:
        """The chosen indices among ``n`` slices (canonical order): all, or K centred on index n // 2."""
        k = self.count
        if k is None or k >= n:
            return range(n)
        start = (n - k + 1) // 2
        return range(start, start + k)


def slice_count(slices: str) -> int | None:
    """The number of slices about the middle that ``slices`` asks for (None: all); ``ValueError`` if unclear."""
    text = slices.strip().lower()
    if text == "all":
        return None
    if text == "middle":
        return 1
    head, _, k = text.partition(":")
    if head == "middle" and k.isdigit() and int(k) >= 1:
        return int(k)
    raise ValueError(f"--slices {slices!r}: expected all, middle, or middle:K with K a positive integer")


def nifti_format(data: bytes) -> tuple[str, bytes] | None:
    """(format, uncompressed bytes) when ``data`` is a NIfTI file (gzipped or not), else None. Raises
    ``UnreadableImage`` for a header/image pair's header, or a gzip stream that is broken or too large."""
    gz = data[:2] == b"\x1f\x8b"
    head = _gunzip(data, 540, whole=False) if gz else data[:540]
    kind = _header_kind(head)
    if kind is None:
        return None
    if kind == "pair":
        raise UnreadableImage("the header of a NIfTI .hdr/.img pair; expected a single-file .nii or .nii.gz")
    return kind, _gunzip(data, MAX_UNZIPPED_BYTES, whole=True) if gz else data


def _header_kind(head: bytes) -> str | None:
    for kind, (size, at, single, pair) in HEADERS.items():
        declared = (
            {int.from_bytes(head[:4], order) for order in ("little", "big")} if len(head) >= 4 else set()
        )
        if size in declared and len(head) >= at + 4:
            if head[at : at + 4] == single:
                return kind
            if head[at : at + 4] == pair:
                return "pair"
    return None


def _gunzip(data: bytes, limit: int, *, whole: bool) -> bytes:
    """Up to ``limit`` bytes of a gzip stream; ``whole``: all of it, refusing a larger or a truncated one."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit + 1 if whole else limit)
    except zlib.error as exc:
        if not whole:
            return b""  # not a readable gzip stream: not a NIfTI by content
        raise UnreadableImage(f"corrupt .nii.gz ({exc}); expected a gzip-compressed NIfTI file") from None
    if whole and len(out) > limit:
        raise UnreadableImage(f"NIfTI larger than {limit // 1024**2} MiB unzipped; expected one volume")
    if whole and not d.eof:
        raise UnreadableImage("truncated .nii.gz (the gzip stream ends early); expected a whole file")
    return out


def decode_nifti(data: bytes, choice: SliceChoice | None = None) -> Scan:
    """The chosen slices of a NIfTI volume (see the module docstring); raises ``UnreadableImage``."""
    found = nifti_format(data)
    if found is None:
        raise UnreadableImage("not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    kind, raw = found
    choice = choice or SliceChoice()
    import nibabel as nib  # imported when a file needs it: most sets hold no NIfTI

    cls = nib.Nifti1Image if kind == "NIfTI-1" else nib.Nifti2Image
    try:
        img = _quietly(cls.from_bytes, raw)
        shape = tuple(int(n) for n in img.shape)
        stored = img.get_data_dtype().name
    except Exception as exc:
        raise UnreadableImage(f"corrupt NIfTI header ({_said(exc)}); expected a NIfTI-1 or -2 file") from None
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise UnreadableImage(
            f"a {len(shape)}-D NIfTI of {'x'.join(map(str, shape))} voxels (a time series or several "
            "volumes); expected one 3-D volume"
        )
    volume, to_file, zooms = _canonical(img, shape, _load(img, shape))
    return _slices(volume, to_file, zooms, choice, data=data, kind=kind, stored=stored)


def _quietly(read, raw: bytes):
    """``read(raw)`` with nibabel's header checks kept off the console (they log each fix-up; what fails comes
    back as the skip reason)."""
    from nibabel.imageglobals import logger

    was, logger.disabled = logger.disabled, True
    try:
        return read(raw)
    finally:
        logger.disabled = was


def _said(exc: Exception) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(img, shape: tuple[int, ...]) -> np.ndarray:
    """The scaled voxel values as float32, (X, Y, Z); refused before reading when there are too many."""
    xyz = (*shape[:3], *[1] * (3 - len(shape[:3])))
    if int(np.prod(xyz)) > MAX_VOXELS:
        raise UnreadableImage(
            f"NIfTI volume of {'x'.join(map(str, xyz))} voxels (more than {MAX_VOXELS:,}); expected a "
            "smaller volume"
        )
    try:
        return np.asarray(img.get_fdata(dtype=np.float32)).reshape(xyz)
    except Exception as exc:
        raise UnreadableImage(
            f"truncated or corrupt NIfTI data ({_said(exc)}); expected the voxels its header declares"
        ) from None


def _canonical(img, shape, volume: np.ndarray) -> tuple[np.ndarray, list[tuple[int, bool]], list[float]]:
    """The volume in RAS+ voxel order; for each canonical axis, (the file's axis, whether it runs reversed);
    and the voxel sizes in canonical order."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    try:
        ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("R", "A", "S")))
    except Exception as exc:
        raise UnreadableImage(f"NIfTI with an unusable orientation ({_said(exc)})") from None
    to_file: list[tuple[int, bool]] = [(0, False)] * 3
    for file_axis, (canon, flip) in enumerate(ornt):
        to_file[int(canon)] = (file_axis, flip < 0)
    zooms = [float(z) for z in (*img.header.get_zooms()[:3], 1.0, 1.0)[:3]]
    return apply_orientation(volume, ornt), to_file, [zooms[a] for a, _ in to_file]


def _slices(volume, to_file, zooms, choice: SliceChoice, *, data: bytes, kind: str, stored: str) -> Scan:
    axis = CANONICAL_AXIS[choice.axis]
    n = volume.shape[axis]
    inplane = [a for a in range(3) if a != axis]  # (first, second): columns, then rows once transposed
    width, height = volume.shape[inplane[0]], volume.shape[inplane[1]]
    shown_h, shown_w = square_size(height, width, zooms[inplane[1]], zooms[inplane[0]])
    check_size(shown_w, shown_h, n)  # thick slices are no reason to refuse a coronal or sagittal view
    window = percentile_window(volume)
    if window is None:
        raise UnreadableImage("blank NIfTI: every voxel has one value; expected a volume with contrast")
    reversed_axis = to_file[axis][1]
    digits = max(3, len(str(n - 1)))
    images, blank = [], 0
    for k in choice.indices(n):
        sl = np.take(volume, k, axis=axis)
        if sl.min() == sl.max():
            blank += 1
            continue
        # rows from the second in-plane axis, columns from the first, both from their high end (see docstring)
        grey = window_to_uint8(sl.T[::-1, ::-1], *window)
        index = n - 1 - k if reversed_axis else k
        pixels = square_pixels(grey, zooms[inplane[1]], zooms[inplane[0]])
        images.append(ScanImage(f"{choice.axis}-{index:0{digits}d}", np.ascontiguousarray(pixels)))
    if not images:
        raise UnreadableImage(
            f"every chosen {choice.axis} slice of the NIfTI volume is blank ({blank} of {n}); expected "
            "slices with contrast (choose other --slices)"
        )
    images.sort(key=lambda im: im.name)
    return Scan(
        data,
        kind,
        stored,
        width,
        height,
        tuple(images),
        unit="volume",
        intensity="percentile window (volume)",
        blank=blank,
    )
