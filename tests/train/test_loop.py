"""The training loop without Ray: the typed plan each worker receives, the feeds that
turn a worker's dataset shard (a stand-in, here) or arrays into batches, and `fit` run
by a stand-in runner that keeps what it reports."""

import contextlib
import dataclasses
import pickle
import shutil
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from medray.cluster.config import MedrayConfig
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.checkpoint import load_bundle
from medray.train.job import TrainingPlan, WorkerPlan, plan_data, plan_training
from medray.train.loop import ArrayFeed, ReadAhead, ShardFeed, fit
from support.training import small_wdbc_config


# WorkerPlan ------------------------------------------------------------------------
def training_plan():
    config = MedrayConfig.model_validate({"optim": {"lr": 3e-4, "epochs": 7}, "train": {"seed": 5, "augment": True},
                                          "scaling": {"cpus_per_worker": 2, "mixed_precision": "off"}})
    manifest = {"name": "cleveland", "version": 2, "schema": {"features": ["age"]},
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
    assert plan.schema == {"features": ["age"]}  # how the workers turn stored batches into features


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
            yield pa.table({"x": chunk, "label": (chunk % 2).astype(np.int64)})


class Scale:
    """A fitted transform stand-in: the feature times ten, as a (N, 1) input."""

    def transform(self, features):
        return (features["x"].to_numpy() * 10).reshape(-1, 1)


LABELS = LabelMap.build(["even", "odd"])  # identity: label = value % 2


def feed(shard, cache, shuffle, seed=3, batch_size=4):
    return ShardFeed(shard, pa.Table.to_pandas, Scale(), LABELS, batch_size, cache, shuffle, seed)


def rows(batches):
    """(values, labels) of one epoch, in the order the batches gave them."""
    parts = list(batches)
    return torch.cat([x for x, _ in parts]).flatten().tolist(), torch.cat([y for _, y in parts]).tolist()


def test_a_cached_feed_reads_the_shard_once_and_reshuffles_every_row_each_epoch():
    shard = Shard(10)
    cached = feed(shard, cache=True, shuffle=True)
    epochs = [rows(cached.epoch(epoch)) for epoch in range(3)]
    assert len(shard.calls) == 1 and shard.calls[0] == (4, "pyarrow", 16, 3)
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
    assert shard.calls == [(2, "pyarrow", 8, 100), (2, "pyarrow", 8, 101), (2, "pyarrow", 8, 102)]
    unshuffled = Shard(5)
    list(feed(unshuffled, cache=False, shuffle=False).epoch(4))
    assert unshuffled.calls == [(4, "pyarrow", None, None)]


def test_an_empty_shard_gives_no_batches():
    assert list(feed(Shard(0), cache=True, shuffle=True).epoch(0)) == []


def test_a_cached_feed_reads_on_load_and_not_again():
    shard = Shard(6)
    cached = feed(shard, cache=True, shuffle=True).load()
    assert len(shard.calls) == 1
    list(cached.epoch(0)), list(cached.epoch(1)), cached.load()
    assert len(shard.calls) == 1
    streaming = feed(Shard(6), cache=False, shuffle=True).load()
    assert streaming.shard.calls == []  # streaming reads in each epoch, not on load


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_streaming_feed_reads_a_prefetched_epoch_before_it_is_asked_for_and_only_once():
    shard = Shard(7)
    streaming = feed(shard, cache=False, shuffle=True, seed=100, batch_size=2)
    expected = rows(feed(Shard(7), cache=False, shuffle=True, seed=100, batch_size=2).epoch(1))
    streaming.prefetch(1)
    wait_until(lambda: shard.calls)  # read in the background, with epoch 1's shuffle seed
    assert shard.calls == [(2, "pyarrow", 8, 101)]
    streaming.prefetch(1)  # already under way: not read twice
    assert rows(streaming.epoch(1)) == expected and len(shard.calls) == 1
    cached = feed(Shard(7), cache=True, shuffle=True)
    cached.prefetch(0), cached.close()  # in memory: nothing to read ahead
    assert len(cached.shard.calls) == 0


def test_read_ahead_holds_at_most_its_depth_and_stops_when_closed():
    produced, closed = [], []

    def items():
        try:
            for i in range(100):
                produced.append(i)
                yield i
        finally:
            closed.append(True)

    ahead = ReadAhead(items(), depth=2)
    wait_until(lambda: len(produced) == 3)  # two queued, the third waiting for room
    time.sleep(0.3)
    assert len(produced) == 3
    iterator = iter(ahead)
    assert [next(iterator), next(iterator)] == [0, 1]
    wait_until(lambda: len(produced) == 5)
    ahead.close()  # an epoch read ahead and never wanted: the source is closed, not drained
    wait_until(lambda: closed)
    assert len(produced) <= 6


def test_read_ahead_raises_the_sources_error_in_the_consumer():
    def items():
        yield 1
        raise ValueError("shard 3 cannot be read")

    iterator = iter(ReadAhead(items()))
    assert next(iterator) == 1
    with pytest.raises(ValueError, match="shard 3 cannot be read"):
        next(iterator)


# ArrayFeed --------------------------------------------------------------------------
def test_an_array_feed_serves_read_only_arrays_in_a_seeded_order():
    inputs = np.arange(10, dtype=np.float32).reshape(10, 1)
    targets = np.arange(10) % 2
    inputs.setflags(write=False)  # as Ray's object store hands them out
    feed_ = ArrayFeed.from_arrays(inputs, targets, 4, shuffle=True, seed=7)
    first, again = rows(feed_.epoch(0)), rows(ArrayFeed.from_arrays(inputs, targets, 4, True, 7).epoch(0))
    assert first == again and sorted(first[0]) == list(range(10)) and first != rows(feed_.epoch(1))
    assert first[1] == [int(v) % 2 for v in first[0]]
    assert rows(ArrayFeed.from_arrays(inputs, targets, 3, False, 7).epoch(4))[0] == list(range(10))


# fit --------------------------------------------------------------------------------
class FolderCheckpoint:
    def __init__(self, folder):
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.folder)


class Recorder:
    """A one-process runner that keeps every report and a copy of every checkpoint."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self, folder, resume_from=None):
        self.folder, self.resume_from = folder, resume_from
        self.reports, self.checkpoints = [], []

    def latest_checkpoint(self):
        return FolderCheckpoint(self.resume_from) if self.resume_from else None

    def prepare_model(self, model):
        return model

    def report(self, metrics, checkpoint_directory):
        self.reports.append(metrics)
        if checkpoint_directory:  # fit deletes its folder after the report, as Ray has copied it by then
            self.checkpoints.append(shutil.copytree(checkpoint_directory, self.folder / f"ckpt{len(self.reports)}"))

    def worker_nodes(self):
        return 1


def wdbc_run(storage, *overrides):
    config = small_wdbc_config(*overrides)
    data = plan_data(config, storage)
    worker_plan = plan_training(config, storage, data=data).worker_plan(progress=False, launched_at=time.time())

    def open_feeds():
        return (ArrayFeed.from_arrays(*data.split_arrays(storage, "train"), config.optim.batch_size, True, 0),
                ArrayFeed.from_arrays(*data.split_arrays(storage, "val"), 512, False, 0))

    return worker_plan, open_feeds


def test_fit_reports_every_epoch_with_a_checkpoint_and_its_start_up(wdbc, tmp_path):
    plan, open_feeds = wdbc_run(wdbc)
    runner = Recorder(tmp_path)
    fit(plan, runner, open_feeds)
    assert [r["epoch"] for r in runner.reports] == [0, 1, 2] and len(runner.checkpoints) == 3
    assert runner.reports[-1]["val_auroc"] > 0.95  # WDBC separates well in 3 epochs
    bundle = load_bundle(runner.checkpoints[-1])
    assert bundle.progress["epoch"] == 2 and len(bundle.progress["history"]) == 3 and bundle.dataset == "wdbc@v1"
    startup = {r["startup_seconds"] for r in runner.reports}
    assert len(startup) == 1 and 0 <= startup.pop() < 60  # measured once, before the first epoch
    assert all(r["launched_at"] == plan.launched_at <= r["worker_started_at"] <= r["reported_at"]
               for r in runner.reports)
    spent = [r["checkpoint_seconds"] for r in runner.reports]
    assert spent == sorted(spent) and spent[0] > 0 and runner.reports[0]["data_seconds"] > 0


def test_fit_resumes_after_the_checkpoints_epoch(wdbc, tmp_path):
    plan, open_feeds = wdbc_run(wdbc)
    first = Recorder(tmp_path / "first")
    fit(plan, first, open_feeds)
    resumed = Recorder(tmp_path / "resumed", resume_from=first.checkpoints[1])
    fit(plan, resumed, open_feeds)
    assert [(r["epoch"], r["resumed_from_epoch"]) for r in resumed.reports] == [(2, 1)]
    history = load_bundle(resumed.checkpoints[0]).progress["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[:2] == load_bundle(first.checkpoints[1]).progress["history"]


def test_fit_stops_on_patience_and_says_so(wdbc, tmp_path):
    # A learning rate too small to move val AUROC by a float's worth stops after `patience` epochs.
    plan, open_feeds = wdbc_run(wdbc, "train.patience=1", "train.metric=val_loss", "optim.lr=1e-12",
                                "optim.epochs=5")
    runner = Recorder(tmp_path)
    fit(plan, runner, open_feeds)
    assert [r["epoch"] for r in runner.reports] == [0, 1] and runner.reports[-1]["stopped_early"] is True


class CallLog:
    """A feed that records what fit asks of it, in order, into a shared list."""

    def __init__(self, name, inner, calls):
        self.name, self.inner, self.calls = name, inner, calls

    def prefetch(self, epoch):
        self.calls.append((self.name, "prefetch", epoch))

    def epoch(self, epoch):
        self.calls.append((self.name, "epoch", epoch))
        return self.inner.epoch(epoch)

    def close(self):
        self.calls.append((self.name, "close"))


def test_fit_starts_each_read_before_it_is_needed_and_closes_the_feeds(wdbc, tmp_path):
    plan, open_feeds = wdbc_run(wdbc, "optim.epochs=2")
    calls = []

    def logged_feeds():
        train, val = open_feeds()
        return CallLog("train", train, calls), CallLog("val", val, calls)

    fit(plan, Recorder(tmp_path), logged_feeds)
    assert calls == [("val", "prefetch", 0), ("train", "epoch", 0), ("train", "prefetch", 1), ("val", "epoch", 0),
                     ("val", "prefetch", 1), ("train", "epoch", 1), ("val", "epoch", 1),  # no epoch 2 to read
                     ("train", "close"), ("val", "close")]


def test_auto_caching_keeps_a_shard_in_memory_only_when_it_fits_its_share():
    from medray.train.loop import CACHE_MEMORY_SHARE, caches_data

    plan = training_plan().worker_plan()  # 10 train rows of 13 features: 60 bytes each
    assert plan.train.cache_data == "auto" and plan.row_bytes == 13 * 4 + 8 and plan.val_rows == 0
    held = 5 * plan.row_bytes  # half of the train rows on each of 2 workers
    assert caches_data(plan, world=2, workers_on_node=1, free_bytes=int(held / CACHE_MEMORY_SHARE))
    assert not caches_data(plan, world=2, workers_on_node=1, free_bytes=int(held / CACHE_MEMORY_SHARE) - 1)
    # Two workers on the node share its free memory.
    assert not caches_data(plan, world=2, workers_on_node=2, free_bytes=int(held / CACHE_MEMORY_SHARE))
    for setting in (True, False):
        forced = dataclasses.replace(plan, train=plan.train.model_copy(update={"cache_data": setting}))
        assert caches_data(forced, world=2, workers_on_node=2, free_bytes=0) is setting
