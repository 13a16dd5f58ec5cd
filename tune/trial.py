"""One trial of a search, and the data all the trials of a search share.

A trial with one worker trains inside its own Tune function (`TrialRunner`): the same
`medray.train.loop.fit` epochs, checkpoints and reports as a Ray Train worker, without
the TorchTrainer's controller, placement group, worker process and dataset planning,
which cost more than the training itself on the small datasets medical work has (see
benchmarks/tune_efficiency.py). Tune then holds the trial's CPU (or GPU), keeps its
checkpoints (`runs/{search}/trial_{id}/`) and restores the latest one on resume. A trial
with several workers needs a process group, so it launches a TorchTrainer as before,
whose checkpoints are under `runs/{search}/trials/{id}/`.

Every trial of a search is judged on the same data, so the search fits the
preprocessing once (`SearchData`) and, when the preprocessed train and val splits fit
under `SHARE_LIMIT_BYTES`, reads them once and hands them to every one-worker trial
through Ray's object store. Larger splits are streamed by each trial through Ray Data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medray.cluster.config import MedrayConfig
from medray.cluster.storage import Storage

if TYPE_CHECKING:
    import numpy as np

    from medray.cluster.config import ScalingSection
    from medray.train.job import DataPlan, WorkerPlan

log = logging.getLogger(__name__)

SHARE_LIMIT_BYTES = 1 << 30
"""Largest preprocessed train + val a search puts in the object store for its trials: one
copy in the store, one per running trial while it trains."""


@dataclasses.dataclass(frozen=True)
class SearchData:
    """What every trial of a search reads alike, prepared once by the search's driver."""

    data: DataPlan
    splits: Any
    """An object ref to {"train"|"val": (preprocessed inputs, class indices)}, or None
    when they are too large to share (or the trials are TorchTrainers, which stream)."""

    def shared_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        import ray

        return ray.get(self.splits)


def search_data(data: DataPlan, storage: Storage, direct: bool) -> SearchData:
    """The search's fitted `data`, with its splits in the object store when the trials
    train directly and the splits are small enough. In the driver, after Ray is up."""
    import ray

    shared_bytes = sum(data.preprocessed_bytes(split) for split in ("train", "val"))
    if not direct or shared_bytes > SHARE_LIMIT_BYTES:
        if direct:
            log.info("train + val are %.1f GiB preprocessed, over the %.0f GiB a search shares: each trial "
                     "streams them", shared_bytes / 2**30, SHARE_LIMIT_BYTES / 2**30)
        return SearchData(data, None)
    return SearchData(data, ray.put({split: data.split_arrays(storage, split) for split in ("train", "val")}))


def trains_directly(config: MedrayConfig) -> bool:
    """Whether this search's trials train in their Tune function (one worker) or launch a TorchTrainer."""
    return config.scaling.num_workers == 1


TRIAL_PREFIX = "trial_"
"""Tune's folder (and name) for trial ID is TRIAL_PREFIX + ID."""


def trial_key(search: str, trial_id: str, direct: bool) -> str:
    """The folder that holds a trial's checkpoints: Tune's trial folder, or the trial's
    TorchTrainer run (named by the trial ID) under `trials/`."""
    return f"runs/{search}/{TRIAL_PREFIX}{trial_id}" if direct else f"runs/{search}/trials/{trial_id}"


def trial_resources(config: MedrayConfig, direct: bool) -> dict[str, float]:
    """What Tune reserves for one trial's function."""
    if direct:
        return {"CPU": config.scaling.cpus_per_worker, **({"GPU": 1} if config.scaling.use_gpu else {})}
    # The function only waits on its TorchTrainer, whose workers hold the CPUs; Tune
    # refuses an empty request, so it asks for one byte of memory instead of a CPU.
    return {"memory": 1}


class TrialRunner:
    """`medray.train.loop.Runner` for a one-worker trial: this process, reporting to Tune."""

    rank, world = 0, 1

    def __init__(self, use_gpu: bool) -> None:
        import torch

        # Tune sets CUDA_VISIBLE_DEVICES to the trial's own GPU.
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def latest_checkpoint(self) -> Any:
        import ray.tune

        return ray.tune.get_checkpoint()

    def prepare_model(self, model):
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_directory: str | None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_directory) if checkpoint_directory else None
        ray.tune.report(metrics, checkpoint=checkpoint)

    def worker_nodes(self) -> int:
        return 1


def run_trial(params: dict[str, Any], *, base: dict[str, Any], root: str, search: str, shared: SearchData,
              direct: bool) -> None:
    """One trial: the base config with this trial's values, trained here or by a TorchTrainer."""
    import ray.tune

    from medray.train.job import plan_training, training_datasets
    from medray.tune.spaces import apply_params

    launched_at = time.time()
    config = apply_params(base, params)
    storage = Storage(root, config.storage)  # the search's encryption and retry settings, here too
    plan = plan_training(config, storage, data=shared.data)
    worker_plan = plan.worker_plan(progress=False, launched_at=launched_at)
    train_trial(worker_plan, storage, config.scaling, direct,
                feeds=lambda: _feeds(worker_plan, storage, plan, shared),
                datasets=lambda: training_datasets(storage, plan),
                trainer_folder=trial_key(search, ray.tune.get_context().get_trial_id(), direct=False))


def train_trial(worker_plan: WorkerPlan, storage: Storage, scaling: ScalingSection, direct: bool,
                feeds: Callable[[], tuple[Any, Any]], datasets: Callable[[], dict[str, Any]],
                trainer_folder: str) -> None:
    """A trial's training (a search's or a cross-validation fold's): here, one worker on
    `feeds()`, its (train, val) feeds; or by a TorchTrainer on `datasets()`, Ray Datasets
    by split, whose checkpoints go in `trainer_folder`. Either way every epoch reaches Tune."""
    from medray.train.loop import fit

    if direct:
        fit(worker_plan, TrialRunner(scaling.use_gpu), feeds)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from medray.train.loop import build_trainer

    filesystem, _ = storage.arrow_filesystem()
    runs, name = trainer_folder.rsplit("/", 1)
    build_trainer(worker_plan, datasets(), name, storage.arrow_path(runs), filesystem, scaling,
                  callbacks=[TuneReportCallback()]).fit()


def array_feeds(worker_plan: WorkerPlan, train: tuple[np.ndarray, np.ndarray],
                val: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    """(train, val) feeds over (inputs, class indices) in memory, with rank 0's seed: the
    same draws as a one-worker TorchTrainer."""
    from medray.train.loop import VAL_BATCH_SIZE, ArrayFeed

    seed = worker_plan.seed_of(0)
    return (ArrayFeed.from_arrays(*train, worker_plan.optim.batch_size, shuffle=True, seed=seed),
            ArrayFeed.from_arrays(*val, VAL_BATCH_SIZE, shuffle=False, seed=seed))


def _feeds(worker_plan: WorkerPlan, storage: Storage, plan, shared: SearchData):
    """A one-worker trial's (train, val) feeds: the search's shared arrays, or its own
    Ray Data stream when they were too large to share."""
    from medray.train.job import training_datasets
    from medray.train.loop import shard_feeds

    if shared.splits is None:
        datasets = training_datasets(storage, plan)
        return shard_feeds(worker_plan, datasets["train"], datasets["val"])
    splits = shared.shared_splits()
    return array_feeds(worker_plan, splits["train"], splits["val"])
