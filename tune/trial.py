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
from typing import TYPE_CHECKING, Any

from medray.cluster.config import MedrayConfig
from medray.cluster.storage import Storage

if TYPE_CHECKING:
    import numpy as np

    from medray.train.job import DataPlan

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


def search_data(config: MedrayConfig, storage: Storage, direct: bool) -> SearchData:
    """Fitted once in the driver, after Ray is up (the splits go into its object store)."""
    import ray

    from medray.train.job import plan_data

    data = plan_data(config, storage)
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


def trial_key(search: str, trial_id: str, direct: bool) -> str:
    """The folder that holds a trial's checkpoints."""
    return f"runs/{search}/trial_{trial_id}" if direct else f"runs/{search}/trials/{trial_id}"


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
    if direct:
        _train_here(worker_plan, config, storage, plan, shared)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from medray.train.loop import build_trainer

    filesystem, _ = storage.arrow_filesystem()
    trainer = build_trainer(
        worker_plan, training_datasets(storage, plan), ray.tune.get_context().get_trial_id(),
        storage.arrow_path(f"runs/{search}/trials"), filesystem, config.scaling, callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def _train_here(worker_plan, config: MedrayConfig, storage: Storage, plan, shared: SearchData) -> None:
    from medray.train.job import training_datasets
    from medray.train.loop import ArrayFeed, ShardFeed, fit

    seed = config.train.seed * 1000  # rank 0's seed: the same draws as a one-worker TorchTrainer
    batch_size = config.optim.batch_size

    def open_feeds():
        if shared.splits is not None:
            splits = shared.shared_splits()
            return (ArrayFeed.from_arrays(*splits["train"], batch_size, shuffle=True, seed=seed),
                    ArrayFeed.from_arrays(*splits["val"], 512, shuffle=False, seed=seed))
        datasets = training_datasets(storage, plan)
        cache = config.train.cache_data
        return (ShardFeed(datasets["train"], plan.preprocessor, plan.labels, batch_size, cache, True, seed).load(),
                ShardFeed(datasets["val"], plan.preprocessor, plan.labels, 512, cache, False, seed).load())

    fit(worker_plan, TrialRunner(config.scaling.use_gpu), open_feeds)
