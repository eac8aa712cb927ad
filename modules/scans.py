"""The one read-and-decode step of ingest, evaluation and prediction: a file's bytes to a ``Scan`` of one or more
8-bit grey images, the format decided from the content, never the name.

DICOM comes first (its 128-byte preamble may hold a TIFF header, so a picture decoder would misread it), then
NIfTI, then the picture formats; a bare DICOM dataset (no preamble), which no picture decoder takes, last.
"""

from __future__ import annotations

from collections.abc import Callable

from modules.decode import NOT_AN_IMAGE, Scan, UnreadableImage, picture_scan
from modules.dicom import decode_dicom, is_dicom
from modules.nifti import SliceChoice, decode_nifti, nifti_format


def decode_scan(data: bytes, choice: SliceChoice | None = None) -> Scan:
    """Decode a file's bytes (``choice``: which slices of a NIfTI volume); raises ``UnreadableImage``."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    if data[128:132] == b"DICM":
        return decode_dicom(data)
    if nifti_format(data) is not None:
        return decode_nifti(data, choice)
    try:
        return picture_scan(data)
    except UnreadableImage as exc:
        if str(exc) != NOT_AN_IMAGE or not is_dicom(data):
            raise
    return decode_dicom(data)


def read_scan(
    read: Callable[[], bytes] | None, problem: str | None = None, choice: SliceChoice | None = None
) -> tuple[Scan | None, str]:
    """Read a file with ``read`` and decode it: (the scan, "") or (None, the reason it cannot be used).

    ``problem``: the reason a file was refused before reading (``read`` is then not called). A file that
    cannot be read (permission denied, an I/O error) comes back with its reason too, so that one bad file
    never stops the others."""
    if problem is not None:
        return None, problem
    assert read is not None
    try:
        return decode_scan(read(), choice), ""
    except UnreadableImage as skip:
        return None, str(skip)
    except PermissionError:
        return None, "permission denied (unreadable file)"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
