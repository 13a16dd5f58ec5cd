"""Pure training pieces: one epoch of updates, one pass of evaluation, the schedule.
No Ray here; `train/loop.py` feeds these with Ray Data shards. Augmentation is each
modality's (`medray.train.modalities`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from medray.cluster.config import OptimConfig


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """`optim.optimizer` over the model's parameters (see OptimConfig for adamw vs adam)."""
    optimizer_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[optim.optimizer]
    return optimizer_cls(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LambdaLR factor: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (a class never seen gets weight 0)."""
    counts_t = torch.tensor(counts, dtype=torch.float32)
    weights = torch.where(counts_t > 0, counts_t.sum() / (len(counts) * counts_t.clamp(min=1)), torch.zeros(()))
    return weights


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    grad_clip: float | None = None,
    mixed_precision: bool = False,
) -> tuple[float, int]:
    """One pass of updates; returns (summed loss, examples seen)."""
    model.train()
    total_loss, seen = 0.0, 0
    for inputs, labels in batches:
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, mixed_precision):
            loss = loss_fn(model(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(labels)
        seen += len(labels)
    return total_loss, seen


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    mixed_precision: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float32, labels (N,)) over all batches."""
    model.eval()
    logits, labels = [], []
    for inputs, targets in batches:
        with autocast(device, mixed_precision):
            out = model(inputs.to(device, non_blocking=True))
        logits.append(out.float().cpu().numpy())
        labels.append(targets.numpy())
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def share_of_rows(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rank: int,
                  world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Rows `rank`, `rank + world`, ... of each batch: with every worker scoring its share
    of the same batches, each validation row is scored once across the group."""
    for inputs, targets in batches:
        if world > 1:
            inputs, targets = inputs[rank::world], targets[rank::world]
        if len(targets):
            yield inputs, targets


def gather_predictions(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every worker's (logits, labels), concatenated in rank order, on every worker (a
    no-op outside a process group). The rows come out grouped by worker, which no
    validation metric depends on."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return logits, labels
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (logits, labels))
    scored = [(x, y) for x, y in parts if len(y)]
    if not scored:
        return logits, labels
    return np.concatenate([x for x, _ in scored]), np.concatenate([y for _, y in scored])


def epoch_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Validation loss (plain cross-entropy, comparable across class weightings),
    AUROC (macro one-vs-rest beyond two classes) and accuracy."""
    from medray.train.evaluate import auroc_with_ci

    if len(labels) == 0:
        return {"val_loss": None, "val_auroc": None, "val_accuracy": None}
    logits_t = torch.from_numpy(logits)
    loss = float(nn.functional.cross_entropy(logits_t, torch.from_numpy(labels)))
    probs = torch.softmax(logits_t, dim=1).numpy()
    auroc = auroc_with_ci(labels, probs if probs.shape[1] > 2 else probs[:, 1], n_boot=0)["value"]
    return {
        "val_loss": loss,
        "val_auroc": auroc,
        "val_accuracy": float((probs.argmax(axis=1) == labels).mean()),
    }
