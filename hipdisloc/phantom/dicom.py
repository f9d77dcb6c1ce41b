"""Write a phantom radiograph as a real DICOM file (DX, For Presentation, explicit VR LE).

Deterministic: UIDs derive from the cohort seed and the image id, and no creation time is
written, so the same arguments give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def uid(seed: int, *parts: str) -> str:
    return generate_uid(entropy_srcs=["hipdisloc-phantom", str(seed), *parts])


def to_stored_pixels(image: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Display image in [0, 1] (bone bright) -> stored integers as the DICOM declares them.

    MONOCHROME1 stores the inverse (bone dark in stored values, displayed bright).
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    top = (1 << bits_stored) - 1
    values = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    return np.round(values * top).astype(np.uint16)


def _da(date) -> str:
    return pd.Timestamp(date).strftime("%Y%m%d")


def write_radiograph(path: Path, image: np.ndarray, *, seed: int, row, bits_stored: int,
                     photometric: str, spacing_mm: float, burned_in_markers: bool) -> None:
    """Write ``image`` (float32, [0, 1], bone bright) with the patient/study of ``row``.

    ``row`` is one row of the phantom's image table (patient_id, sex, age, dates, side...).
    """
    stored = to_stored_pixels(image, bits_stored, photometric)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid(seed, "sop", row.image_id)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # Patient module
    ds.PatientName = f"PHANTOM^{row.patient_id}"
    ds.PatientID = row.patient_id
    ds.PatientSex = row.sex
    birth = pd.Timestamp(row.surgery_date) - pd.Timedelta(days=int(round(row.age * 365.25)))
    ds.PatientBirthDate = _da(birth)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "hipdisloc synthetic phantom: no real patient"
    # General study / series / equipment
    ds.StudyInstanceUID = uid(seed, "study", row.image_id)
    ds.SeriesInstanceUID = uid(seed, "series", row.image_id)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _da(row.image_date)
    ds.StudyID = row.image_id
    ds.AccessionNumber = row.image_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.Manufacturer = "hipdisloc phantom"
    ds.StudyDescription = "XR PELVIS AP"
    ds.BodyPartExamined = "PELVIS"
    ds.ViewPosition = "AP"
    ds.PatientOrientation = ["L", "F"]  # columns towards the patient's left, rows to the feet
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "YES" if burned_in_markers else "NO"
    # Image pixel module
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{spacing_mm:.6f}", f"{spacing_mm:.6f}"]
    ds.ImagerPixelSpacing = ds.PixelSpacing
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    top = (1 << bits_stored) - 1
    ds.WindowCenter = top // 2
    ds.WindowWidth = top + 1
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    tmp.replace(path)
