"""The built-in MLP as an SDK trainer: ``workloads.trainer.entry:train`` on :class:`~workloads.sdk.pytorch.TorchRun`.

Run it as any entry point, under the launcher (which then owns telemetry, relaying, checkpoint sync and early
stopping)::

    python -m workloads.launcher --dataset-uri URI --training-id ID --hparams '{"epochs": 20}' -- \\
        python -m workloads.launcher.entrypoint workloads.trainer.entry:train

The hyperparameters are ``python -m workloads.trainer``'s (``epochs``, ``batch_size``, ``learning_rate``,
``hidden_size``, ``dropout``, ``seed``; each missing one at its default), and so is everything that decides the
figures: the model (:func:`~workloads.trainer.loop.build_model`), the steps and validation sums
(:func:`~workloads.trainer.loop.train_batches`, :func:`~workloads.trainer.loop.validation_sums`), the batch
order (``SplitLoader(order="global")``: the built-in's :class:`~workloads.sdk.loaders.EpochOrder`), the seeding
and deterministic kernels. So for the same seed it reports the same ``train_loss``, ``val_loss`` and
``val_accuracy`` (``val_rmse``, ``val_mae``) per epoch as the built-in trainer, on one process or under torchrun,
and writes the same checkpoint format with the same hyperparameters in it: either resumes the other's checkpoints.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch

from workloads.imports import import_in_background
from workloads.quiet import quiet_mlflow
from workloads.sdk.context import TrainerContext
from workloads.sdk.errors import ConfigError
from workloads.sdk.pytorch import TorchRun
from workloads.trainer.config import hyperparameters
from workloads.trainer.loop import EVAL_BATCH, EpochResult, build_model, loss_scale, train_batches, validation_sums
from workloads.trainer.task import head_for


def train(ctx: TrainerContext) -> None:
    """Train the built-in MLP on ``ctx``'s dataset to ``epochs`` (or an early stop) and log it."""
    try:
        hyper = hyperparameters(ctx.hparams)
    except ConfigError as exc:
        ctx.fail(str(exc), exc.exit_code)
    # Every setting goes into the checkpoints, defaults included, as the built-in trainer writes them, so a
    # resume with other settings is refused and either trainer resumes the other's checkpoints.
    ctx.hparams = asdict(hyper)
    threads = os.environ.get("GPUFLOW_TORCH_THREADS", "").strip()
    if threads.isdigit() and int(threads) >= 1:  # as the built-in trainer caps them (the figures depend on it)
        torch.set_num_threads(int(threads))
    head = head_for(ctx.task)
    with TorchRun(ctx, seed=hyper.seed, deterministic=True) as run:
        # Rank 0 logs the model at the end: MLflow loads while it trains. Only gpuflow's own loop runs beside the
        # import thread here (the SDK does not do this for user code, whose imports could race it).
        if run.is_main:
            quiet_mlflow()
            import_in_background("mlflow.pytorch", "mlflow.models")
        if ctx.tensor_shape is not None:
            raise ConfigError(
                f"the built-in MLP takes flat features; this dataset declares the tensor shape {list(ctx.tensor_shape)}"
            )
        train_split = run.loader("train", hyper.batch_size, order="global")
        val_split = run.loader("val", EVAL_BATCH, order="global")
        train_x, train_y = train_split.tensors()
        torch.manual_seed(hyper.seed)  # the start weights, as the built-in draws them
        model = build_model(head, len(ctx.class_names), hyper, train_x, train_y)
        net = run.wrap(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=hyper.learning_rate)
        scale = loss_scale(model, run.device)
        start = run.resume(model, optimizer)
        n, n_val = train_split.rows, val_split.rows
        for epoch in range(start + 1, hyper.epochs + 1):
            started = time.perf_counter()
            train_split.set_epoch(epoch)
            net.train()
            total = train_batches(net, optimizer, head, train_split, scale)
            loss_sum, count = run.all_sum([float(total.item()), float(train_split.rank_rows)])
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            train_seconds = time.perf_counter() - started
            sums = run.all_sum(validation_sums(model, head, val_split, scale))
            seconds = time.perf_counter() - started
            result = EpochResult(
                epoch=epoch,
                train_loss=loss_sum / count if run.world_size > 1 else float(total.item()) / n,
                validation=head.figures(sums, n_val),
                epoch_seconds=seconds,
                samples_per_second=n / max(train_seconds, 1e-9),
            )
            stop = run.report(epoch, result.metrics(), checkpoint=True)
            run.say(result.progress_line(hyper.epochs))  # once the epoch is in the store, as the built-in says it
            if stop:
                break
        # Logged with the model, not at the start: MLflow loads while the model trains (see TorchRun).
        described: dict[str, object] = {"optimizer": "adam", "dropout": hyper.dropout, "device": str(run.device)}
        if run.device.type == "cuda":
            described["device_name"] = torch.cuda.get_device_name(run.device)
        if run.world_size > 1:  # batch_size is per rank
            described.update(global_batch_size=hyper.batch_size * run.world_size, backend=run.group.backend)
        run.log_params(described)
        run.log_model(model, serialization_format="pt2")  # the MLP always exports, as the built-in logs it
