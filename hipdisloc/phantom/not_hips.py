"""Images that are not postoperative hips, for checking that a pipeline refuses them: a
photograph-like picture (JPEG, the same without an extension, a GIF), a bar chart (PNG), a
chest-like radiograph (a DICOM that passes the header screen: DX, no body part), a blank image
and an empty file. Synthetic, drawn from a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage (presentation)


def chest_like(size: int) -> np.ndarray:
    """Another anatomy than a pelvis, in [0, 1]: two dark lung fields, a spine, ribs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.55)
    for cx in (0.3, 0.7):
        image[((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1] = 0.15
    image[np.abs(xx - 0.5) < 0.04] = 0.9
    for k in range(8):
        image[np.abs(yy - (0.22 + 0.075 * k)) < 0.012] += 0.25
    return np.clip(image, 0, 1)


def photograph_like(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 picture with smooth structure (random walks), nothing like a radiograph."""
    channels = [np.cumsum(rng.normal(0, 1, (height, width)), axis=k % 2) for k in range(3)]
    photo = np.stack(channels, -1)
    return (255 * (photo - photo.min()) / np.ptp(photo)).astype(np.uint8)


def write_dicom(path: Path, image: np.ndarray, **tags) -> Path:
    """A 12-bit MONOCHROME2 DX DICOM of ``image`` in [0, 1]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.clip(image, 0, 1) * 4000).astype(np.uint16).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_not_hips(folder: str | Path, seed: int = 3) -> dict[str, tuple[int, int]]:
    """Write the set into ``folder``; return {file stem: (width, height)} of the readable,
    non-blank ones (where a caller may pretend a detector found a box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = photograph_like(160, 200, np.random.default_rng(seed))
    Image.fromarray(photo).save(folder / "holiday.jpg")
    Image.fromarray(photo).save(folder / "photo_without_extension", format="JPEG")
    Image.fromarray(photo).convert("P").save(folder / "animation.gif")
    fig, ax = plt.subplots(figsize=(3, 2.4), dpi=60)
    ax.bar(["a", "b", "c", "d"], [3, 1, 4, 1])
    fig.savefig(folder / "chart.png")
    plt.close(fig)
    Image.new("L", (180, 150), 128).save(folder / "blank.png")
    (folder / "empty.dcm").write_bytes(b"")
    write_dicom(folder / "chest.dcm", chest_like(160))
    return {"holiday": (200, 160), "photo_without_extension": (200, 160),
            "animation": (200, 160), "chart": (180, 144), "chest": (160, 160)}
