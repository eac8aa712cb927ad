"""DICOM and NIfTI files that the tests write (pydicom, nibabel), and pydicom's own test files."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np


def pydicom_file(name: str) -> Path:
    """A file of the test data that pydicom installs with itself (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom's test file {name} is not installed"
    return Path(path)


def dicom_bytes(
    stored: np.ndarray,
    *,
    patient: str | None = "P001",
    study: str | None = "1.2.826.0.1.3680043.2.1125.1",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    spacing: tuple[float, float] | None = None,
    preamble: bool = True,
) -> bytes:
    """An MR image (or several frames: ``stored`` of shape (F, H, W)) of unsigned 16-bit stored values."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, generate_uid(), "MR"
    if patient is not None:
        ds.PatientID = patient
    if study is not None:
        ds.StudyInstanceUID = study
    frames = stored.shape[0] if stored.ndim == 3 else None
    if frames:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for key, value in [
        ("RescaleSlope", slope),
        ("RescaleIntercept", intercept),
        ("WindowCenter", center),
        ("WindowWidth", width),
    ]:
        if value is not None:
            setattr(ds, key, value)
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.PixelData = stored.astype("<u2").tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:  # a bare dataset, as some old systems write: no preamble, no file meta (implicit VR little endian)
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def head_volume(shape=(40, 48, 20), *, seed: int = 0) -> np.ndarray:
    """A (X, Y, Z) int16 volume: an ellipsoid of tissue, its place, size and texture drawn from ``seed`` (volumes
    of different seeds are no near copies of each other), in an empty field of view."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    cx, cy = rng.uniform(-0.25, 0.25, 2)
    ax, ay = rng.uniform(0.5, 0.85, 2)
    inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + (z * 1.1) ** 2 < 1
    tissue = 300 + 50 * rng.random(shape)
    for _ in range(4):  # blobs of brighter and darker tissue
        f, phase = rng.uniform(2, 7, 3), rng.uniform(0, 6.3, 3)
        tissue += (
            250 * np.sin(f[0] * x + phase[0]) * np.sin(f[1] * y + phase[1]) * np.sin(f[2] * z + phase[2])
        )
    vol = np.where(inside, np.clip(tissue, 20, None), 0.0)
    vol[:, :, 0] = vol[:, :, -1] = 0  # empty ends of the field of view
    return vol.astype(np.int16)


def nifti_bytes(volume: np.ndarray, affine: np.ndarray | None = None, *, version: int = 1) -> bytes:
    """A NIfTI-1 (or -2) file of ``volume`` with ``affine`` (default: RAS+, 1 mm voxels)."""
    import nibabel as nib

    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    return cls(volume, np.eye(4) if affine is None else affine).to_bytes()


def dicom_phantom_with_volumes(
    root: Path, *, n_per_class: int, size: int, volumes_per_class: int, volume_shape: tuple, seed: int = 0
) -> Path:
    """The phantom as DICOM series of 3 slices per patient (``modules.phantom``), and in each class folder
    ``volumes_per_class`` NIfTI volumes ``vol-<class><v>.nii.gz`` of ``head_volume``."""
    from modules.phantom import make_phantom

    make_phantom(root, n_per_class=n_per_class, size=size, format="dicom", slices_per_patient=3)
    for ci, label in enumerate(("no", "yes")):
        for v in range(volumes_per_class):
            volume = head_volume(volume_shape, seed=seed + 10 * ci + v)
            (root / label / f"vol-{label}{v}.nii.gz").write_bytes(gzip.compress(nifti_bytes(volume)))
    return root
