"""Image folders: one sub-folder per class holding PNG, JPEG or DICOM files.

Only pixels are kept. Files go through the bounded decoder serving uses
(`train/data/decode.py`: PNG, JPEG or DICOM told by content, not by suffix; DICOM
rescale and VOI windowing applied, MONOCHROME1 inverted). No identifying DICOM tag and
no file name (which often carries a patient's name) is copied into the dataset or named
in errors; the schema records only what kind of images the DICOMs were (Modality,
PhotometricInterpretation, BodyPartExamined, pixel spacing: `decode.DICOM_FIELDS`), which
serving compares with a DICOM it is sent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from medray.train.data.dataset import DataImportError, ImportedDataset, Split, sha256_files, tensor_column
from medray.train.data.decode import DecodeLimits, ImageRefused, decode_image, dicom_metadata, summarize_dicom_metadata
from medray.train.data.splits import three_way_split

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


def read_image(path: Path, size: int, mode: str, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One file as a (size, size) grey or (size, size, 3) RGB uint8 array, through the
    decoder serving uses, and its `dicom_metadata` ({} unless a DICOM) from the same
    bytes, so each file is read once. Errors name `where` (a position), never the file's name."""
    limits = DecodeLimits.for_input(size, size)
    try:
        too_large = path.stat().st_size > limits.max_bytes
        data = b"" if too_large else path.read_bytes()
    except OSError:
        raise DataImportError(f"{where} cannot be read") from None
    if too_large:
        raise DataImportError(f"{where} is larger than the {limits.max_bytes}-byte limit")
    try:
        pixels = decode_image(data, size, mode, limits)
    except ImageRefused as refused:
        raise DataImportError(f"{where} {refused}") from None
    return pixels, dicom_metadata(data)


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
    # A file is named by its class folder and its place in name order: file names often
    # carry patient names, and errors reach logs.
    places = [f"file {i + 1} of {len(files[name])} (in path order) in class folder '{name}'"
              for name in classes for i in range(len(files[name]))]
    read = [read_image(path, size, mode, where)
            for path, where in tqdm(list(zip(paths, places)), desc="reading images", unit="img", leave=False)]
    images = np.stack([pixels for pixels, _ in read])
    splits = three_way_split(labels, val_fraction, test_fraction, seed)
    is_dicom = [_is_dicom(path) for path in paths]
    # What kind of images the DICOMs are (Modality, photometry, body part, pixel spacing),
    # for serving to compare a DICOM it is sent with; no identifying tag is read.
    dicom = summarize_dicom_metadata([metadata for (_, metadata), dicom in zip(read, is_dicom) if dicom])
    return ImportedDataset(
        modality="image",
        classes=classes,
        splits={name: Split(pa.table({"image": tensor_column(images[rows])}), labels[rows])
                for name, rows in splits.items()},
        schema={"column": "image", "shape": list(images.shape[1:]), "dtype": "uint8",
                **({"dicom": dicom} if dicom else {})},
        source={
            "kind": "images", "uri": str(folder.resolve()),
            # Per-file checksums would record file names; keep only the combined one.
            "sha256": sha256_files(paths, root=folder)["sha256"],
            "files": len(paths),
            "dicom_files": int(sum(is_dicom)),
            "options": {"size": size, "grayscale": grayscale, "val_fraction": val_fraction,
                        "test_fraction": test_fraction, "seed": seed},
        },
        license="as stated by the data owner (recorded at import with --license)",
        description=f"Image folder: {len(paths)} images in {len(classes)} classes",
    )
