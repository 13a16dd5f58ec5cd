"""BreastMNIST upscaled to a larger side, for the benchmarks that need hospital-sized
images offline (MedMNIST+ publishes the real 224x224 files on Zenodo, which cannot be
reached here). The 780 images keep their official splits and labels; each is resized
with bilinear interpolation, so the pixels are smooth, but the sizes, bytes and compute
per image are those of a 224x224 dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 224


def upscaled_image(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def write_upscaled_breastmnist(shared: Path, destination: Path, size: int = SIZE) -> Path:
    """`destination/breastmnist_upscaled{size}.npz` in MedMNIST's layout (the name keeps
    the `breastmnist` flag, so the importer knows its class names)."""
    path = destination / f"breastmnist_upscaled{size}.npz"
    if path.is_file():
        return path
    arrays = np.load(shared / "breastmnist.npz")
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = np.stack([upscaled_image(image, size) for image in arrays[f"{split}_images"]])
        out[f"{split}_labels"] = arrays[f"{split}_labels"]
    destination.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return path
