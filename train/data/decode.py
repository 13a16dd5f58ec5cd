"""The one decoder of image files, shared by the folder importer and by serving.

PNG, JPEG or DICOM bytes become a (size, size) grey or (size, size, 3) RGB uint8 array;
any other format (BMP, GIF, TIFF, WEBP, ...) is refused, whatever its file name says.
Everything a file could make the decoder spend is bounded from its header before any
pixel is decoded: pixels per frame, pixels over all frames, and the file's bytes
(`DecodeLimits`). Third-party decoders raise a wide, version-dependent range of
exceptions on malformed data, so every failure inside them becomes `ImageRefused`: the
one error callers handle, whose message says what is wrong and never what the file holds.

DICOM: rescale and VOI windowing are applied, MONOCHROME1 is inverted, the middle frame
of a grey multi-frame series is kept, and no tag (identifying or otherwise) leaves here:
decoders' warnings are suppressed, and pydicom's log records (which quote invalid element
values, patient names among them) are kept from the process's log handlers.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

PIXEL_FACTOR = 64
"""A file may hold this many times the pixels the model (or the import) takes..."""
PIXEL_FLOOR = 4096 * 4096
"""...and always at least this many, so full-field mammograms (about 4096 x 3328) pass."""
VOLUME_FACTOR = 8
"""A DICOM may hold this many frames' worth of pixels over all frames and samples."""
BYTES_PER_SAMPLE = 2
"""File byte cap per volume sample: an uncompressed 16-bit volume at the volume cap fits."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class ImageRefused(ValueError):
    """A file the decoder will not turn into pixels; the message completes a sentence
    that starts with the file's name or field ("file is corrupt or not an image")."""


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int
    """Width x height of an image, Rows x Columns of a DICOM frame."""
    max_volume: int
    """Rows x Columns x Frames x SamplesPerPixel of a DICOM."""
    max_bytes: int
    """Size of the encoded file."""

    @classmethod
    def for_input(cls, height: int, width: int) -> "DecodeLimits":
        """Limits for files that become an input of `height` x `width` pixels."""
        pixels = max(PIXEL_FACTOR * height * width, PIXEL_FLOOR)
        volume = VOLUME_FACTOR * pixels
        return cls(pixels, volume, BYTES_PER_SAMPLE * volume)


def image_format(data: bytes) -> str | None:
    """"DICOM", "PNG" or "JPEG" from the file's magic bytes; None for anything else."""
    if data[128:132] == b"DICM":  # checked first: the 128-byte preamble before it is free-form
        return "DICOM"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    return None


RESIZE_MODES = ("stretch", "pad", "crop")
"""How an image that is not square becomes (size, size): `stretch` to the square (what
MedMNIST's square images need, and every dataset imported before the modes existed);
`pad`: the whole image, its aspect ratio kept, centred on black; `crop`: its aspect
ratio kept, the centre square."""


def decode_image(data: bytes, size: int, mode: str, limits: DecodeLimits | None = None,
                 resize: str = "stretch") -> np.ndarray:
    """Encoded PNG, JPEG or DICOM bytes as a (size, size) "L" or (size, size, 3) "RGB"
    uint8 array, resized bilinearly (`resize`: one of RESIZE_MODES). Raises
    `ImageRefused` and nothing else."""
    limits = limits or DecodeLimits.for_input(size, size)
    if not isinstance(data, (bytes, bytearray)):
        raise ImageRefused("is not a file's bytes")
    if len(data) > limits.max_bytes:
        raise ImageRefused(f"is larger than the {limits.max_bytes}-byte limit")
    kind = image_format(data)
    if kind is None:
        raise ImageRefused("is corrupt or not an image (only PNG, JPEG and DICOM files are taken)")
    # Decoders' warnings can quote header text (DICOM tags hold patient names): never emit them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _dicom_image(bytes(data), limits) if kind == "DICOM" else _open_checked(bytes(data), kind, limits)
        try:
            return np.asarray(_square(image.convert(mode), size, resize), dtype=np.uint8)
        except Exception:
            raise ImageRefused("is corrupt or not an image") from None


def _square(image: Image.Image, size: int, resize: str) -> Image.Image:
    width, height = image.size
    if resize == "stretch" or width == height:
        return image.resize((size, size), Image.Resampling.BILINEAR)
    longest, shortest = max(width, height), min(width, height)
    scale = size / (longest if resize == "pad" else shortest)
    scaled = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    if resize == "crop":
        left, top = (scaled.width - size) // 2, (scaled.height - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(scaled, ((size - scaled.width) // 2, (size - scaled.height) // 2))
    return canvas


def _open_checked(data: bytes, kind: str, limits: DecodeLimits) -> Image.Image:
    """A PNG or JPEG opened, its size checked from the header, then its pixels loaded."""
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])  # reads the header only
    except Image.DecompressionBombError:
        raise ImageRefused(f"is larger than the {limits.max_pixels}-pixel limit") from None
    except Exception:
        raise ImageRefused("is corrupt or not an image") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRefused(f"is larger than the {limits.max_pixels}-pixel limit")
    try:
        image.load()
    except Exception:
        raise ImageRefused("is corrupt or not an image") from None
    return image


# DICOM -------------------------------------------------------------------------------
def _taken_syntaxes() -> dict[str, str]:
    """Transfer syntax -> how its frames are bounded before decoding. Deflated syntax
    is left out: pydicom inflates the whole dataset before any header check could run."""
    from pydicom import uid

    return {uid.ImplicitVRLittleEndian: "native", uid.ExplicitVRLittleEndian: "native",
            uid.ExplicitVRBigEndian: "native", uid.RLELossless: "rle",
            uid.JPEGBaseline8Bit: "pillow", uid.JPEGExtended12Bit: "pillow", uid.JPEGLossless: "pillow",
            uid.JPEGLosslessSV1: "pillow", uid.JPEG2000Lossless: "pillow", uid.JPEG2000: "pillow"}


def _keep_pydicom_out_of_logs() -> None:
    """pydicom is used only here, and the refusal says what went wrong; its own records
    would put element values (patient names) and decoder tracebacks into serving logs."""
    logger = logging.getLogger("pydicom")
    if logger.propagate:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _dicom_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    _keep_pydicom_out_of_logs()
    try:
        return _checked_dicom_image(data, limits)
    except ImageRefused:
        raise
    except Exception:  # pydicom converts elements lazily: any access may meet a malformed one
        raise ImageRefused("is not a readable DICOM image") from None


def _checked_dicom_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    source = io.BytesIO(data)
    read_preamble(source, False)
    syntax = str(_read_file_meta_info(source).get("TransferSyntaxUID", ""))  # group 2 only: nothing inflated yet
    if not syntax:
        raise ImageRefused("is not a readable DICOM image")
    handling = _taken_syntaxes().get(syntax)
    if handling is None:
        raise ImageRefused("uses a DICOM transfer syntax medray does not decode (deflated, video or unknown); "
                           "send uncompressed, RLE, JPEG or JPEG 2000 DICOM")
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    rows, columns = _positive(header, "Rows", None), _positive(header, "Columns", None)
    frames, samples = _positive(header, "NumberOfFrames", 1), _positive(header, "SamplesPerPixel", 1)
    if rows * columns > limits.max_pixels:
        raise ImageRefused(f"has DICOM frames larger than the {limits.max_pixels}-pixel limit")
    if rows * columns * frames * samples > limits.max_volume:
        raise ImageRefused(f"holds more than the {limits.max_volume} DICOM pixels (all frames) taken")
    if samples not in (1, 3):
        raise ImageRefused("has a DICOM SamplesPerPixel other than 1 (grey) or 3 (colour)")
    if samples == 3 and frames > 1:
        # A colour series is a cine loop (ultrasound, endoscopy) where no one frame stands
        # for the study, unlike the middle slice of a grey CT or MR volume.
        raise ImageRefused("is a multi-frame colour DICOM (a cine loop); send the one frame to classify")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in header and not _finite_number(header.get(keyword)):
            raise ImageRefused(f"has a DICOM {keyword} that is not a finite number")
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise ImageRefused("holds no DICOM pixel data")
    index = frames // 2  # the middle slice of a volume; 0 for a single frame
    if handling != "native":
        _check_frame(ds, index, frames, handling, rows, columns, samples)
    try:
        ds.pixel_array_options(index=index if frames > 1 else None)
        pixels = np.asarray(ds.pixel_array)
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        values = np.asarray(apply_voi_lut(apply_modality_lut(pixels, ds), ds), dtype=np.float64)
    except Exception:
        raise ImageRefused("has DICOM pixel data that cannot be decoded") from None
    if values.shape != ((rows, columns) if samples == 1 else (rows, columns, 3)):
        raise ImageRefused("has DICOM pixel data that does not match its Rows and Columns")
    low, high = float(values.min()), float(values.max())
    if not math.isfinite(high - low):  # NaN anywhere, or a span past float64
        raise ImageRefused("has DICOM pixel values that are not finite after rescale and windowing")
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(scaled.round().astype(np.uint8))


def _positive(header: Any, keyword: str, default: int | None) -> int:
    value = header.get(keyword, default)
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageRefused(f"has no valid DICOM {keyword}") from None
    if number < 1:
        raise ImageRefused(f"has no valid DICOM {keyword}")
    return number


def _finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _check_frame(ds: Any, index: int, frames: int, handling: str, rows: int, columns: int, samples: int) -> None:
    """Bound a compressed frame's decoded size from its own header, which may disagree
    with the DICOM's Rows and Columns, before the codec allocates anything."""
    from pydicom.encaps import get_frame

    try:
        extended = ds.get("ExtendedOffsetTable")
        lengths = ds.get("ExtendedOffsetTableLengths")
        offsets = (extended, lengths) if extended is not None and lengths is not None else None
        frame = get_frame(ds.PixelData, index, number_of_frames=frames, extended_offsets=offsets)
    except Exception:
        raise ImageRefused("has DICOM pixel data that cannot be decoded") from None
    if handling == "rle":
        bytes_allocated = max(1, int(ds.get("BitsAllocated", 8)) // 8)
        if not _rle_fits(frame, rows * columns, samples * bytes_allocated):
            raise ImageRefused("has DICOM pixel data that does not match its Rows and Columns")
        return
    try:
        with Image.open(io.BytesIO(frame)) as codestream:
            size = codestream.size
    except Exception:
        raise ImageRefused("has DICOM pixel data that cannot be decoded") from None
    if size != (columns, rows):
        raise ImageRefused("has DICOM pixel data that does not match its Rows and Columns")


def _rle_fits(frame: bytes, segment_length: int, segments: int) -> bool:
    """Whether each DICOM RLE segment (PS3.5 Annex G) decodes to at most
    `segment_length` bytes. Scans run headers only, stopping as soon as one segment
    overflows, so a segment that would inflate 64-fold costs next to nothing."""
    if len(frame) < 64:
        return False
    count, *offsets = struct.unpack("<16L", frame[:64])
    if count != segments:
        return False
    bounds = [*offsets[:count], len(frame)]
    for start, end in zip(bounds, bounds[1:]):
        if not 64 <= start <= end <= len(frame):
            return False
        produced, position = 0, start
        while position < end and produced <= segment_length:
            header = frame[position]
            if header < 128:  # copy the next header + 1 bytes literally
                produced += header + 1
                position += header + 2
            elif header > 128:  # repeat the next byte 257 - header times
                produced += 257 - header
                position += 2
            else:
                position += 1
        if produced > segment_length:
            return False
    return True


# DICOM metadata: what kind of image, never whose ---------------------------------------
DICOM_FIELDS = ("Modality", "PhotometricInterpretation", "BodyPartExamined", "PixelSpacing")
"""The tags compared between the training set and a served file; none identifies anyone."""
SPACING_FACTOR = 2.0
"""A served pixel spacing more than this factor outside the training set's range differs."""


def dicom_metadata(data: bytes) -> dict[str, Any]:
    """A DICOM's `DICOM_FIELDS` that it carries, normalised: Modality and
    BodyPartExamined upper-case, PhotometricInterpretation as MONOCHROME (1 and 2 decode
    alike) or COLOUR, PixelSpacing as the mean of its two values in mm. {} for anything
    that is not a readable DICOM header."""
    if not isinstance(data, (bytes, bytearray)) or image_format(bytes(data)) != "DICOM":
        return {}
    import pydicom

    _keep_pydicom_out_of_logs()
    found: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            header = pydicom.dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True)
            for keyword in ("Modality", "BodyPartExamined"):
                value = str(header.get(keyword) or "").strip().upper()
                if value:
                    found[keyword] = value
            photometric = str(header.get("PhotometricInterpretation") or "").strip().upper()
            if photometric:
                found["PhotometricInterpretation"] = "MONOCHROME" if photometric.startswith("MONOCHROME") else "COLOUR"
            spacing = header.get("PixelSpacing")
            if spacing is not None:
                values = [float(v) for v in spacing]
                if values and all(math.isfinite(v) and v > 0 for v in values):
                    found["PixelSpacing"] = sum(values) / len(values)
        except Exception:  # a header pydicom cannot read carries nothing to compare
            return {}
    return found


def summarize_dicom_metadata(files: list[dict[str, Any]]) -> dict[str, Any]:
    """What a training set's DICOMs held (for its manifest): per field, the values seen
    (PixelSpacing: [min, max]), with the count of DICOM files. {} when there were none."""
    files = [f for f in files if f]
    if not files:
        return {}
    summary: dict[str, Any] = {"files": len(files)}
    for keyword in DICOM_FIELDS:
        values = [f[keyword] for f in files if keyword in f]
        if values:
            summary[keyword] = [min(values), max(values)] if keyword == "PixelSpacing" else sorted(set(values))
    return summary


def metadata_differences(training: dict[str, Any] | None, served: dict[str, Any]) -> list[str]:
    """The fields that both record and that differ: a value the training set never held,
    or a pixel spacing over SPACING_FACTOR outside its range. Field names only."""
    differing = []
    for keyword in DICOM_FIELDS:
        if not training or keyword not in training or keyword not in served:
            continue
        if keyword == "PixelSpacing":
            low, high = training[keyword]
            if not low / SPACING_FACTOR <= served[keyword] <= high * SPACING_FACTOR:
                differing.append(keyword)
        elif served[keyword] not in training[keyword]:
            differing.append(keyword)
    return differing
