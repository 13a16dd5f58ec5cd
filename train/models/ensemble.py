"""An ensemble of one family's models, answering as one model: what cross-validation
(`tune/crossval.py`) trains, one member per fold.

Its "logits" are the log of the members' mean probability, so softmax of them is that
mean exactly, and everything written for one model (temperature scaling, thresholds,
conformal sets, out-of-distribution scores, ONNX export, Serve) takes an ensemble
unchanged. The members share one preprocessor, so a request is decoded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """Mean of the members' probabilities. `config` is the members' config (they share
    it), so a checkpoint stores it once with the member count (`train/checkpoint.py`)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.config = members[0].config
        if hasattr(members[0], "attention_weights"):
            # Only then: explanations ask `hasattr(model, "attention_weights")`.
            self.attention_weights = self._mean_attention_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_log_probability([member(x) for member in self.members])

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(every member's penultimate features side by side (B, M * D), the ensemble's
        logits): what the out-of-distribution detector is fitted on."""
        pairs = [member.features_and_logits(x) for member in self.members]
        return torch.cat([f for f, _ in pairs], dim=1), mean_log_probability([z for _, z in pairs])

    def _mean_attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The members' per-token importance, averaged (rows still sum to 1)."""
        return torch.stack([member.attention_weights(x) for member in self.members]).mean(dim=0)


def mean_log_probability(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """log(mean_m softmax(logits_m)), computed stably: (B, K)."""
    stacked = torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits])
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(logits))))


def members_of(model: nn.Module) -> list[nn.Module] | None:
    """An ensemble's members, or None for a single model: for explanations that hook
    inside a model (Grad-CAM, token embeddings) and so average over members."""
    return list(model.members) if isinstance(model, Ensemble) else None
