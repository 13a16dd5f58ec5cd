"""MedMNIST (v2/v3) images: a local `.npz`, or a flag name fetched from the official record.

The `.npz` holds `{train,val,test}_images` (N, H, W) or (N, H, W, C) uint8 and
`{train,val,test}_labels` shaped (N,) or (N, 1). The official splits are kept.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from medray.train.data.dataset import SPLITS, DataImportError, ImportedDataset, Split, sha256_file, tensor_column
from medray.train.data.sources import cached_or_download

# The official MedMNIST+ record on Zenodo; 28x28 files are `{flag}.npz`,
# larger sizes `{flag}_{size}.npz`.
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{filename}?download=1"

# Class names and licenses of the single-label subsets, from MedMNIST's INFO table.
MEDMNIST_INFO: dict[str, dict] = {
    "breastmnist": {"classes": ["malignant", "normal_benign"], "license": "CC BY 4.0",
                    "description": "Breast ultrasound (Al-Dhabyani et al. 2020; MedMNIST v2)",
                    "dicom": {"Modality": ["US"]}},
    "pneumoniamnist": {"classes": ["normal", "pneumonia"], "license": "CC BY 4.0",
                       "description": "Paediatric chest X-ray (Kermany et al. 2018; MedMNIST v2)",
                       "dicom": {"Modality": ["CR", "DX"]}},
    "dermamnist": {"classes": ["actinic_keratoses", "basal_cell_carcinoma", "benign_keratosis",
                               "dermatofibroma", "melanoma", "melanocytic_nevi", "vascular_lesions"],
                   "license": "CC BY-NC 4.0", "description": "Dermatoscopy (HAM10000; MedMNIST v2)"},
    "bloodmnist": {"classes": ["basophil", "eosinophil", "erythroblast", "immature_granulocytes",
                               "lymphocyte", "monocyte", "neutrophil", "platelet"],
                   "license": "CC BY 4.0", "description": "Blood cell microscopy (Acevedo et al. 2020; MedMNIST v2)"},
    "pathmnist": {"classes": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth_muscle",
                              "normal_colon_mucosa", "cancer_associated_stroma",
                              "colorectal_adenocarcinoma_epithelium"],
                  "license": "CC BY 4.0", "description": "Colon pathology (Kather et al. 2019; MedMNIST v2)"},
    "octmnist": {"classes": ["choroidal_neovascularization", "diabetic_macular_edema", "drusen", "normal"],
                 "license": "CC BY 4.0", "description": "Retinal OCT (Kermany et al. 2018; MedMNIST v2)"},
    "retinamnist": {"classes": ["grade_0", "grade_1", "grade_2", "grade_3", "grade_4"], "license": "CC BY 4.0",
                    "description": "Fundus camera, DR grading (DeepDRiD; MedMNIST v2)"},
    **{
        flag: {"classes": ["bladder", "femur_left", "femur_right", "heart", "kidney_left", "kidney_right",
                           "liver", "lung_left", "lung_right", "pancreas", "spleen"],
               "license": "CC BY 4.0", "description": f"Abdominal CT, {view} view (LiTS; MedMNIST v2)",
               "dicom": {"Modality": ["CT"]}}
        for flag, view in (("organamnist", "axial"), ("organcmnist", "coronal"), ("organsmnist", "sagittal"))
    },
}


def _resolve(source: str, size: int) -> tuple[Path, str | None, str | None]:
    """(local file, source URI, flag) for a path or a MedMNIST flag name. A local file has
    no URI: its path or name may identify a patient, so only its sha256 is recorded."""
    path = Path(source).expanduser()
    if path.suffix == ".npz" or path.exists():
        if not path.is_file():
            raise DataImportError(f"source '{source}' does not exist")
        flag = path.stem.split("_")[0].lower()
        return path, None, flag if flag in MEDMNIST_INFO else None
    flag = source.lower()
    if flag not in MEDMNIST_INFO:
        raise DataImportError(
            f"'{source}' is neither an .npz file nor a known MedMNIST flag ({', '.join(sorted(MEDMNIST_INFO))})"
        )
    filename = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    url = MEDMNIST_URL.format(filename=filename)
    return cached_or_download(filename, url), url, flag


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise DataImportError(f"'{path}' is corrupt or truncated, not a readable .npz ({error})") from None


def _split_arrays(arrays: dict[str, np.ndarray], split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    for key in (f"{split}_images", f"{split}_labels"):
        if key not in arrays:
            raise DataImportError(f"'{path}' has no array '{key}' (found: {', '.join(sorted(arrays))})")
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataImportError(
            f"'{path}': {split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, 1|3)"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataImportError(
            f"'{path}': {split}_labels has shape {labels.shape}; expected (N,) or (N, 1) "
            "(multi-label subsets such as ChestMNIST are not supported)"
        )
    if len(labels) != len(images):
        raise DataImportError(f"'{path}': {split} has {len(images)} images but {len(labels)} labels")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.min(initial=0) < 0 or images.max(initial=0) > 255:
            raise DataImportError(f"'{path}': {split}_images must hold 8-bit pixel values (0-255)")
        images = images.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataImportError(f"'{path}': {split}_labels must be whole class numbers")
        labels = labels.astype(np.int64)
    return images, labels.astype(np.int64)


MEDMNIST_SIZES = (28, 64, 128, 224)
"""The side lengths MedMNIST+ publishes every subset at."""


def import_medmnist(source: str, size: int | None = None) -> ImportedDataset:
    """A MedMNIST `.npz` file, or a flag name downloaded at `size` (default 28). With a
    file, `size`, when given, must be the file's own: the official splits are stored as
    published, never resampled."""
    if size is not None and size not in MEDMNIST_SIZES:
        raise DataImportError(f"MedMNIST images come at sizes {', '.join(map(str, MEDMNIST_SIZES))}, not {size}")
    path, uri, flag = _resolve(source, size or 28)
    arrays = _load_npz(path)
    splits = {name: _split_arrays(arrays, name, path) for name in SPLITS}
    shapes = {images.shape[1:] for images, _ in splits.values()}
    if len(shapes) != 1:
        raise DataImportError(f"'{path}': the splits' image shapes differ: {sorted(shapes)}")
    shape = list(next(iter(shapes)))
    if size is not None and shape[:2] != [size, size]:
        raise DataImportError(f"'{path}' holds {shape[0]}x{shape[1]} images, not --size {size}")
    info = MEDMNIST_INFO.get(flag or "", {})
    if info:
        classes = list(info["classes"])
    else:
        classes = [str(label) for label in np.unique(splits["train"][1])]
    known = {int(c) for c in range(len(classes))} if info else {int(c) for c in classes}
    for name, (_, labels) in splits.items():
        unknown = sorted(set(np.unique(labels).tolist()) - known)
        if unknown:
            row = int(np.flatnonzero(labels == unknown[0])[0])
            raise DataImportError(
                f"'{path}': {name}_labels row {row} holds label {unknown[0]}, which is not one of the "
                f"{len(classes)} known classes"
            )
    if not info:
        # Labels seen in train, ascending, become 0..K-1 (all labels were checked to be among them).
        values = np.asarray([int(c) for c in classes])
        splits = {name: (images, np.searchsorted(values, labels)) for name, (images, labels) in splits.items()}
    return ImportedDataset(
        modality="image",
        classes=classes,
        splits={
            name: Split(pa.table({"image": tensor_column(images)}), labels)
            for name, (images, labels) in splits.items()
        },
        # MedMNIST ships pixels only; the DICOM Modality its source images had is known
        # from the dataset's paper, so a DICOM of another modality is told apart at serving.
        schema={"column": "image", "shape": shape, "dtype": "uint8",
                **({"dicom": info["dicom"]} if "dicom" in info else {})},
        source={"kind": "medmnist", "uri": uri, "sha256": sha256_file(path), "flag": flag},
        license=info.get("license", "unknown: check the source's terms"),
        description=info.get("description", "MedMNIST-format images"),
    )


def write_resized_medmnist(source: Path, destination: Path, size: int, rows_per_split: int | None = None) -> Path:
    """`source`'s images resized to `size` x `size` (bilinear), with their labels and
    official splits, as `destination/{flag}_resized{size}.npz`: MedMNIST+'s larger files
    need a download, and a benchmark or test of a larger size runs offline on this. The
    pixels are smooth, but the bytes and compute per image are those of the size.
    `rows_per_split` keeps only the first rows of each split."""
    from PIL import Image

    path = destination / f"{source.stem.split('_')[0]}_resized{size}.npz"
    arrays = _load_npz(source)
    out = {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"][:rows_per_split], arrays[f"{split}_labels"][:rows_per_split]
        out[f"{split}_images"] = np.stack([np.asarray(Image.fromarray(image).resize((size, size),
                                                                                 Image.Resampling.BILINEAR))
                                           for image in images])
        out[f"{split}_labels"] = labels
    destination.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return path


def write_synthetic_medmnist(flag: str, path: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A stand-in `.npz` in the official file's format, for runs without the real file or a
    network: the same splits, 28x28 uint8 images and class order as `flag`, so every config
    written for it runs unchanged. Class k is a blob of its own radius in speckle noise,
    with overlap so that some cases are ambiguous, as real ones are. Not medical data."""
    classes = MEDMNIST_INFO[flag]["classes"]
    sizes = sizes or {"train": 300, "val": 60, "test": 100}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    arrays = {}
    for split in SPLITS:
        labels = rng.integers(0, len(classes), sizes[split])
        radius = 3.5 + 3.0 * labels + rng.normal(0, 1.0, len(labels))
        centre = 14 + rng.normal(0, 2, (len(labels), 2))
        blobs = np.exp(-((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2)
                       / (2 * radius[:, None, None] ** 2))
        images = np.clip(blobs + rng.normal(0, 0.25, blobs.shape), 0, 1)
        arrays[f"{split}_images"] = (images * 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)  # (N, 1), as MedMNIST ships them
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
