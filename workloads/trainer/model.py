"""The built-in MLP, with input normalisation (and, for regression, the target's scale) inside the model.

Keeping mean and std as buffers means the model logged to MLflow is self-contained: the evaluator and
the server feed raw float32 features ``[N, n_features]`` and get logits ``[N, n_classes]`` back, or for
regression ``[N, 1]`` values in the target's own units.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPClassifier(nn.Module):
    """Two hidden ReLU layers over standardised inputs; outputs logits in manifest label order."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, n_classes: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        layers: list[nn.Module] = [nn.Linear(n_features, hidden_size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(hidden_size, hidden_size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden_size, n_classes))
        self.net = nn.Sequential(*layers)

    def set_normalisation(self, train_x: torch.Tensor) -> None:
        """Take mean/std from the training split; constant features get std 1 instead of dividing by 0."""
        std = train_x.std(dim=0)
        self.mean.copy_(train_x.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class MLPRegressor(MLPClassifier):
    """The same network with one output, scaled back to the target's units: answers ``[N, 1]`` values."""

    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, n_features: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__(n_features, 1, hidden_size, dropout)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def set_target_scale(self, train_y: torch.Tensor) -> None:
        """The train split's target mean and spread; a constant target keeps spread 1."""
        std = train_y.std()
        self.target_mean.copy_(train_y.mean())
        self.target_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.target_std + self.target_mean
