"""Disease progression from 10 measurements: a small MLP trained on the Huber loss with gpuflow's PyTorch SDK.

The model carries its own scaling (the train split's feature means and deviations, the target's mean and
deviation), so it takes raw rows and answers in the target's units, as gpuflow evaluates and serves it; it
trains on the standardised target, where one Huber ``delta`` and one learning rate fit. The SDK
(workloads.sdk.pytorch.TorchRun) gives it the batches, resume, the reports with early stopping on val_rmse and
the logged model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workloads.sdk import TrainerContext
from workloads.sdk.pytorch import TorchRun


class Regressor(nn.Module):
    """Raw rows [N, F] -> progression [N, 1], in the target's units."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, x: np.ndarray, y: np.ndarray, hidden: int) -> None:
        super().__init__()
        std = x.std(axis=0)
        self.register_buffer("x_mean", torch.from_numpy(x.mean(axis=0)))
        self.register_buffer("x_std", torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))
        self.register_buffer("y_mean", torch.tensor(float(y.mean())))
        self.register_buffer("y_std", torch.tensor(float(y.std()) or 1.0))
        self.net = nn.Sequential(
            nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        """Values in the target's units -> standard deviations from its mean: where the Huber loss is taken."""
        return (y - self.y_mean) / self.y_std


def train(ctx: TrainerContext) -> None:
    hp = ctx.hparams
    if ctx.task != "regression":
        ctx.fail(f"this trainer fits a regression; the dataset's task is {ctx.task!r}", 3)
    epochs = int(hp.get("epochs", 60))
    with TorchRun(ctx, seed=int(hp.get("seed", 0)), deterministic=True, patience=hp.get("patience")) as run:
        x, y = ctx.read_split("train")  # the scaling's statistics: the whole train split, the same on every rank
        model = Regressor(x, y, int(hp.get("hidden_size", 32)))
        net = run.wrap(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=float(hp.get("learning_rate", 3e-3)))
        huber = nn.HuberLoss(delta=float(hp.get("huber_delta", 1.0)))
        train_batches = run.loader("train", batch_size=int(hp.get("batch_size", 32)))
        val_batches = run.loader("val", batch_size=256)
        start = run.resume(model, optimizer)
        for epoch in range(start + 1, epochs + 1):
            train_batches.set_epoch(epoch)
            net.train()
            loss_sum = rows = 0.0
            for xb, yb in train_batches:
                optimizer.zero_grad(set_to_none=True)
                loss = huber(model.standardise(net(xb).squeeze(1)), model.standardise(yb))  # through DDP's forward
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(yb)
                rows += len(yb)
            model.eval()
            squared = absolute = val_huber = seen = 0.0
            with torch.no_grad():
                for xb, yb in val_batches:
                    predicted = model(xb).squeeze(1)
                    error = predicted - yb
                    squared += float((error**2).sum())
                    absolute += float(error.abs().sum())
                    val_huber += float(huber(model.standardise(predicted), model.standardise(yb))) * len(yb)
                    seen += len(yb)
            loss_sum, rows, squared, absolute, val_huber, seen = run.all_sum(
                [loss_sum, rows, squared, absolute, val_huber, seen]
            )
            metrics = {
                "train_loss": loss_sum / rows,
                "val_loss": val_huber / seen,
                "val_rmse": (squared / seen) ** 0.5,
                "val_mae": absolute / seen,
            }
            run.say(f"epoch {epoch}/{epochs} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if run.report(epoch, metrics, checkpoint=True):
                break
        run.log_model(model)
