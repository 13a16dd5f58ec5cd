"""The Ray-free baseline for `benchmarks/train_overhead.py`: medray's pure training
pieces (`train.steps`) in a plain PyTorch loop, one process or DDP over gloo.

Run alone it is one process; under torchrun each rank takes its share of the train
and validation rows (DistributedSampler-style) and rank 0 writes the results. Either
way every epoch ends with a checkpoint (`train.checkpoint.save_checkpoint`, optimiser
state included) in a temporary folder, as the Ray path checkpoints every epoch.

    python benchmarks/ddp_baseline.py --storage URI --out FILE [--config YAML] [key=value ...]
    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        benchmarks/ddp_baseline.py --storage URI --out FILE [--config YAML] [key=value ...]

The overrides are config overrides (`data.dataset=NAME optim.epochs=6`), as for
`medray train`. `--out` gets JSON: when the first epoch started, and one row per epoch
with `finished_at` taken at the same point as the Ray loop's (after train+validation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def shuffled_rows(rows: int, rank: int, world: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's rows for one epoch, as torch's DistributedSampler picks them: one
    permutation shared by all ranks, padded to a multiple of `world`, every world-th row."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed + epoch))
    padding = (-rows) % world
    if padding:
        order = torch.cat([order, order[:padding]])
    return order[rank::world]


def batches(inputs: torch.Tensor, targets: torch.Tensor, index: torch.Tensor,
            batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(index), batch_size):
        chosen = index[start:start + batch_size]
        yield inputs[chosen], targets[chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="storage root holding the dataset")
    parser.add_argument("--out", required=True, help="where rank 0 writes the JSON results")
    parser.add_argument("--config", help="config file the overrides apply to")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()

    from medray.cluster.config import load_config
    from medray.cluster.storage import Storage
    from medray.train.checkpoint import save_checkpoint
    from medray.train.data.loading import read_split_arrays
    from medray.train.job import plan_training
    from medray.train.models import build_model_from_config
    from medray.train.models.batch_norm import sync_batch_norm
    from medray.train.modalities import modality
    from medray.train.steps import (build_optimizer, class_weights, epoch_metrics, gather_predictions, predict,
                                    share_of_rows, train_epoch, warmup_cosine)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    config = load_config(args.config, args.overrides)
    optim, train_cfg = config.optim, config.train
    # The same thread count as a Ray Train worker with scaling.cpus_per_worker CPUs.
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    storage = Storage(args.storage)
    plan = plan_training(config, storage)
    device = torch.device("cpu")
    mixed_precision = config.scaling.mixed_precision == "bf16"

    def rows_of(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = read_split_arrays(storage, plan.manifest, split)
        return (torch.from_numpy(plan.preprocessor.transform(features)),
                torch.from_numpy(plan.labels.apply(labels)))

    train_x, train_y = rows_of("train")
    val_x, val_y = rows_of("val")
    val_index = torch.arange(len(val_y))

    torch.manual_seed(train_cfg.seed)  # same initial weights on every rank
    model = build_model_from_config(config.model.family, plan.model_config)
    modality(plan.preprocessor.modality).prepare_model(model, plan.preprocessor)
    optimizer = build_optimizer(model, optim)
    per_rank_batch = max(1, optim.batch_size // world)
    steps_per_epoch = max(1, math.ceil(len(train_y) / world / per_rank_batch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        steps_per_epoch * optim.epochs, int(round(steps_per_epoch * optim.warmup_epochs))))
    weights = class_weights(plan.train_class_counts()) if optim.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=optim.label_smoothing)
    if world > 1:
        if config.scaling.sync_batch_norm:  # the global batch's BatchNorm moments, as train.loop trains
            model = sync_batch_norm(model, device)
        model = nn.parallel.DistributedDataParallel(model)
    augmenter = modality(plan.preprocessor.modality).augment if train_cfg.augment else None
    seed = train_cfg.seed * 1000 + rank
    generator = torch.Generator().manual_seed(seed)

    history: list[dict] = []
    first_epoch_started_at = time.time()
    for epoch in range(optim.epochs):
        started = time.perf_counter()
        train_batches = batches(train_x, train_y, shuffled_rows(len(train_y), rank, world, train_cfg.seed, epoch),
                                per_rank_batch)
        if augmenter:
            train_batches = ((augmenter(x, generator), y) for x, y in train_batches)
        loss_sum, seen = train_epoch(model, train_batches, optimizer, scheduler, loss_fn, device,
                                     optim.grad_clip, mixed_precision)
        totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        # Each rank scores its share of every validation batch, as train.loop does.
        logits, targets = gather_predictions(*predict(getattr(model, "module", model), share_of_rows(
            batches(val_x, val_y, val_index, 512), rank, world), device, mixed_precision))
        metrics = {"epoch": epoch, "train_loss": float(totals[0] / max(totals[1], 1.0)),
                   **epoch_metrics(logits, targets), "epoch_seconds": time.perf_counter() - started}
        history.append({**metrics, "finished_at": time.time()})
        if rank == 0:
            saving = time.perf_counter()
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(
                    directory, model, config.model.family, plan.preprocessor, plan.labels, plan.dataset_ref,
                    progress={"epoch": epoch, "metrics": metrics, "history": history},
                    train_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "epoch": epoch, "history": history},
                )
            history[-1]["checkpoint_seconds"] = time.perf_counter() - saving

    if rank == 0:
        Path(args.out).write_text(json.dumps({
            "world_size": world, "threads": torch.get_num_threads(), "train_rows": len(train_y),
            "first_epoch_started_at": first_epoch_started_at, "history": history,
        }, indent=2, default=float))
    if world > 1:
        # No rank leaves while rank 0 still saves: a gloo group torn down under a peer's
        # pending work aborts that peer ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
