"""Every real dataset in ../shared/data (and scikit-learn's breast_cancer) imported to
file:// and s3:// storage, then read back through Ray Data and compared with the source."""

import numpy as np
import pandas as pd
import pytest

from medray.train.data.tabular import CLEVELAND_COLUMNS
from medray.train.data.importers import ImportRequest, import_dataset
from medray.train.data.loading import read_split

pytestmark = pytest.mark.integration


def ray_arrays(storage, ref, split, column):
    rows = read_split(storage, ref, split).take_batch(100_000, batch_format="numpy")
    return rows[column], rows["label"]


def ray_frame(storage, ref, split):
    return read_split(storage, ref, split).to_pandas()


@pytest.fixture(autouse=True)
def _ordered(ray_session):
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True


def sort_rows(array):
    flat = array.reshape(len(array), -1)
    return flat[np.lexsort(flat.T[::-1])]


def test_breastmnist(storage, shared_data):
    manifest = import_dataset(storage, ImportRequest(kind="medmnist", source=str(shared_data / "breastmnist.npz"),
                                                     name="breastmnist"))
    source = np.load(shared_data / "breastmnist.npz")
    for split in ("train", "val", "test"):
        images, labels = ray_arrays(storage, "breastmnist", split, "image")
        assert images.shape == source[f"{split}_images"].shape and images.dtype == np.uint8
        np.testing.assert_array_equal(images, source[f"{split}_images"])
        np.testing.assert_array_equal(labels, source[f"{split}_labels"].reshape(-1))
    assert manifest["source"]["sha256"] == (shared_data / "SHA256SUMS").read_text().split("breastmnist.npz")[0].split()[-1]


def test_ecg200(storage, shared_data):
    manifest = import_dataset(storage, ImportRequest(kind="ucr", source=str(shared_data), dataset="ECG200",
                                                     name="ecg200"))
    train = np.loadtxt(shared_data / "ECG200_TRAIN.txt")
    test = np.loadtxt(shared_data / "ECG200_TEST.txt")
    signals = {s: ray_arrays(storage, "ecg200", s, "signal") for s in ("train", "val", "test")}
    assert sum(len(x) for x, _ in signals.values()) == 200
    assert {x.shape[1] for x, _ in signals.values()} == {96}
    np.testing.assert_array_equal(signals["test"][0], test[:, 1:])
    np.testing.assert_array_equal(signals["test"][1], (test[:, 0] == 1).astype(int))
    carved = np.concatenate([signals["train"][0], signals["val"][0]])
    np.testing.assert_array_equal(sort_rows(carved), sort_rows(train[:, 1:]))
    assert manifest["classes"] == ["myocardial_infarction", "normal"]


def test_cleveland(storage, shared_data):
    manifest = import_dataset(storage, ImportRequest(
        kind="csv", source=str(shared_data / "processed.cleveland.data"), name="cleveland", target="num",
        columns=CLEVELAND_COLUMNS, missing=["?"],
    ))
    assert manifest["quality"]["missing_values_total"] == 6
    source = pd.read_csv(shared_data / "processed.cleveland.data", header=None, names=CLEVELAND_COLUMNS,
                         na_values="?")
    frames = pd.concat([ray_frame(storage, "cleveland", s) for s in ("train", "val", "test")])
    assert len(frames) == 303
    features = CLEVELAND_COLUMNS[:-1]
    ours = frames[features].astype("float64").sort_values(features).reset_index(drop=True)
    theirs = source[features].sort_values(features).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert sorted(frames["label"].tolist()) == sorted(source["num"].astype(int).tolist())


def test_wdbc(storage):
    from sklearn.datasets import load_breast_cancer

    import_dataset(storage, ImportRequest(kind="sklearn", source="breast_cancer", name="wdbc"))
    bunch = load_breast_cancer()
    frames = pd.concat([ray_frame(storage, "wdbc", s) for s in ("train", "val", "test")])
    ours = np.column_stack([frames.drop(columns="label").to_numpy(), frames["label"].to_numpy()])
    theirs = np.column_stack([bunch.data, bunch.target])
    np.testing.assert_array_equal(sort_rows(ours), sort_rows(theirs))
