"""The one image decoder (train/data/decode.py): the formats it takes decode to the
right pixels; everything hostile is refused with ImageRefused, from the header, before
the pixels cost anything; arbitrary bytes never raise anything else."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import uid

from support.hostile_files import deflated_dicom, dicom_bytes, encapsulated, encoded, png_bomb, rle_frame, peak_bytes
from medray.train.data.decode import PIXEL_FLOOR, DecodeLimits, ImageRefused, decode_image

RNG = np.random.default_rng(7)
IMAGE = RNG.integers(0, 256, (20, 20), dtype=np.uint8)


def pillow_reference(data: bytes, size: int, mode: str = "L") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode).resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_png_and_jpeg_decode_as_pillow_does(format):
    data = encoded(IMAGE, format)
    np.testing.assert_array_equal(decode_image(data, 8, "L"), pillow_reference(data, 8))
    rgb = decode_image(data, 8, "RGB")
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("format, options", [
    ("BMP", {}), ("GIF", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("ICO", {}), ("PPM", {}), ("TGA", {}),
])
def test_formats_the_api_does_not_document_are_refused(format, options):
    with pytest.raises(ImageRefused, match="only PNG, JPEG and DICOM files are taken"):
        decode_image(encoded(IMAGE, format, **options), 8, "L")


def test_a_png_bomb_is_refused_from_its_header():
    bomb = png_bomb(14000, 14000)  # 196 M pixels in a few tens of KB
    assert len(bomb) < 100_000
    with pytest.raises(ImageRefused, match="pixel limit"):
        decode_image(bomb, 28, "L")
    # Under Pillow's own bomb threshold, the model-derived cap still refuses it, cheaply.
    over_cap = png_bomb(5000, 5000)
    limits = DecodeLimits.for_input(28, 28)
    assert limits.max_pixels == PIXEL_FLOOR < 5000 * 5000 < Image.MAX_IMAGE_PIXELS
    assert peak_bytes(lambda: pytest.raises(ImageRefused, decode_image, over_cap, 28, "L", limits)) < 5_000_000
    assert DecodeLimits.for_input(1024, 1024).max_pixels == 64 * 1024 * 1024


def test_dicom_pixels_rescale_window_and_monochrome1():
    pixels = RNG.integers(0, 200, (16, 16), dtype=np.uint8)
    plain = decode_image(dicom_bytes(pixels), 16, "L")
    expected = np.round((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(plain, expected)
    inverted = decode_image(dicom_bytes(pixels, PhotometricInterpretation="MONOCHROME1"), 16, "L")
    np.testing.assert_array_equal(inverted, 255 - expected)
    # A window narrower than the data saturates: values above its top come out white.
    windowed = decode_image(dicom_bytes(pixels, WindowCenter=50, WindowWidth=20), 16, "L")
    assert (windowed[pixels > 70] == 255).all() and (windowed[pixels < 30] == 0).all()


def test_compressed_and_multi_frame_dicoms_decode():
    from pydicom import dcmread

    pixels = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255  # full range: scaling leaves values as they are
    ds = dcmread(io.BytesIO(dicom_bytes(pixels)))
    ds.compress(uid.RLELossless)
    rle = io.BytesIO()
    ds.save_as(rle)
    np.testing.assert_array_equal(decode_image(rle.getvalue(), 16, "L"), pixels)
    j2k = encoded(pixels, "JPEG2000", irreversible=False, no_jp2=True)
    lossless = dicom_bytes(syntax=uid.JPEG2000Lossless, pixel_data=encapsulated(j2k), rows=16, columns=16)
    np.testing.assert_array_equal(decode_image(lossless, 16, "L"), pixels)
    # A grey volume: the middle slice is kept.
    volume = np.stack([np.roll(pixels, k, axis=1) for k in range(5)])
    np.testing.assert_array_equal(decode_image(dicom_bytes(volume, frames=5), 16, "L"), volume[2])


@pytest.mark.parametrize("case, message", [
    ("deflated", "transfer syntax medray does not decode"),
    ("multi_frame_rgb", "multi-frame colour DICOM"),
    ("junk_jpeg2000", "cannot be decoded"),
    ("junk_rle", "does not match its Rows and Columns"),
    ("rle_bomb", "does not match its Rows and Columns"),
    ("j2k_larger_than_header", "does not match its Rows and Columns"),
    ("nan_slope", "RescaleSlope that is not a finite number"),
    ("nan_window", "not finite after rescale and windowing"),
    ("huge_rows_columns", "frames larger than the 16777216-pixel limit"),
    ("too_many_frames", "DICOM pixels \\(all frames\\)"),
    ("four_samples", "SamplesPerPixel"),
    ("no_pixels", "no DICOM pixel data"),
    ("garbage_after_dicm", "not a readable DICOM image"),
])
def test_hostile_dicoms_are_refused_before_their_pixels_cost_anything(case, message):
    pixels = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    big_j2k = encoded(np.zeros((64, 64), np.uint8), "JPEG2000", no_jp2=True)
    files = {
        "deflated": lambda: deflated_dicom(16 << 20),
        "multi_frame_rgb": lambda: dicom_bytes(RNG.integers(0, 256, (2, 8, 8, 3)), frames=2, samples=3),
        "junk_jpeg2000": lambda: dicom_bytes(syntax=uid.JPEG2000Lossless, rows=16, columns=16,
                                             pixel_data=encapsulated(b"\xff\x4f\xff\x51" + b"junk" * 40)),
        "junk_rle": lambda: dicom_bytes(syntax=uid.RLELossless, rows=16, columns=16,
                                        pixel_data=encapsulated(b"\x01\x00\x00\x00" + b"junk" * 40)),
        # Each two bytes claim 128 zeros: 6.4 MB from 100 KB, for a 256-byte frame.
        "rle_bomb": lambda: dicom_bytes(syntax=uid.RLELossless, rows=16, columns=16,
                                        pixel_data=encapsulated(rle_frame([b"\x81\x00" * 50_000]))),
        "j2k_larger_than_header": lambda: dicom_bytes(syntax=uid.JPEG2000, rows=16, columns=16,
                                                      pixel_data=encapsulated(big_j2k)),
        "nan_slope": lambda: dicom_bytes(pixels, RescaleSlope="NaN", RescaleIntercept="0"),
        "nan_window": lambda: dicom_bytes(pixels, WindowCenter="NaN", WindowWidth="NaN"),
        "huge_rows_columns": lambda: dicom_bytes(pixel_data=b"\0" * 64, rows=60000, columns=60000),
        "too_many_frames": lambda: dicom_bytes(pixel_data=b"\0" * 64, rows=4096, columns=4096, frames=9),
        "four_samples": lambda: dicom_bytes(pixel_data=b"\0" * 1024, rows=16, columns=16, samples=4),
        "no_pixels": lambda: dicom_bytes(pixels)[:-(16 * 16 + 12)],
        "garbage_after_dicm": lambda: b"\0" * 128 + b"DICM" + b"\1" * 64,
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid values on purpose
        data = files[case]()
    peak = peak_bytes(lambda: pytest.raises(ImageRefused, decode_image, data, 28, "L"))
    assert peak < 2 * len(data) + 8_000_000, peak  # nothing inflated: a few copies of the file at most
    with pytest.raises(ImageRefused, match=message) as refused:
        decode_image(data, 28, "L")
    assert "Doe" not in str(refused.value) and "PID" not in str(refused.value)


def test_files_over_the_byte_cap_are_refused_unread():
    limits = DecodeLimits(max_pixels=100, max_volume=100, max_bytes=1000)
    with pytest.raises(ImageRefused, match="1000-byte limit"):
        decode_image(encoded(IMAGE, "PNG") + b"\0" * 1000, 8, "L", limits)


# Property: arbitrary bytes ----------------------------------------------------------
def _valid_files() -> list[bytes]:
    from pydicom import dcmread

    pixels = RNG.integers(0, 256, (12, 12), dtype=np.uint8)
    ds = dcmread(io.BytesIO(dicom_bytes(pixels)))
    ds.compress(uid.RLELossless)
    rle = io.BytesIO()
    ds.save_as(rle)
    return [encoded(pixels, "PNG"), encoded(pixels, "JPEG"), dicom_bytes(pixels), rle.getvalue(),
            dicom_bytes(syntax=uid.JPEG2000Lossless, rows=12, columns=12,
                        pixel_data=encapsulated(encoded(pixels, "JPEG2000", irreversible=False, no_jp2=True)))]


VALID = _valid_files()


@st.composite
def damaged(draw) -> bytes:
    """A valid file with a few bytes overwritten, a slice cut out, or truncated."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        data[at:at + len(patch)] = patch
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + data[cut + draw(st.integers(0, 64)):]
    return bytes(data)


prefixed = st.builds(lambda head, tail: head + tail,
                     st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM"]),
                     st.binary(max_size=512))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=512), prefixed, damaged()), mode=st.sampled_from(["L", "RGB"]))
def test_arbitrary_bytes_decode_or_raise_image_refused(data, mode):
    try:
        image = decode_image(data, 8, mode)
    except ImageRefused:
        return
    assert image.dtype == np.uint8 and image.shape == ((8, 8) if mode == "L" else (8, 8, 3))


# The importer goes through the same decoder ---------------------------------------
@pytest.mark.parametrize("hostile, message", [
    (lambda: encoded(IMAGE, "GIF"), "only PNG, JPEG and DICOM"),
    (lambda: deflated_dicom(1 << 20), "transfer syntax medray does not decode"),
    (lambda: dicom_bytes(RNG.integers(0, 256, (2, 8, 8, 3)), frames=2, samples=3), "multi-frame colour DICOM"),
    (lambda: png_bomb(5000, 5000), "pixel limit"),
])
def test_a_hostile_file_on_import_is_named_by_place_not_by_name(tmp_path, hostile, message, ray_session):
    from medray.cluster.storage import Storage
    from medray.train.data.dataset import DataImportError
    from medray.train.data.importers import ImportOptions, ImportRequest, import_dataset

    for name in ("benign", "malignant"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):  # enough for a stratified three-way split, made before any file is read
            (tmp_path / "images" / name / f"img{i}.png").write_bytes(encoded(IMAGE, "PNG"))
    (tmp_path / "images" / "malignant" / "Doe_Jane_MRN1234.dcm").write_bytes(hostile())
    with pytest.raises(DataImportError, match=message) as error:
        import_dataset(Storage(f"file://{tmp_path / 'store'}"), ImportRequest(
            kind="images", source=str(tmp_path / "images"), name="hostile", options=ImportOptions(image_size=16)))
    assert "file 1 of 7 (in key order) in class folder 'malignant' " in str(error.value)
    assert "Doe" not in str(error.value) and "MRN" not in str(error.value)


def test_a_picture_that_is_not_square_is_padded_or_cropped_keeping_its_aspect_ratio():
    wide = np.full((10, 40), 200, dtype=np.uint8)  # 4:1, rows x columns
    wide[:, :20] = 50  # left half dark
    data = encoded(wide, "PNG")
    padded = decode_image(data, 8, "L", resize="pad")
    # 40x10 scaled to 8x2, centred: rows 3-4 hold the picture, the rest is black.
    assert (padded[:3] == 0).all() and (padded[5:] == 0).all()
    assert padded[3:5, :3].max() < 100 and padded[3:5, 5:].min() > 150
    cropped = decode_image(data, 8, "L", resize="crop")
    # Scaled to 32x8, the centre 8x8 spans columns 12-19: the dark half's edge is at 16.
    assert cropped[:, :3].max() < 100 and cropped[:, 5:].min() > 150 and (cropped > 0).all()
    np.testing.assert_array_equal(decode_image(data, 8, "L"), pillow_reference(data, 8))  # stretch, as before
