"""The phantom set as DICOM series: one series per synthetic patient, so that patient grouping can be seen at
work offline (``python -m modules.phantom OUT --format dicom``).

``make_phantom_dicom`` writes ``root/<class>/<patient>/IM0001, IM0002, ...`` (no extension, as scanners export
them): MR images of 12 bits, stored as 16 times the phantom's grey level with a rescale slope of 1/16 and a
window (centre 128, width 256) under which a viewer shows exactly the phantom's grey levels. Image ``i`` of a
class is the same slice as the PNG set's ``<class>_<i>.png``; patient ``p`` holds images ``p * S`` to
``p * S + S - 1`` (``S``: slices per patient). Those slices are distinct renders, not near copies of each
other, as the slices of a real patient are: only the PatientID keeps them together. Every UID is derived from
the arguments, and the file meta names this generator, so that the same arguments write the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import pathlib

import numpy as np

from modules.phantom_render import render_example

STORED_PER_GREY = 16  # stored value = 16 x grey level: 12-bit data, 0..4080
IMPLEMENTATION = "MRITUNE_PHANTOM1"


def patient_id(name: str, patient: int) -> str:
    """The PatientID of phantom patient ``patient`` (0-based) of class ``name``."""
    return f"PHANTOM-{name.upper()}-{patient + 1:03d}"


def _uid(*parts) -> str:
    """A UID derived from ``parts``: ``2.25.`` and 128 bits of their sha256 as a decimal (the form of
    ISO/IEC 9834-8; pydicom's ``generate_uid`` draws a random one under that root)."""
    digest = hashlib.sha256("\x1f".join(["mri-tune phantom", *map(str, parts)]).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _dataset(img: np.ndarray, *, name: str, patient: int, slice_index: int, seed: int):
    """One MR image's dataset (file meta included) for the phantom slice ``img`` (uint8, H x W)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    pid = patient_id(name, patient)
    sop = _uid(seed, name, patient, slice_index, "image")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid("implementation", IMPLEMENTATION)
    meta.ImplementationVersionName = IMPLEMENTATION
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
    ds.Modality = "MR"
    ds.PatientID, ds.PatientName = pid, f"Phantom^{name}^{patient + 1:03d}"
    ds.StudyInstanceUID = _uid(seed, name, patient, "study")
    ds.SeriesInstanceUID = _uid(seed, name, patient, "series")
    ds.StudyDate = ds.SeriesDate = "20000101"
    ds.SeriesDescription = "synthetic phantom, not real MRI"
    ds.SeriesNumber, ds.InstanceNumber = 1, slice_index + 1
    ds.SliceThickness, ds.PixelSpacing = 5, [1, 1]
    ds.ImagePositionPatient = [0, 0, 5 * slice_index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1 / STORED_PER_GREY, 0, "US"
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = (img.astype("<u2") * STORED_PER_GREY).tobytes()
    return ds


def dicom_bytes(img: np.ndarray, *, name: str, patient: int, slice_index: int, seed: int = 0) -> bytes:
    """The bytes of one phantom DICOM file (preamble, file meta, explicit VR little endian)."""
    import pydicom

    buf = io.BytesIO()
    ds = _dataset(img, name=name, patient=patient, slice_index=slice_index, seed=seed)
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def layout(n_per_class: int, slices_per_patient: int) -> list[tuple[int, int, int]]:
    """(image index, patient, slice within the patient) of every image of one class."""
    return [(i, i // slices_per_patient, i % slices_per_patient) for i in range(n_per_class)]


def make_phantom_dicom(
    root: pathlib.Path,
    *,
    n_per_class: int,
    slices_per_patient: int,
    size: int,
    seed: int,
    classes: tuple[str, ...],
) -> pathlib.Path:
    """Write the set (see the module docstring); the arguments are checked by ``modules.phantom``."""
    for ci, name in enumerate(classes):
        for i, patient, s in layout(n_per_class, slices_per_patient):
            img, _ = render_example(ci, i, size=size, seed=seed)
            folder = root / name / patient_id(name, patient)
            folder.mkdir(parents=True, exist_ok=True)
            data = dicom_bytes(img, name=name, patient=patient, slice_index=s, seed=seed)
            (folder / f"IM{s + 1:04d}").write_bytes(data)
    return root


def expected_files(name: str, n_per_class: int, slices_per_patient: int) -> set[str]:
    """The paths under ``<class>/`` that ``make_phantom_dicom`` writes for class ``name``."""
    return {f"{patient_id(name, p)}/IM{s + 1:04d}" for _, p, s in layout(n_per_class, slices_per_patient)}
