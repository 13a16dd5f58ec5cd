"""Hostile and ordinary image files, built in the test (no downloaded test files): DICOMs
made with pydicom's own Dataset, and PNGs written chunk by chunk so a header can claim
far more pixels than the test ever holds in memory. Shared by the decoder and serving tests."""

from __future__ import annotations

import functools
import io
import struct
import tracemalloc
import zlib

import numpy as np
from PIL import Image


def dicom_bytes(pixels: np.ndarray | None = None, *, syntax=None, pixel_data: bytes | None = None,
                rows: int | None = None, columns: int | None = None, frames: int = 1, samples: int = 1,
                **tags) -> bytes:
    """A DICOM file. `pixels` (rows, cols), (frames, rows, cols) or (rows, cols, 3) uint8;
    or raw `pixel_data` with the header's `rows`/`columns` given."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    syntax = syntax or ExplicitVRLittleEndian
    if pixels is not None:
        pixels = np.asarray(pixels, dtype=np.uint8)
        if samples == 3:
            rows, columns = pixels.shape[-3:-1]
        else:
            rows, columns = pixels.shape[-2:]
        pixel_data = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-12345"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_data
    if syntax.is_compressed:
        ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encapsulated(*frames: bytes) -> bytes:
    from pydicom.encaps import encapsulate

    return encapsulate(list(frames))


def rle_frame(segments: list[bytes]) -> bytes:
    """A DICOM RLE frame (PS3.5 Annex G): a 64-byte header of segment offsets, then the segments."""
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    header = struct.pack("<16L", len(segments), *offsets, *[0] * (15 - len(segments)))
    return header + b"".join(segments)


def deflated_dicom(inflated_bytes: int) -> bytes:
    """File meta saying Deflated Explicit VR Little Endian, then a deflate stream that
    inflates to `inflated_bytes` (the dataset a naive reader would inflate whole)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_file_meta_info(out, meta)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # (7FE0,0010) OB with a 32-bit length, then zeros: pixel data of the stated length.
    body = [deflate.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes))]
    chunk = bytes(1 << 20)
    for _ in range(inflated_bytes // len(chunk)):
        body.append(deflate.compress(chunk))
    body.append(deflate.flush())
    return b"\0" * 128 + b"DICM" + out.getvalue() + b"".join(body)


@functools.cache
def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG of width x height zero pixels: a few KB per hundred million pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">L", len(data)) + kind + data + struct.pack(">L", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    rows_per_block = max(1, (1 << 20) // len(row))
    idat, left = [], height
    while left:
        count = min(left, rows_per_block)
        idat.append(deflate.compress(row * count))
        left -= count
    idat.append(deflate.flush())
    header = struct.pack(">LLBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def encoded(image: np.ndarray, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format, **options)
    return buffer.getvalue()


def peak_bytes(call) -> int:
    """The peak Python memory `call()` allocated: what a decoder spent on a hostile file."""
    tracemalloc.start()
    try:
        call()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak
