"""A small CNN for the 8x8 digits, trained with gpuflow's PyTorch SDK (workloads.sdk.pytorch.TorchRun).

Conv2d + BatchNorm blocks, AdamW with a one-cycle learning rate, cross-entropy with label smoothing. The SDK
gives it the device (and DistributedDataParallel under torchrun), the image batches streamed from the prepared
splits (each rank its share), resume from the newest checkpoint, the reports and the logged model.
"""

from __future__ import annotations

import torch
from torch import nn

from workloads.sdk import TrainerContext
from workloads.sdk.pytorch import TorchRun

PIXEL_MAX = 16.0  # the digits' pixels run 0..16: the model scales them itself, so it is served on raw pixels


class DigitsCNN(nn.Module):
    """[N, 1, 8, 8] pixels -> logits [N, classes]."""

    def __init__(self, classes: int, channels: int) -> None:
        super().__init__()

        def block(into: int, out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(into, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU())

        self.features = nn.Sequential(block(1, channels), block(channels, 2 * channels), nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * channels * 16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x / PIXEL_MAX))


def train(ctx: TrainerContext) -> None:
    hp = ctx.hparams
    if ctx.task != "classification" or ctx.input_shape != (1, 8, 8):
        ctx.fail(f"this trainer classifies [1, 8, 8] images; the dataset has {ctx.task} on {ctx.input_shape}", 3)
    epochs = int(hp.get("epochs", 15))
    with TorchRun(ctx, seed=int(hp.get("seed", 0)), deterministic=True) as run:
        model = DigitsCNN(len(ctx.class_names), int(hp.get("channels", 16)))
        net = run.wrap(model)
        train_batches = run.loader("train", batch_size=int(hp.get("batch_size", 64)))
        val_batches = run.loader("val", batch_size=256)
        optimizer = torch.optim.AdamW(model.parameters(), weight_decay=float(hp.get("weight_decay", 1e-4)))
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=float(hp.get("max_learning_rate", 5e-3)), total_steps=epochs * len(train_batches)
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=float(hp.get("label_smoothing", 0.1)))
        start = run.resume(model, optimizer, scheduler)
        for epoch in range(start + 1, epochs + 1):
            train_batches.set_epoch(epoch)
            net.train()
            loss_sum = rows = 0.0
            for x, y in train_batches:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(y)
                rows += len(y)
            model.eval()
            val_loss = right = seen = 0.0
            with torch.no_grad():
                for x, y in val_batches:
                    logits = model(x)
                    val_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                    right += float((logits.argmax(1) == y).sum())
                    seen += len(y)
            loss_sum, rows, val_loss, right, seen = run.all_sum([loss_sum, rows, val_loss, right, seen])
            metrics = {"train_loss": loss_sum / rows, "val_loss": val_loss / seen, "val_accuracy": right / seen}
            run.say(f"epoch {epoch}/{epochs} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if run.report(epoch, metrics, checkpoint=True):
                break
        run.log_model(model)
