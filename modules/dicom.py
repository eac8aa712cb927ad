"""DICOM files (pydicom) to 8-bit grey images as a radiologist would see them.

Recognised by content, whatever the file's name: the ``DICM`` marker after the 128-byte preamble, or a bare
dataset without one (its first element in group 0002 or 0008, in either byte order). The stored values pass
the modality transform (rescale slope and intercept, or a modality LUT), then the file's first VOI transform
(a VOI LUT, else its window centre and width) or, where it has none, the robust percentile window of
``modules.display``; MONOCHROME1, where high values are dark, is inverted; colour becomes grey by luminance.
Pixels are made square by the pixel spacing. A multi-frame file gives one image per frame (``frame-001``, ...).

Compressed pixel data are decoded by the plugins pydicom finds installed (NumPy for RLE, Pillow for JPEG
baseline and JPEG 2000; pylibjpeg or GDCM add JPEG-LS and 12-bit JPEG); a transfer syntax that none of them
reads is a reason to skip the file, naming what would read it.

The patient is the file's ``PatientID`` (else its ``StudyInstanceUID``), kept as a pseudonym: the first 12 hex
digits of its sha256, so that a run folder never holds the identifier itself.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings

import numpy as np

from modules.decode import Scan, ScanImage, UnreadableImage, check_size
from modules.display import percentile_window, square_pixels, window_to_uint8

PREAMBLE = 128
MAGIC = b"DICM"
FIRST_GROUPS = (0x0002, 0x0008)  # a file's meta group, or a bare dataset's first (identifying) group
DICOMDIR_UID = "1.2.840.10008.1.3.10"
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow converts RGB to L
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM file by content: the marker after the preamble, or a bare dataset."""
    if data[PREAMBLE : PREAMBLE + 4] == MAGIC:
        return True
    if len(data) < 8:
        return False
    for order in "<>":
        group = struct.unpack(order + "H", data[:2])[0]
        if group in FIRST_GROUPS:
            vr = data[4:6]
            length = struct.unpack(order + "I", data[4:8])[0]  # implicit VR: a 4-byte length follows the tag
            if (vr.isalpha() and vr.isupper()) or length < len(data):
                return True
    return False


def pseudonym(identifier: str) -> str:
    """The first 12 hex digits of the identifier's sha256: stable across runs, never the identifier itself."""
    return hashlib.sha256(identifier.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def decode_dicom(data: bytes) -> Scan:
    """The images of a DICOM file (see the module docstring); raises ``UnreadableImage`` with the reason."""
    import pydicom  # imported when a file needs it: most sets hold no DICOM

    with warnings.catch_warnings():  # pydicom warns about every odd element; the reason below is what counts
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=data[PREAMBLE : PREAMBLE + 4] != MAGIC)
        except Exception as exc:
            raise UnreadableImage(
                f"truncated or corrupt DICOM ({_said(exc)}); expected a DICOM file"
            ) from None
        try:
            return _scan(ds, data)
        except UnreadableImage:
            raise
        except Exception as exc:  # pydicom reads values lazily: a damaged one fails here
            raise UnreadableImage(
                f"truncated or corrupt DICOM ({_said(exc)}); expected a readable DICOM image"
            ) from None


def _said(exc: Exception, limit: int = 300) -> str:
    """An exception on one line (pydicom lists each plugin's failure on a line of its own), for a reason."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scan(ds, data: bytes) -> Scan:
    _check_is_image(ds)
    _check_decodable(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    check_size(cols, rows, frames)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise UnreadableImage(
            f"cannot decode DICOM pixel data ({_said(exc)}); expected pixel data of the size its header "
            "declares, in a transfer syntax an installed decoder reads"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    stack = arr if frames > 1 else arr[None]
    grey, intensity = _grey(stack, ds, photometric)
    spacing = [float(v) for v in ds.get("PixelSpacing") or (0, 0)][:2]
    images, blank = [], 0
    digits = max(3, len(str(frames)))
    for k, frame in enumerate(grey):
        if frame.min() == frame.max():
            blank += 1
            continue
        name = f"frame-{k + 1:0{digits}d}" if frames > 1 else ""
        images.append(ScanImage(name, square_pixels(frame, *spacing) if len(spacing) == 2 else frame))
    if not images:
        what = "the image is" if frames == 1 else f"all {frames} frames are"
        raise UnreadableImage(f"blank DICOM: {what} one grey level; expected an image with contrast")
    return Scan(
        data,
        "DICOM",
        photometric,
        cols,
        rows,
        tuple(images),
        subject=_subject(ds),
        unit="file" if frames > 1 else "",
        intensity=intensity,
        blank=blank,
    )


def _check_is_image(ds) -> None:
    """Refuse a DICOMDIR and any object without pixel data (structured report, RT structure set, ...)."""
    sop = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        raise UnreadableImage("a DICOMDIR (the index of a DICOM media set); expected a DICOM image")
    if not any(k in ds for k in PIXEL_KEYWORDS):
        uid = ds.get("SOPClassUID")
        kind = f" ({uid.name})" if uid is not None and uid.name != str(uid) else ""
        raise UnreadableImage(
            f"DICOM without pixel data{kind}; expected a DICOM image (a truncated file also ends before them)"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableImage("DICOM pixel data without Rows and Columns; expected an image's size")


def _check_decodable(ds) -> None:
    """Give a bare dataset the transfer syntax it was read in, and refuse one no installed decoder reads."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ts = ds.file_meta.get("TransferSyntaxUID")  # dcmread gives every dataset a file_meta, empty when bare
    if ts is None:
        implicit, little = ds.original_encoding
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = ts
    if not ts.is_transfer_syntax:
        raise UnreadableImage(f"DICOM with an unknown transfer syntax {ts}; expected a DICOM transfer syntax")
    if not ts.is_compressed or "PixelData" not in ds:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnreadableImage(
            f"DICOM pixel data compressed as {ts.name} ({ts}), which pydicom cannot decode; expected a "
            "transfer syntax it supports"
        ) from None
    if not decoder.is_available:
        raise UnreadableImage(
            f"DICOM pixel data compressed as {ts.name} ({ts}), which no installed decoder reads; install one "
            f"of: {'; '.join(decoder.missing_dependencies)}"
        )


def _grey(stack: np.ndarray, ds, photometric: str) -> tuple[np.ndarray, str]:
    """8-bit grey frames (F, H, W) of the decoded frames ``stack`` and how their grey levels were made."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if photometric == "PALETTE COLOR":
        return _luminance(apply_color_lut(stack, ds), 16), "palette colour to grey (luminance)"
    if stack.ndim == 4:  # colour: pydicom gives RGB (YBR converted)
        return _luminance(stack, int(ds.get("BitsStored") or 8)), "colour to grey (luminance)"
    values = apply_modality_lut(stack, ds)
    grey, how = _voi(values, ds)
    if photometric == "MONOCHROME1":
        return 255 - grey, how + ", inverted (MONOCHROME1)"
    return grey, how


def _luminance(rgb: np.ndarray, bits: int) -> np.ndarray:
    luma = np.tensordot(rgb.astype(np.float64), np.array(LUMINANCE), axes=([-1], [0]))
    return window_to_uint8(luma, 0.0, float(2**bits - 1))


def _voi(values: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """The file's first VOI transform to 8 bits (its LUT, else its window), or the percentile window where it
    has none or a broken one. pydicom maps into the range of the stored values; the ends of that range, found
    by sending the lowest and highest inputs through the same transform, become 0 and 255."""
    from pydicom.pixels import apply_voi, apply_windowing

    lut = ds.get("VOILUTSequence")
    note = ""
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        entries, first = int(lut[0].LUTDescriptor[0]) or 2**16, int(lut[0].LUTDescriptor[1])
        domain = np.arange(first, first + entries, dtype=np.int64)
        out_range = apply_voi(domain, ds, 0)
        # clipped to the LUT's inputs first: pydicom indexes with unsigned integers that would wrap
        inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
        lo, hi = float(out_range.min()), float(out_range.max())
        if hi > lo:
            return window_to_uint8(apply_voi(inputs, ds, 0), lo, hi), "DICOM VOI LUT"
        note = " (the file's VOI LUT is flat)"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            with np.errstate(over="ignore"):  # the sigmoid function at the extreme inputs
                lo, hi = (float(v) for v in apply_windowing(np.array([-1e15, 1e15]), ds, 0))
                return window_to_uint8(apply_windowing(values, ds, 0), lo, hi), "DICOM VOI window"
        except (ValueError, TypeError, IndexError) as exc:
            note = f" (the file's window is unusable: {_said(exc)})"
    window = percentile_window(values)
    if window is None:
        raise UnreadableImage("blank DICOM: every pixel has one value; expected an image with contrast")
    return window_to_uint8(values, *window), "percentile window" + note


def _subject(ds) -> str:
    """``patient:<pseudonym>`` of the PatientID, else ``study:<pseudonym>`` of the StudyInstanceUID, else ""."""
    patient = str(ds.get("PatientID") or "").strip(" \x00")
    if patient:
        return f"patient:{pseudonym(patient)}"
    study = str(ds.get("StudyInstanceUID") or "").strip(" \x00")
    return f"study:{pseudonym(study)}" if study else ""
