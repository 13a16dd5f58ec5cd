"""The training tests' small WDBC run: the shipped attention config, cut to a few seconds."""

from __future__ import annotations

from medray.cluster.config import MedrayConfig, load_config
from support.project import PROJECT

CONFIGS = PROJECT / "train" / "configs"


def small_wdbc_config(*overrides: str) -> MedrayConfig:
    """train/configs/wdbc_attention.yaml for 3 epochs, 50 bootstrap draws, no early stop."""
    return load_config(CONFIGS / "wdbc_attention.yaml",
                       ["optim.epochs=3", "eval.bootstrap=50", "train.patience=0", *overrides])
