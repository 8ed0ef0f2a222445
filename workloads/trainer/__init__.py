"""The trainer workload: a standalone program that trains gpuflow's MLP on a prepared dataset.

The dataset's task decides the head: a classifier (logits in label order, cross-entropy, ``val_accuracy``) or a
regressor (one value in the target's units, squared error on the standardised target, ``val_rmse``/``val_mae``);
see ``task.py``. Tensor columns arrive flattened, as the manifest lists them.

The same MLP is also an SDK trainer, ``workloads.trainer.entry:train`` on ``TorchRun`` (run under the launcher;
see ``entry.py`` and docs/trainers.md): it shares the model, steps, validation sums, batch order and checkpoint
format with this command (``loop.py``, ``workloads/sdk``), so it reports the same figures for the same seed and
either resumes the other's checkpoints. This command keeps its own top-level loop (``run.py``) for now.

It knows nothing of Prefect, so the same image and command line run as a local process or a Kubernetes
Job (see ``blocks/compute.py``)::

    python -m workloads.trainer --dataset-uri URI --training-id ID [--epochs 20] [--batch-size 64]
        [--learning-rate 1e-3] [--hidden-size 128] [--dropout 0.0] [--seed 42] [--device auto|cpu|cuda]
        [--checkpoint-root URI] [--keep-checkpoints 3] [--early-stop off|plateau|divergence|both]
        [--patience 5] [--telemetry-interval 1.0]

Early stopping (off by default): ``plateau`` stops once the task's primary figure (val_accuracy, or val_rmse
for regression) has not improved for ``--patience``
epochs; ``divergence`` stops on a NaN/inf loss or train_loss rising 3 epochs in a row; ``both`` does both.
Why training ended is the ``gpuflow.stop_reason`` tag and ``stop_reason`` param, and is printed.

GPU telemetry (NVML; a machine without a GPU gets host figures and a note saying so) is sampled for the
whole training: per epoch ``epoch_gpu.*``, ``gpu_seconds`` and ``cumulative_gpu_seconds`` in the epoch's
metric batch; at the end ``gpu.*``, ``time_to_data_loaded_seconds``, ``time_to_first_step_seconds``,
``data_loading_seconds`` and the artifacts ``telemetry/summary.json`` and ``telemetry/series.csv.gz``.

Environment:
    MLFLOW_TRACKING_URI  tracking server or store (required).
    MLFLOW_RUN_ID        the run the flow created for this stage; a restarted trainer logs into it again (required).
    GPUFLOW_STORE_URI    data-store root; checkpoints go to ``<store>/checkpoints/<training id>/`` unless
                         ``--checkpoint-root`` is given (then ``<checkpoint root>/<training id>/``).
    AWS_*                boto3's standard variables for S3 stores (AWS_ENDPOINT_URL_S3 for MinIO and friends).
    GPUFLOW_TORCH_THREADS  optional cap on torch's CPU threads.
    GPUFLOW_TELEMETRY_INTERVAL  seconds between GPU samples when ``--telemetry-interval`` is not given (1).
    RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT  set by torchrun (see "Distributed training").
    GPUFLOW_DIST_TIMEOUT_SECONDS  distributed only: how long a rank waits for the others in the rendezvous and
                         every collective, rank 0 logging the model included (600), before it gives up.

Exit codes (a Kubernetes podFailurePolicy fails the Job at once on the permanent ones):
    0    trained (or already complete) and the model is logged.
    1    unexpected failure (MLflow or the store unreachable, a crash): a retry may pass; resumes from checkpoint.
    2    configuration error: bad argument, missing environment variable, no CUDA for ``--device cuda``,
         unknown MLflow run, checkpoints of this training id made with other settings. Permanent.
    3    dataset error: no manifest, missing split or column, unknown label. Permanent.
    130  interrupted (SIGINT); killed by a signal otherwise shows as 128+N / negative in the parent.
    Distributed, a failure in setup, an epoch's bookkeeping or the model logging ends every rank with the failing
    rank's code; a rank that lost its peers (one died, or the timeout passed) ends with 1 (on NCCL the watchdog
    may abort it instead: SIGABRT). torchrun itself
    exits 1 whatever its workers did: ``python -m workloads.trainer.launch`` (torchrun's own arguments) ends
    with the workers' code instead, so a podFailurePolicy still sees 2 and 3.

Output: one progress line per epoch on stdout, e.g.
``epoch 3/20 train_loss=0.4100 val_loss=0.3800 val_accuracy=0.9300 (0.21s, 8123 samples/s)`` (regression:
``val_loss=... val_rmse=... val_mae=...``), then
``stopped early after epoch N: <reason>`` when it did and ``telemetry: <one-line summary>``;
warnings and the one-line error message on stderr.

Distributed training: started by torchrun, the trainer trains one model with DistributedDataParallel (NCCL on
``cuda:$LOCAL_RANK``, gloo on CPU). On Kubernetes each pod of an Indexed Job runs::

    python -m torch.distributed.run --nnodes=N --nproc-per-node=G --node-rank=$JOB_COMPLETION_INDEX \\
        --master-addr=<index-0 pod's DNS name> --master-port=29500 -m workloads.trainer <arguments above>

(or ``python -m workloads.trainer.launch`` with the same arguments, for the exit codes). All ranks load the
dataset and train their own shard of each epoch's permutation (DistributedSampler's cut: padded to equal
shares); ``--batch-size`` is per rank, so the global batch is ``batch_size x WORLD_SIZE``. Validation is split
across the ranks and summed, so all ranks hold the same metrics. Rank 0 alone talks to MLflow (params, with
``world_size``, ``backend`` and ``global_batch_size``; per-epoch metrics; telemetry; the model), writes the
checkpoints into the shared store, decides early stops (broadcast to all) and prints the lines above. The
other ranks print one ``[rank N] epoch E/EPOCHS: S samples`` line per epoch; every rank's error line reads
``error: [rank N] ...``.
On a restart rank 0 picks the newest complete checkpoint and every rank loads that one, so a replaced pod
rejoins at the same epoch and the same MLflow run; the checkpoint format is the single-process one (plus each
rank's RNG state), so either kind of run resumes the other's. GPU telemetry: each rank samples only its own
device; the logged ``gpu.*``/``epoch_gpu.*`` figures are rank 0's, ``all_ranks_gpu_seconds`` sums every
rank's. Every node must see the same store (s3:// or a shared volume) and reach the master address.
"""
