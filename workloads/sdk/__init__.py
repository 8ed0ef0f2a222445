"""The trainer SDK's core: the ``gpuflow-trainer/1`` contract from inside a Python trainer, framework-agnostic.

::

    from workloads.sdk import TrainerContext

    def train(ctx: TrainerContext) -> None:        # python -m workloads.launcher ... -- \\
        x, y = ctx.read_split("train")             #     python -m workloads.launcher.entrypoint my.module:train
        for step in range(1, ctx.hparams.get("epochs", 10) + 1):
            ...
            ctx.report(step, {"train_loss": loss, ctx.primary_metric: accuracy})
            if ctx.should_stop():
                break
        ctx.log_model(model)

Importing it costs no torch, MLflow, numpy or pyarrow: each loads when first used. For PyTorch,
``workloads.sdk.pytorch.TorchRun`` (also importable from here, loading torch then) adds the device,
DistributedDataParallel, streaming loaders sharded across ranks, resume and early stopping. See docs/trainers.md.
"""

from typing import TYPE_CHECKING, Any

from workloads.sdk.context import ContextError, TrainerContext, TrainerFailed

if TYPE_CHECKING:
    from workloads.sdk.loaders import SplitLoader
    from workloads.sdk.pytorch import TorchRun

__all__ = ["ContextError", "SplitLoader", "TorchRun", "TrainerContext", "TrainerFailed"]


def __getattr__(name: str) -> Any:
    """``TorchRun`` and ``SplitLoader`` load torch: only when asked for."""
    if name == "TorchRun":
        from workloads.sdk.pytorch import TorchRun

        return TorchRun
    if name == "SplitLoader":
        from workloads.sdk.loaders import SplitLoader

        return SplitLoader
    raise AttributeError(f"module 'workloads.sdk' has no attribute {name!r}")
