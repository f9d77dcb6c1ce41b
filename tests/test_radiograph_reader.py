"""The radiograph reader on real third-party files and on broken ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hipdisloc.io.radiograph import RadiographError, read_radiograph

# The project's shared/ folder sits beside the checkout (as on CI); HIPDISLOC_SHARED overrides.
SHARED = Path(os.environ.get("HIPDISLOC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL = SHARED / "data" / "real" / "ddh-xray-dicom"
DDH_FILES = sorted(REAL.glob("*.dcm"))


def pydicom_data_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom-data does not ship {name}"
    return path


def test_the_ten_real_ddh_dicoms_are_present():
    assert len(DDH_FILES) == 10, f"expected the ten DDH DICOMs in {REAL} (set HIPDISLOC_SHARED)"


@pytest.mark.parametrize("path", DDH_FILES, ids=lambda p: p.name)
def test_real_jpeg2000_rgb_dicom_becomes_gray_luminance(path):
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "RGB"
    assert "JPEG 2000" in ds.file_meta.TransferSyntaxUID.name
    r = read_radiograph(path)
    assert r.image.dtype == np.float32 and r.image.shape == (ds.Rows, ds.Columns)
    assert r.image.min() == 0.0 and r.image.max() == 1.0
    luma = ds.pixel_array.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    luma = (luma - luma.min()) / (luma.max() - luma.min())
    np.testing.assert_allclose(r.image, luma, atol=1e-5)


@pytest.mark.parametrize("stem", ["RG1", "RG3"])
def test_four_encodings_of_one_radiograph_agree(stem):
    images = {enc: read_radiograph(pydicom_data_file(f"{stem}_{enc}.dcm")).image
              for enc in ("UNCR", "UNCI", "J2KR", "J2KI")}
    # lossless JPEG 2000 == the uncompressed original
    np.testing.assert_allclose(images["J2KR"], images["UNCR"], atol=1e-6)
    # UNCI is the lossy JPEG 2000 image stored uncompressed
    np.testing.assert_allclose(images["J2KI"], images["UNCI"], atol=1e-3)
    # lossy vs original: the same picture
    diff = np.abs(images["J2KI"] - images["UNCR"])
    assert diff.mean() < 0.01
    assert np.corrcoef(images["J2KI"].ravel(), images["UNCR"].ravel())[0, 1] > 0.995


def test_monochrome1_comes_out_bone_bright():
    """RG1 is a chest PA stored MONOCHROME1 (15-bit): the spine must be brighter than a lung."""
    path = pydicom_data_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    h, w = ds.Rows, ds.Columns
    spine = np.s_[int(0.2 * h):int(0.5 * h), int(0.47 * w):int(0.53 * w)]
    lung = np.s_[int(0.3 * h):int(0.5 * h), int(0.25 * w):int(0.35 * w)]
    stored = ds.pixel_array.astype(float)
    assert stored[spine].mean() < stored[lung].mean()  # MONOCHROME1: dense = low values
    image = read_radiograph(path).image
    assert image[spine].mean() > image[lung].mean() + 0.1
    assert read_radiograph(path).pixel_spacing_mm is None  # the file says 0\0: unknown


def test_voi_window_is_applied_and_can_be_turned_off():
    path = pydicom_data_file("RG3_UNCR.dcm")
    with_voi = read_radiograph(path).image
    without = read_radiograph(path, apply_voi=False).image
    assert not np.allclose(with_voi, without)
    assert np.corrcoef(with_voi.ravel(), without.ravel())[0, 1] > 0.8


def _write_dicom(path: Path, pixels: np.ndarray | None, frames: int = 1, **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_modality_lut_rescale_is_applied(tmp_path):
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 10, (32, 1))
    path = _write_dicom(tmp_path / "r.dcm", ramp, RescaleSlope=-1, RescaleIntercept=1000)
    image = read_radiograph(path).image
    assert image[0, 0] == 1.0 and image[0, -1] == 0.0  # a negative slope reverses the ramp


@pytest.mark.parametrize("case, reason", [
    ("random_bytes", "not an image file"),
    ("truncated", "pixel data cannot be decoded"),
    ("no_pixels", "no pixel data"),
    ("multi_frame", "multi-frame"),
    ("constant", "all-constant image"),
    ("missing", "file not found"),
    ("bad_png", "unreadable image file"),
])
def test_broken_inputs_raise_a_clear_error_naming_the_file(tmp_path, case, reason):
    path = tmp_path / f"{case}.dcm"
    if case == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif case == "truncated":
        data = Path(pydicom_data_file("RG3_UNCR.dcm")).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "no_pixels":
        _write_dicom(path, None)
    elif case == "multi_frame":
        _write_dicom(path, np.ones((2, 8, 8)), frames=2)
    elif case == "constant":
        _write_dicom(path, np.full((8, 8), 7))
    elif case == "bad_png":
        path = tmp_path / "bad.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(RadiographError) as err:
        read_radiograph(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value)


@pytest.mark.parametrize("dtype, mode", [(np.uint8, "L"), (np.uint16, "I;16")])
def test_png_8_and_16_bit(tmp_path, dtype, mode):
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, top, 100).astype(dtype)[None, :].repeat(20, axis=0)
    path = tmp_path / f"ramp_{mode.replace(';', '')}.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == mode
    image = read_radiograph(path).image
    np.testing.assert_allclose(image, ramp.astype(np.float32) / top, atol=1e-6)


def test_rgb_png_and_tiff(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:, 6:] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.tif")
    for name in ("rgb.png", "gray.tif"):
        image = read_radiograph(tmp_path / name).image
        assert image.shape == (10, 12) and image[:, :6].max() == 0 and image[:, 6:].min() == 1


def test_palette_png_is_read_through_its_palette(tmp_path):
    indices = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    img = Image.fromarray(indices, mode="P")
    img.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # reversed grey ramp
    img.save(tmp_path / "p.png")
    image = read_radiograph(tmp_path / "p.png").image
    assert image[0, 0] == 1.0 and image[0, -1] == 0.0


def test_signed_pixels_with_rescale(tmp_path):
    ramp = np.tile(np.arange(-32, 32, dtype=np.int16) * 16, (8, 1))
    path = _write_dicom(tmp_path / "s.dcm", ramp.view(np.uint16), PixelRepresentation=1,
                        RescaleSlope=2, RescaleIntercept=-1024)
    image = read_radiograph(path).image
    np.testing.assert_allclose(image[0], np.linspace(0, 1, 64), atol=1e-6)


def test_malformed_optional_tags_do_not_cost_the_image(tmp_path):
    ramp = np.tile(np.arange(64, dtype=np.uint16), (8, 1))
    path = _write_dicom(tmp_path / "m.dcm", ramp, PixelSpacing="0.2")  # one value, not two
    r = read_radiograph(path)
    assert r.pixel_spacing_mm is None and r.image.shape == (8, 64)
    palette = _write_dicom(tmp_path / "pal.dcm", ramp, PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(RadiographError, match="unsupported photometric interpretation"):
        read_radiograph(palette)


@pytest.mark.parametrize("dtype, lo, hi, photometric", [
    (np.uint16, 700, 3500, "MONOCHROME2"), (np.uint16, 0, 4095, "MONOCHROME1"),
    (np.int16, -1000, 2000, "MONOCHROME2"), (np.uint8, 3, 250, "MONOCHROME1")])
def test_the_display_lookup_table_equals_the_pixelwise_pipeline(dtype, lo, hi, photometric):
    """The LUT path (one lookup per stored value) against modality LUT, window and inversion
    applied to every pixel, then min-max normalised."""
    from hipdisloc.io.radiograph import _display, _display_via_lut

    rng = np.random.default_rng(0)
    values = rng.integers(lo, hi + 1, size=(64, 80)).astype(dtype)
    values[0, :2] = lo, hi
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept = 1.5, -20.0
    ds.WindowCenter, ds.WindowWidth = (lo + hi) * 0.7, (hi - lo) * 0.5  # clips both ends
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = 8 * np.dtype(dtype).itemsize
    ds.PixelRepresentation = int(np.dtype(dtype).kind == "i")
    pixelwise = np.asarray(_display(values, ds, photometric, True), dtype=np.float64)
    expected = (pixelwise - pixelwise.min()) / (pixelwise.max() - pixelwise.min())
    got = _display_via_lut(values, ds, photometric, True, Path("x.dcm"))
    assert got.dtype == np.float32 and got.shape == values.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(np.unique(got)) > 10  # not flattened by the window


def _ramp() -> np.ndarray:
    return (np.arange(64 * 48).reshape(64, 48) % 4000).astype(np.uint16)


def _raster(path: Path, fmt: str) -> Path:
    picture = Image.fromarray((np.arange(64 * 48).reshape(64, 48) % 251).astype(np.uint8))
    picture.save(path, format=fmt)
    return path


@pytest.mark.parametrize("fmt, kind", [("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff"),
                                       ("GIF", "gif"), ("BMP", "bmp")])
def test_rasters_are_typed_by_content_whatever_their_name(tmp_path, fmt, kind):
    from hipdisloc.io.file_type import file_kind

    for name in (f"right.{kind}", "wrong.dcm", "no_extension"):
        path = _raster(tmp_path / name, fmt)
        assert file_kind(path) == kind, name
        image = read_radiograph(path).image
        assert image.shape == (64, 48) and 0.0 <= image.min() < image.max() <= 1.0


def test_dicom_is_typed_by_content_with_or_without_its_preamble(tmp_path):
    from hipdisloc.io.file_type import file_kind

    reference = read_radiograph(_write_dicom(tmp_path / "r.dcm", _ramp())).image
    renamed = tmp_path / "scan.jpg"
    renamed.write_bytes((tmp_path / "r.dcm").read_bytes())
    bare = tmp_path / "bare"  # no preamble, no DICM, no file meta: a dataset alone
    ds = pydicom.dcmread(tmp_path / "r.dcm")
    del ds.file_meta
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[:2] == b"\x08\x00"  # starts at the first element
    for path in (renamed, bare):
        assert file_kind(path) == "dicom", path.name
        np.testing.assert_array_equal(read_radiograph(path).image, reference)


@pytest.mark.parametrize("content, detail", [
    (b"%PDF-1.7\n" + b"x" * 200, "the content is a PDF document"),
    (b"PK\x03\x04" + b"\x00" * 200, "the content is a ZIP archive"),
    (b'{"landmarks": [1, 2, 3]}\n', "the content is text"),
    (bytes(range(7, 250)) * 3, "neither DICOM nor PNG, JPEG, TIFF, GIF or BMP"),
])
def test_anything_else_is_not_an_image_file_and_says_what_it_is(tmp_path, content, detail):
    for name in ("file.dcm", "file.png", "file"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(RadiographError) as err:
            read_radiograph(path)
        assert err.value.reason == "not an image file" and detail in err.value.detail, name


def test_an_empty_file_says_so(tmp_path):
    for name in ("empty.dcm", "empty.png", "empty"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(RadiographError) as err:
            read_radiograph(tmp_path / name)
        assert err.value.reason == "empty file"


@pytest.mark.parametrize("tags, reason", [
    ({"Modality": "CT"}, "not a radiograph: modality CT"),
    ({"Modality": "MR"}, "not a radiograph: modality MR"),
    ({"Modality": "OT"}, "not a radiograph: modality OT"),
    ({"BodyPartExamined": "CHEST"}, "not a pelvis: body part CHEST"),
    ({"ViewPosition": "LL"}, "not an AP view: view position LL"),
    ({"Modality": "CR", "BodyPartExamined": "BECKEN", "ViewPosition": "AP"}, None),
    ({"Modality": "DX", "BodyPartExamined": "PELVIS"}, None),
    ({"Modality": ""}, None),  # blank: passes
])
def test_the_header_screen_names_what_the_object_is(tmp_path, tags, reason):
    from hipdisloc.config import HeaderScreen

    path = _write_dicom(tmp_path / "x.dcm", _ramp(), **tags)
    if reason is None:
        assert read_radiograph(path, screen=HeaderScreen()).image.shape == (64, 48)
        return
    with pytest.raises(RadiographError) as err:
        read_radiograph(path, screen=HeaderScreen())
    assert err.value.reason == reason
    read_radiograph(path)  # without a screen (the reader alone): read
    read_radiograph(path, screen=HeaderScreen(enabled=False))
    if tags.get("Modality") == "OT":
        read_radiograph(path, screen=HeaderScreen(secondary_captures=True))


def test_library_warnings_are_kept_with_the_file_not_printed(tmp_path, capfd):
    """PIL's decompression-bomb warning and pydicom's complaints go to the radiograph's
    ``warnings`` (or the error's detail), not to the console."""
    big = tmp_path / "big.png"
    Image.fromarray((np.arange(300 * 200).reshape(200, 300) % 200).astype(np.uint8)).save(big)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 300 * 200 // 2 + 1  # 60,000 pixels are now "over" the guard
    try:
        radiograph = read_radiograph(big)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert any("DecompressionBombWarning" in w for w in radiograph.warnings)
    # a truncated DICOM: pydicom warns while reading it, then it cannot be decoded
    data = _write_dicom(tmp_path / "w.dcm", _ramp()).read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) - 2000])
    with pytest.raises(RadiographError) as err:
        read_radiograph(tmp_path / "t.dcm")
    out, errors = capfd.readouterr()
    assert "Warning" not in out + errors and "pydicom" not in out + errors
    assert err.value.reason == "pixel data cannot be decoded"


def test_a_colour_picture_is_not_a_radiograph_when_screening(tmp_path):
    """A photograph or chart (colour) is refused; a grey radiograph stored as RGB (the real DDH
    DICOMs, a grey JPEG saved in RGB) is read."""
    from hipdisloc.config import HeaderScreen
    from hipdisloc.phantom.not_hips import photograph_like

    photo = tmp_path / "photo.jpg"
    Image.fromarray(photograph_like(80, 100, np.random.default_rng(0))).save(photo)
    with pytest.raises(RadiographError) as err:
        read_radiograph(photo, screen=HeaderScreen())
    assert err.value.reason == "not a radiograph: colour image"
    assert "mean saturation" in err.value.detail
    assert read_radiograph(photo).image.shape == (80, 100)  # the reader alone: luminance
    grey = tmp_path / "grey_rgb.jpg"
    Image.fromarray((np.arange(80 * 100).reshape(80, 100) % 251).astype(np.uint8)).convert(
        "RGB").save(grey)
    read_radiograph(grey, screen=HeaderScreen())
    for path in DDH_FILES[:2]:
        read_radiograph(path, screen=HeaderScreen())
