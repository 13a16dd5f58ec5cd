"""The epochs of one training run, and the Ray Train worker that runs them.

`fit` is the loop: the pure steps of `train/steps.py` over a feed of batches, with a
report (and, from rank 0, a checkpoint) every epoch, resuming from the latest
checkpoint's epoch. What runs it is a `Runner`: a Ray Train worker under DDP
(`train_loop_per_worker`, which streams its dataset shard through Ray Data), or a
one-process Tune trial (`medray.tune.trial`). After a worker dies, Ray Train restarts
the group and the loop resumes from the latest checkpoint.
"""

from __future__ import annotations

import functools
import math
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from medray.cluster.config import ScalingSection
from medray.cluster.console import emit_progress
from medray.train.checkpoint import load_train_state, load_weights, save_checkpoint
from medray.train.data.dataset import LABEL_COLUMN
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.job import WorkerPlan
from medray.train.models import build_model_from_config
from medray.train.models.batch_norm import sync_batch_norm
from medray.train.modalities import modality
from medray.train.steps import (build_optimizer, class_weights, epoch_metrics, gather_predictions, predict,
                                share_of_rows, train_epoch, warmup_cosine)

CACHE_MEMORY_SHARE = 0.25
"""`train.cache_data: auto` caches a worker's data when it takes at most this share of the
memory its node has free (divided among the node's workers): the rest is left to Ray's
object store, the model, its gradients and the optimiser state."""
VAL_BATCH_SIZE = 512
"""Validation batches: no gradients are kept, so they can be larger than training's."""
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_auroc", "val_accuracy", "epoch_seconds", "worker_nodes")


class ArrayFeed:
    """Batches of (inputs, labels) from tensors in memory, in a new order every epoch
    (the same order for the same seed and epoch, so a restarted worker sees the same batches)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    @classmethod
    def from_arrays(cls, inputs: np.ndarray, targets: np.ndarray, batch_size: int, shuffle: bool,
                    seed: int) -> "ArrayFeed":
        """Over arrays that may be read-only (Ray's object store hands out read-only views):
        they are only ever indexed, which copies, never written."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(torch.from_numpy(inputs), torch.from_numpy(targets), batch_size, shuffle, seed)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.arange(len(self.targets))
        if self.shuffle:
            order = torch.randperm(len(self.targets), generator=torch.Generator().manual_seed(self.seed + epoch))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.inputs[index], self.targets[index]

    def prefetch(self, epoch: int) -> None:
        """Nothing to read ahead: the batches are in memory."""

    def close(self) -> None:
        pass


READ_AHEAD_BATCHES = 2
"""Batches a streaming feed holds ready ahead of the training loop."""


class ReadAhead:
    """The items of an iterator, produced in a daemon thread at most `depth` ahead of
    the consumer: what a streaming epoch waits on at its start (a Ray Data execution
    starting, its first block read: 0.5-2 s an epoch at 224x224, and as long for the
    validation split) and the batches' conversion overlap the work before them."""

    _END = object()

    def __init__(self, items: Iterator, depth: int = READ_AHEAD_BATCHES):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        threading.Thread(target=self._produce, args=(items,), daemon=True, name="medray-read-ahead").start()

    def _put(self, item: Any) -> bool:
        # A put blocked on a full queue when `close` comes is freed by its drain, and the
        # stop is seen before the next one: no put outlives `close` for long.
        if self._stop.is_set():
            return False
        self._queue.put(item)
        return True

    def _produce(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as error:  # re-raised in the consumer, where it can be handled
            self._put((self._END, error))
        finally:
            getattr(items, "close", lambda: None)()

    def __iter__(self) -> Iterator:
        try:
            while True:
                item, error = self._queue.get()
                if error is not None:
                    raise error
                if item is self._END:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop producing (an epoch abandoned, or read ahead and never wanted): the stop is
        set first, then the queue drained, which frees a put waiting for room."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class ShardFeed:
    """Batches of (inputs, labels) tensors from a Ray Data dataset (a worker's shard).

    With `cache`, the shard is read from storage once (`load`) and then reshuffled in
    memory each epoch: for small datasets the per-epoch streaming setup costs more than
    the epoch itself. Without it the shard streams from storage every epoch, read and
    converted in a background thread (`ReadAhead`) that `prefetch` can start before the
    epoch is wanted.
    """

    def __init__(self, shard, features: Callable[[pa.Table], Any], preprocessor: Preprocessor, labels: LabelMap,
                 batch_size: int, cache: bool, shuffle: bool, seed: int):
        """`shard` yields the rows as stored; `features` turns a batch's feature columns
        into what `preprocessor` takes (the modality's `features_from_table`)."""
        self.shard, self.features, self.preprocessor, self.labels = shard, features, preprocessor, labels
        self.batch_size, self.cache, self.shuffle, self.seed = batch_size, cache, shuffle, seed
        self._cached: ArrayFeed | None = None
        self._ahead: dict[int, ReadAhead] = {}

    def _stream(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.shard.iter_batches(
            batch_size=self.batch_size, batch_format="pyarrow",
            local_shuffle_buffer_size=4 * self.batch_size if self.shuffle else None,
            local_shuffle_seed=self.seed + epoch if self.shuffle else None,
        ):
            features = self.features(batch.drop_columns([LABEL_COLUMN]))
            yield (torch.from_numpy(self.preprocessor.transform(features)),
                   torch.from_numpy(self.labels.apply(batch.column(LABEL_COLUMN).to_numpy())))

    def load(self) -> "ShardFeed":
        """Read a cached shard now (a no-op when streaming or already read)."""
        if self.cache and self._cached is None:
            parts = list(self._stream(0))
            inputs, targets = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])) if parts else \
                (torch.empty(0), torch.empty(0, dtype=torch.long))
            self._cached = ArrayFeed(inputs, targets, self.batch_size, self.shuffle, self.seed)
        return self

    def prefetch(self, epoch: int) -> None:
        """Start reading `epoch`'s batches now, in the background (streaming only)."""
        if not self.cache and epoch not in self._ahead:
            self._ahead[epoch] = ReadAhead(self._stream(epoch))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.cache:
            self.prefetch(epoch)
            yield from self._ahead.pop(epoch)
            return
        self.load()
        yield from self._cached.epoch(epoch)

    def close(self) -> None:
        """Stop any epoch read ahead and not consumed (a run stopped early)."""
        for ahead in self._ahead.values():
            ahead.close()
        self._ahead.clear()


class Feed(Protocol):
    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def prefetch(self, epoch: int) -> None:
        """Start reading `epoch` ahead of its `epoch(epoch)` call, where reading takes time."""

    def close(self) -> None: ...


class Runner(Protocol):
    """What `fit` needs from whatever runs it."""

    rank: int
    world: int
    device: torch.device

    def latest_checkpoint(self) -> Any:
        """The checkpoint to resume from (with `as_directory()`), or None."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model on this runner's device (wrapped for DDP where there is a group)."""

    def report(self, metrics: dict[str, Any], checkpoint_directory: str | None) -> None:
        """Hand one epoch's metrics, and rank 0's checkpoint folder, to Ray."""

    def worker_nodes(self) -> int:
        """How many nodes the run spans."""


def improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


class RayTrainRunner:
    """A Ray Train worker of a (possibly multi-node) DDP group."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def latest_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_directory: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_directory) if checkpoint_directory else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def worker_nodes(self) -> int:
        return _worker_nodes()


def train_loop_per_worker(plan: WorkerPlan) -> None:
    """Runs on every Ray Train worker (bound to its plan by `build_trainer`)."""
    import logging

    import ray.train

    # Ray logs every report at INFO; the one progress line per epoch says it better.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    runner = RayTrainRunner()
    # Validation is not split (see build_trainer): every worker scores all of it, so each
    # computes the same metrics and early-stopping decision without a gather.
    workers_on_node = ray.train.get_context().get_local_world_size()
    fit(plan, runner, lambda: shard_feeds(plan, ray.train.get_dataset_shard("train"),
                                          ray.train.get_dataset_shard("val"), runner.rank, runner.world,
                                          workers_on_node))


def caches_data(plan: WorkerPlan, world: int, workers_on_node: int, free_bytes: int) -> bool:
    """Whether a worker keeps its shard and the validation split in memory (`train.cache_data`)."""
    setting = plan.train.cache_data
    if isinstance(setting, bool):
        return setting
    held = (math.ceil(plan.train_rows / world) + plan.val_rows) * plan.row_bytes
    return held <= CACHE_MEMORY_SHARE * free_bytes / max(1, workers_on_node)


def shard_feeds(plan: WorkerPlan, train, val, rank: int = 0, world: int = 1,
                workers_on_node: int = 1) -> tuple[ShardFeed, ShardFeed]:
    """(train, val) feeds over Ray Data datasets for worker `rank` of `world`, a cached
    shard read now."""
    import psutil

    seed = plan.seed_of(rank)
    cache = caches_data(plan, world, workers_on_node, psutil.virtual_memory().available)
    features = functools.partial(modality(plan.preprocessor.modality).features_from_table, schema=plan.schema)
    return (ShardFeed(train, features, plan.preprocessor, plan.labels, plan.batch_size_per_worker(world), cache,
                      shuffle=True, seed=seed).load(),
            ShardFeed(val, features, plan.preprocessor, plan.labels, VAL_BATCH_SIZE, cache, shuffle=False,
                      seed=seed).load())


def fit(plan: WorkerPlan, runner: Runner, open_feeds: Callable[[], tuple[Feed, Feed]]) -> None:
    """Train `plan` for its epochs on this runner, reporting every epoch.

    `open_feeds` gives the (train, val) feeds with their data read, called before the
    first epoch so that each report can say how long reading took (`data_seconds`)
    apart from the epochs. Every report also carries the start-up: `startup_seconds`
    from `plan.launched_at` to the first epoch, `worker_started_at`, and
    `checkpoint_seconds`, the time spent saving and handing over checkpoints so far
    (the last one's own hand-over is not in it)."""
    worker_started_at = time.time()
    rank, world, device = runner.rank, runner.world, runner.device
    optim, train_cfg = plan.optim, plan.train
    torch.set_num_threads(max(1, int(plan.threads_per_worker)))
    torch.manual_seed(train_cfg.seed)  # same initial weights on every worker
    mixed_precision = plan.mixed_precision == "bf16" or (
        plan.mixed_precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())

    preprocessor, labels = plan.preprocessor, plan.labels
    model = build_model_from_config(plan.family, plan.model_config)
    modality(preprocessor.modality).prepare_model(model, preprocessor)
    optimizer = build_optimizer(model, optim)
    per_worker_batch = plan.batch_size_per_worker(world)
    steps_per_epoch = max(1, math.ceil(plan.train_rows / world / per_worker_batch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        steps_per_epoch * optim.epochs, int(round(steps_per_epoch * optim.warmup_epochs))))
    weights = class_weights(list(plan.train_class_counts)).to(device) if optim.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=optim.label_smoothing)

    start_epoch, history, best, stale = 0, [], None, 0
    resumed_from = None
    checkpoint = runner.latest_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_train_state(directory)
            model.load_state_dict(load_weights(directory))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best, stale = state["epoch"] + 1, state["history"], state["best"], state["stale"]
        resumed_from = state["epoch"]
    if plan.sync_batch_norm and world > 1:
        model = sync_batch_norm(model, device)
    model = runner.prepare_model(model)
    nodes = runner.worker_nodes()
    augmenter = modality(preprocessor.modality).augment if train_cfg.augment else None
    generator = torch.Generator().manual_seed(plan.seed_of(rank))
    metric, mode, patience = train_cfg.metric, train_cfg.metric_mode, train_cfg.patience
    read_started = time.perf_counter()
    train_feed, val_feed = open_feeds()
    first_epoch_at = time.time()
    timings = {"launched_at": plan.launched_at, "worker_started_at": worker_started_at,
               "data_seconds": time.perf_counter() - read_started,
               "startup_seconds": first_epoch_at - plan.launched_at if plan.launched_at else None,
               "checkpoint_seconds": 0.0}

    try:
        for epoch in range(start_epoch, optim.epochs):
            started = time.perf_counter()
            val_feed.prefetch(epoch)  # a streamed validation split is read while this epoch trains
            batches = train_feed.epoch(epoch)
            if augmenter:
                batches = ((augmenter(x, generator), y) for x, y in batches)
            loss_sum, seen = train_epoch(model, batches, optimizer, scheduler, loss_fn, device,
                                         optim.grad_clip, mixed_precision)
            train_loss = _mean_across_workers(loss_sum, seen, device)
            if epoch + 1 < optim.epochs:  # and the next epoch's shard while this one is scored and saved
                train_feed.prefetch(epoch + 1)
            # Each worker scores its share of the validation rows with the bare module (no
            # DDP collective can wait on a worker whose share of a batch is empty).
            logits, targets = gather_predictions(*predict(getattr(model, "module", model),
                                                          share_of_rows(val_feed.epoch(epoch), rank, world),
                                                          device, mixed_precision))
            metrics = {"epoch": epoch, "train_loss": train_loss, **epoch_metrics(logits, targets),
                       "lr": scheduler.get_last_lr()[0], "epoch_seconds": time.perf_counter() - started,
                       "resumed_from_epoch": resumed_from, "worker_nodes": nodes}
            if improved(metrics[metric], best, mode):
                best, stale = metrics[metric], 0
            else:
                stale += 1
            stop = bool(patience) and stale >= patience
            metrics["stopped_early"] = stop and epoch + 1 < optim.epochs
            history.append({**{k: metrics[k] for k in HISTORY_KEYS}, "finished_at": time.time()})
            if rank == 0 and plan.progress:
                shown = ("epoch", "train_loss", "val_loss", "val_auroc", "val_accuracy", "epoch_seconds",
                         "resumed_from_epoch", "stopped_early")
                emit_progress({**{k: metrics[k] for k in shown}, "epochs": optim.epochs})
            if rank == 0 and plan.tracking is not None:
                from medray.train.tracking import log_epoch

                log_epoch(plan.tracking, metrics)
            saving = time.perf_counter()
            with tempfile.TemporaryDirectory() as directory:
                if rank == 0:
                    save_checkpoint(
                        directory, model, plan.family, preprocessor, labels, plan.dataset,
                        progress={"epoch": epoch, "metrics": metrics, "history": history},
                        train_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                     "epoch": epoch, "history": history, "best": best, "stale": stale},
                    )
                report = {**_reportable(metrics), **timings, "reported_at": time.time()}
                report["checkpoint_seconds"] += time.perf_counter() - saving
                runner.report(report, directory if rank == 0 else None)
            timings["checkpoint_seconds"] += time.perf_counter() - saving
            if stop:
                break
    finally:
        train_feed.close()
        val_feed.close()


def _worker_nodes() -> int:
    """How many nodes this worker group spans (recorded with every epoch)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, node)
    return len(set(gathered))


def _mean_across_workers(loss_sum: float, seen: int, device: torch.device) -> float:
    import torch.distributed as dist

    totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return float(totals[0] / max(totals[1], 1.0))


def _reportable(metrics: dict[str, Any]) -> dict[str, Any]:
    # Ray sorts checkpoints by the metric: an undefined value must still be a number.
    return {k: (float("nan") if v is None and k.startswith("val_") else v) for k, v in metrics.items()}


def build_trainer(plan: WorkerPlan, datasets: dict[str, Any], run_name: str, storage_path: str,
                  storage_filesystem, scaling: ScalingSection, callbacks=None):
    """The TorchTrainer for one training run (also what each Tune trial builds)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        # The plan is bound here rather than passed as `train_loop_config`, which Ray
        # types as a dict: the worker gets the typed plan itself.
        functools.partial(train_loop_per_worker, plan),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=plan.train.keep_checkpoints, checkpoint_score_attribute=plan.train.metric,
                checkpoint_score_order=plan.train.metric_mode,
            ),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
        # Only the training split is sharded. Ray's equal split drops the remainder rows,
        # which on a small validation set (ECG200 has 15) changes which checkpoint wins.
        # Blocks arrive in file order, so a seeded run sees the same batches every time.
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=ExecutionOptions(preserve_order=True)),
    )
