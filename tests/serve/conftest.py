"""Fixtures for the serving tests: real inputs of each modality, and a registry of
champions to serve (see tests_serve_support)."""

from __future__ import annotations

import numpy as np
import pytest

from tests_serve_support import make_registry


@pytest.fixture(scope="session")
def real_inputs(shared_data):
    """A few real test cases of each modality, in the form a client sends them."""
    from sklearn.datasets import load_breast_cancer

    images = np.load(shared_data / "breastmnist.npz")["test_images"][:6]
    ecg = np.loadtxt(shared_data / "ECG200_TEST.txt")[:6, 1:]
    cancer = load_breast_cancer()
    return {"images": images, "signals": ecg, "records": cancer.data[:6], "feature_names": list(cancer.feature_names),
            "all_records": cancer.data}


@pytest.fixture
def served_registry(tmp_path, real_inputs):
    """A factory: the three champions, registered into the given storage."""
    return lambda storage: make_registry(storage, tmp_path, real_inputs)
