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

Importing it costs no torch, MLflow, numpy or pyarrow: each loads when first used. See docs/trainers.md.
"""

from workloads.sdk.context import ContextError, TrainerContext, TrainerFailed

__all__ = ["ContextError", "TrainerContext", "TrainerFailed"]
