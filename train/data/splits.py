"""Seeded, stratified splits; with a group column, no group ever spans two splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medray.train.data.dataset import DataImportError


def _check_fraction(name: str, fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise DataImportError(f"{name} must be between 0 and 1 (exclusive); got {fraction}")


def _holdout(labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None, what: str):
    """Indices (kept, held out) with `fraction` of rows held out, stratified by label."""
    indices = np.arange(len(labels))
    if groups is None:
        try:
            return train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
        except ValueError as error:
            raise DataImportError(f"cannot carve a stratified {what} split: {error}") from None
    # One fold of a stratified group k-fold holds out about 1/k of the rows.
    folds = max(2, int(round(1.0 / fraction)))
    if len(np.unique(groups)) < folds:
        raise DataImportError(
            f"cannot carve a {what} split of {fraction:.0%} by group: only {len(np.unique(groups))} groups"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    kept, held = next(splitter.split(indices, labels, groups))
    return kept, held


def holdout_split(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None, what: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Carve one held-out split from `labels` (e.g. validation from a given train split)."""
    _check_fraction(f"the {what} fraction", fraction)
    kept, held = _holdout(labels, fraction, seed, groups, what)
    return np.sort(kept), np.sort(held)


def three_way_split(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row indices for train/val/test; fractions are of the whole table."""
    _check_fraction("the test fraction", test_fraction)
    _check_fraction("the validation fraction", val_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise DataImportError("validation and test fractions together must leave rows for training")
    rest, test = _holdout(labels, test_fraction, seed, groups, "test")
    rest_groups = groups[rest] if groups is not None else None
    train_local, val_local = _holdout(
        labels[rest], val_fraction / (1.0 - test_fraction), seed + 1, rest_groups, "validation"
    )
    return {"train": np.sort(rest[train_local]), "val": np.sort(rest[val_local]), "test": np.sort(test)}
