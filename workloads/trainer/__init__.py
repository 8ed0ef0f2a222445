"""The trainer workload: a standalone program that trains gpuflow's MLP classifier on a prepared dataset.

It knows nothing of Prefect, so the same image and command line run as a local process or a Kubernetes
Job (see ``blocks/compute.py``)::

    python -m workloads.trainer --dataset-uri URI --training-id ID [--epochs 20] [--batch-size 64]
        [--learning-rate 1e-3] [--hidden-size 128] [--dropout 0.0] [--seed 42] [--device auto|cpu|cuda]
        [--checkpoint-root URI] [--keep-checkpoints 3] [--early-stop off|plateau|divergence|both]
        [--patience 5] [--telemetry-interval 1.0]

Early stopping (off by default): ``plateau`` stops once val_accuracy has not improved for ``--patience``
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

Exit codes (a Kubernetes podFailurePolicy fails the Job at once on the permanent ones):
    0    trained (or already complete) and the model is logged.
    1    unexpected failure (MLflow or the store unreachable, a crash): a retry may pass; resumes from checkpoint.
    2    configuration error: bad argument, missing environment variable, no CUDA for ``--device cuda``,
         unknown MLflow run, checkpoints of this training id made with other settings. Permanent.
    3    dataset error: no manifest, missing split or column, unknown label. Permanent.
    130  interrupted (SIGINT); killed by a signal otherwise shows as 128+N / negative in the parent.

Output: one progress line per epoch on stdout, e.g.
``epoch 3/20 train_loss=0.4100 val_loss=0.3800 val_accuracy=0.9300 (0.21s, 8123 samples/s)``, then
``stopped early after epoch N: <reason>`` when it did and ``telemetry: <one-line summary>``;
warnings and the one-line error message on stderr.
"""
