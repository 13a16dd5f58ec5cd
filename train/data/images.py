"""Image folders: one sub-folder per class holding PNG, JPEG or DICOM files.

Only pixels are kept. DICOM files are read with pydicom (rescale and VOI windowing
applied, MONOCHROME1 inverted) and none of their tags, identifying or otherwise, and no
file names (which often carry patient names) are copied into the dataset.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from train.data.dataset import DataImportError, ImportedDataset, Split, sha256_files, tensor_column
from train.data.splits import three_way_split

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as handle:  # extension-less DICOM: "DICM" at byte 128
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _dicom_pixels(source: Path | BinaryIO, name: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(source)
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError, KeyError) as error:
        raise DataImportError(f"{name} is not a readable DICOM image ({type(error).__name__})") from None
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        pixels = pixels[pixels.shape[0] // 2]  # a multi-frame series: keep the middle slice
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.round().astype(np.uint8)


def _decode(source: Path | BinaryIO, dicom: bool, size: int, mode: str, name: str) -> np.ndarray:
    if dicom:
        image = Image.fromarray(_dicom_pixels(source, name))
    else:
        try:
            image = Image.open(source)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataImportError(f"{name} is corrupt or not an image ({type(error).__name__})") from None
    image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_image(path: Path, size: int, mode: str) -> np.ndarray:
    """One file as a (size, size) grey or (size, size, 3) RGB uint8 array."""
    return _decode(path, _is_dicom(path), size, mode, f"'{path}'")


def decode_image(data: bytes, size: int, mode: str, name: str = "the image") -> np.ndarray:
    """Encoded PNG, JPEG or DICOM bytes (e.g. an upload) as `read_image` returns a file.
    Errors name `name`, never the content."""
    dicom = data[128:132] == b"DICM"
    return _decode(io.BytesIO(data), dicom, size, mode, name)


def _files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataImportError(f"'{folder}' needs one sub-folder per class (at least two); found {len(classes)}")
    files = {}
    for class_dir in classes:
        found = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and not p.name.startswith(".")
            and (p.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES or not p.suffix)
        )
        if not found:
            raise DataImportError(f"class folder '{class_dir}' holds no PNG, JPEG or DICOM files")
        files[class_dir.name] = found
    return files


def import_image_folder(
    source: str,
    size: int = 64,
    grayscale: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImportedDataset:
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataImportError(f"'{source}' is not a folder of class sub-folders")
    files = _files(folder)
    classes = list(files)
    paths = [path for name in classes for path in files[name]]
    labels = np.asarray([i for i, name in enumerate(classes) for _ in files[name]], dtype=np.int64)
    mode = "L" if grayscale else "RGB"
    images = np.stack([
        read_image(path, size, mode) for path in tqdm(paths, desc="reading images", unit="img", leave=False)
    ])
    splits = three_way_split(labels, val_fraction, test_fraction, seed)
    return ImportedDataset(
        modality="image",
        classes=classes,
        splits={name: Split(pa.table({"image": tensor_column(images[rows])}), labels[rows])
                for name, rows in splits.items()},
        schema={"column": "image", "shape": list(images.shape[1:]), "dtype": "uint8"},
        source={
            "kind": "images", "uri": str(folder.resolve()),
            # Per-file checksums would record file names; keep only the combined one.
            "sha256": sha256_files(paths, root=folder)["sha256"],
            "files": len(paths),
            "dicom_files": int(sum(_is_dicom(p) for p in paths)),
            "options": {"size": size, "grayscale": grayscale, "val_fraction": val_fraction,
                        "test_fraction": test_fraction, "seed": seed},
        },
        license="as stated by the data owner (recorded at import with --license)",
        description=f"Image folder {folder.name}: {len(paths)} images in {len(classes)} classes",
    )
