"""The training tests' small WDBC run: the shipped attention config, cut to a few seconds."""

from __future__ import annotations

from medray.cluster.config import MedrayConfig, load_config
from support.project import PROJECT

CONFIGS = PROJECT / "train" / "configs"


def small_wdbc_config(*overrides: str) -> MedrayConfig:
    """train/configs/wdbc_attention.yaml for 3 epochs, 50 bootstrap draws, no early stop."""
    return load_config(CONFIGS / "wdbc_attention.yaml",
                       ["optim.epochs=3", "eval.bootstrap=50", "train.patience=0", *overrides])


def train_to_accuracy(model, x, y, lr: float, target: float, max_steps: int = 300) -> tuple[float, int]:
    """Full-batch Adam on (x, y) until training accuracy (checked every 10 steps, in eval
    mode: dropout off, BatchNorm on running statistics) reaches `target`:
    (accuracy, steps)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    accuracy, step = 0.0, 0
    for step in range(1, max_steps + 1):
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
            if accuracy >= target:
                break
    return accuracy, step
