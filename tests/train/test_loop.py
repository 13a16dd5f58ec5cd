"""The pure parts of the Ray-aware layer: the typed plan each worker receives, and the
feed that turns a worker's dataset shard into batches (a stand-in shard, no Ray)."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from medray.cluster.config import MedrayConfig
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.job import TrainingPlan, WorkerPlan
from medray.train.loop import ShardFeed


# WorkerPlan ------------------------------------------------------------------------
def training_plan():
    config = MedrayConfig.model_validate({"optim": {"lr": 3e-4, "epochs": 7}, "train": {"seed": 5, "augment": True},
                                          "scaling": {"cpus_per_worker": 2, "mixed_precision": "off"}})
    manifest = {"name": "cleveland", "version": 2,
                "splits": {"train": {"rows": 10, "class_counts": {"0": 3, "1": 5, "2": 2}}}}
    labels = LabelMap.build(["0", "1", "2"], {"healthy": ["0"], "disease": ["1", "2"]}, "disease")
    preprocessor = Preprocessor("tabular", None, [13], {"mean": [0.5] * 13})
    return TrainingPlan(config, manifest, labels, preprocessor, {"dims": [32]}, "run")


def test_the_worker_plan_carries_the_configs_and_the_merged_class_counts():
    plan = training_plan().worker_plan(progress=False)
    assert (plan.dataset, plan.train_rows, plan.train_class_counts) == ("cleveland@v2", 10, (3, 7))
    assert (plan.optim.lr, plan.optim.epochs, plan.train.seed, plan.train.augment) == (3e-4, 7, 5, True)
    assert (plan.threads_per_worker, plan.mixed_precision, plan.progress) == (2.0, "off", False)
    assert plan.train.metric_mode == "max" and plan.labels.classes == ["healthy", "disease"]


def test_the_worker_plan_pickles_whole_and_is_frozen():
    plan = training_plan().worker_plan()
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan and isinstance(copy, WorkerPlan) and copy.preprocessor.stats == {"mean": [0.5] * 13}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.train_rows = 11


# ShardFeed --------------------------------------------------------------------------
class Shard:
    """What ShardFeed uses of a Ray Data shard: `iter_batches`, recording each call."""

    def __init__(self, rows: int):
        self.values = np.arange(rows, dtype=np.float32)
        self.calls = []

    def iter_batches(self, batch_size, batch_format, local_shuffle_buffer_size, local_shuffle_seed):
        self.calls.append((batch_size, batch_format, local_shuffle_buffer_size, local_shuffle_seed))
        for start in range(0, len(self.values), batch_size):
            chunk = self.values[start:start + batch_size]
            yield {"x": chunk, "label": (chunk % 2).astype(np.int64)}


class Scale:
    """A fitted transform stand-in: the feature times ten, as a (N, 1) input."""

    def transform(self, batch):
        return (batch["x"] * 10).reshape(-1, 1)


LABELS = LabelMap.build(["even", "odd"])  # identity: label = value % 2


def feed(shard, cache, shuffle, seed=3, batch_size=4):
    return ShardFeed(shard, Scale(), LABELS, batch_size, cache, shuffle, seed)


def rows(batches):
    """(values, labels) of one epoch, in the order the batches gave them."""
    parts = list(batches)
    return torch.cat([x for x, _ in parts]).flatten().tolist(), torch.cat([y for _, y in parts]).tolist()


def test_a_cached_feed_reads_the_shard_once_and_reshuffles_every_row_each_epoch():
    shard = Shard(10)
    cached = feed(shard, cache=True, shuffle=True)
    epochs = [rows(cached.epoch(epoch)) for epoch in range(3)]
    assert len(shard.calls) == 1 and shard.calls[0] == (4, "numpy", 16, 3)
    for values, labels in epochs:  # every row once, transformed, with its own label
        assert sorted(values) == [10.0 * v for v in range(10)]
        assert labels == [int(v / 10) % 2 for v in values]
    assert len({tuple(values) for values, _ in epochs}) == 3  # a new order each epoch
    assert [len(x) for x, _ in cached.epoch(0)] == [4, 4, 2]
    # The same seed and epoch give the same order (a restarted worker sees the same batches).
    assert rows(feed(Shard(10), cache=True, shuffle=True).epoch(2)) == epochs[2]


def test_without_shuffle_the_cached_order_is_the_shards_order():
    cached = feed(Shard(6), cache=True, shuffle=False)
    assert rows(cached.epoch(0)) == rows(cached.epoch(5)) == ([0.0, 10.0, 20.0, 30.0, 40.0, 50.0], [0, 1, 0, 1, 0, 1])


def test_an_uncached_feed_streams_every_epoch_with_that_epochs_shuffle_seed():
    shard = Shard(5)
    streaming = feed(shard, cache=False, shuffle=True, seed=100, batch_size=2)
    for epoch in range(3):
        assert sorted(rows(streaming.epoch(epoch))[0]) == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert shard.calls == [(2, "numpy", 8, 100), (2, "numpy", 8, 101), (2, "numpy", 8, 102)]
    unshuffled = Shard(5)
    list(feed(unshuffled, cache=False, shuffle=False).epoch(4))
    assert unshuffled.calls == [(4, "numpy", None, None)]


def test_an_empty_shard_gives_no_batches():
    assert list(feed(Shard(0), cache=True, shuffle=True).epoch(0)) == []
