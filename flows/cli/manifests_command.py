"""``gpuflow manifests train|serve|rbac``: print the Kubernetes manifests gpuflow would apply, touching no cluster.

The YAML comes from the same functions the Job runner and the cluster canary use (``tasks.kube.manifests``),
and the trainer's command line from the train stage's own ``trainer_workload``, so a reviewed or GitOps-applied
manifest is exactly what a pipeline run would create. Secret values never appear: only ``secretKeyRef``s.

Importing this module costs only argparse (the ``gpuflow`` parser imports it for every command).

Wiring (flows/cli/__init__.py)::

    add_manifests_parser(commands)           # in build_parser()
    if args.command == "manifests": return manifests_command(args)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flows.cli.arguments import EXIT_OK, EXIT_USAGE, add_trainer_options

# Block fields a flag sets besides the pod fields (blocks.kubernetes_pod.POD_FIELDS); a flag's dest is the field.
_JOB_FLAGS = ("nodes", "active_deadline_seconds", "backoff_limit", "ttl_seconds_after_finished", "rendezvous_port")
_S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def add_manifests_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``manifests`` (with ``train``, ``serve`` and ``rbac``) to the ``gpuflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "manifests",
        help="print the Kubernetes manifests gpuflow would apply (review, GitOps); touches no cluster",
        description="Print multi-document YAML on stdout: the training Job (and headless Service), the model "
        "servers, or the RBAC objects. Nothing is sent to a cluster. See docs/kubernetes.md.",
    )
    kinds = parser.add_subparsers(dest="manifest_kind", required=True, metavar="KIND")

    train = kinds.add_parser(
        "train",
        help="the training Job (plus a headless Service when --nodes > 1)",
        description="The Job the train stage would create for these trainer options on a KubernetesGPUJob "
        "target. Flags override the settings of --block.",
    )
    _pod_options(train)
    job = train.add_argument_group("Job")
    job.add_argument("--nodes", type=int, help="pods training together; > 1: Indexed Job + torchrun (default 1)")
    job.add_argument("--active-deadline-seconds", type=int, help="fail the Job after this long (default 21600)")
    job.add_argument("--backoff-limit", type=int, help="pod failures retried (default 3)")
    job.add_argument("--ttl-seconds-after-finished", type=int, help="delete the finished Job after (default 3600)")
    job.add_argument("--rendezvous-port", type=int, help="torchrun rendezvous port (default 29500)")
    trainer = train.add_argument_group("trainer (as the train flow passes them)")
    trainer.add_argument("--dataset", required=True, metavar="URI", help="prepared dataset URI (prepare's output)")
    trainer.add_argument("--run-id", required=True, help="MLflow run the trainer logs into (the stage creates one)")
    trainer.add_argument("--training-id", help="checkpoint folder name (default: train-<run id>)")
    trainer.add_argument("--model-name", help="model name label (default gpuflow-digits)")
    add_trainer_options(trainer)
    trainer.add_argument("--telemetry-interval", type=float, help="seconds between GPU samples (trainer default 1)")
    _service_options(train)

    serve = kinds.add_parser(
        "serve",
        help="the model server Deployments and Services (and an HTTPRoute with --gateway)",
        description="The stable server Deployment and its Service; with --canary-model-uri also the canary "
        "Deployment (both tracks behind the one Service: replica counts set the split); with --gateway the "
        "per-track Services and a Gateway API HTTPRoute weighting them. Server options go after `--`.",
    )
    serve.add_argument("--model-uri", required=True, metavar="URI", help="stable model, e.g. models:/gpuflow-digits/3")
    serve.add_argument("--name", help="server name (default: the model name from --model-uri)")
    serve.add_argument("--model-version", help="version label (default: from --model-uri)")
    serve.add_argument("--replicas", type=int, default=2, help="stable replicas (default 2)")
    serve.add_argument("--canary-model-uri", metavar="URI", help="canary model, e.g. models:/gpuflow-digits/4")
    serve.add_argument("--canary-version", help="canary version label (default: from --canary-model-uri)")
    serve.add_argument("--canary-replicas", type=int, default=1, help="canary replicas (default 1)")
    serve.add_argument("--canary-weight", type=int, metavar="PCT", help="canary traffic %% (with --gateway)")
    serve.add_argument("--gateway", help="Gateway for an HTTPRoute split by weight")
    serve.add_argument("--gateway-namespace", help="namespace of the Gateway (default: the route's)")
    _pod_options(serve)
    _service_options(serve)
    serve.add_argument("server_args", nargs=argparse.REMAINDER, help="after `--`: server options (docs/serving.md)")

    rbac = kinds.add_parser(
        "rbac",
        help="ServiceAccounts, the Role with the fewest verbs the flows need, and its RoleBinding",
        description="What deployments/kubernetes/rbac.yaml holds, for another namespace or with Gateway API.",
    )
    rbac.add_argument("--namespace", default="gpuflow")
    rbac.add_argument("--service-account", default="gpuflow-flows", help="service account of flow-run pods")
    rbac.add_argument("--workload-service-account", default="gpuflow-workload", help="of training/server pods")
    rbac.add_argument("--http-routes", action="store_true", help="allow managing Gateway API HTTPRoutes")
    return parser


def _pod_options(parser: argparse.ArgumentParser) -> None:
    pod = parser.add_argument_group("pod (default: the block's defaults: KubernetesGPUJob, KubernetesServing)")
    pod.add_argument(
        "--block",
        metavar="NAME",
        help="take the settings from this saved block (train: KubernetesGPUJob, serve: "
        "KubernetesServing, whose env, secret_keys, server_args and server_name are used too)",
    )
    pod.add_argument("--image", help="workloads image (required unless --block gives one)")
    pod.add_argument("--namespace")
    pod.add_argument("--service-account")
    pod.add_argument("--gpus", type=int, help="GPUs per pod (default 0)")
    pod.add_argument("--gpu-resource", help="nvidia.com/gpu (default) or a MIG profile, nvidia.com/mig-1g.10gb")
    pod.add_argument("--cpu-request")
    pod.add_argument("--cpu-limit")
    pod.add_argument("--memory-request")
    pod.add_argument("--memory-limit")
    pod.add_argument("--node-selector", action="append", type=_key_value, metavar="KEY=VALUE", help="repeatable")
    pod.add_argument(
        "--toleration",
        dest="tolerations",
        action="append",
        type=_toleration,
        metavar="KEY[=VALUE]:EFFECT",
        help="repeatable; default with GPUs: nvidia.com/gpu:NoSchedule",
    )
    pod.add_argument("--priority-class")
    pod.add_argument("--image-pull-secret", dest="image_pull_secrets", action="append", metavar="NAME")
    pod.add_argument("--secret-name", help="Secret holding the secret variables, referenced by key")
    pod.add_argument("--scratch-size")
    pod.add_argument("--shm-size")
    pod.add_argument("--label", dest="labels", action="append", type=_key_value, metavar="KEY=VALUE")


def _service_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("services the workload reaches")
    where.add_argument("--tracking-uri", help="MLflow tracking URI as seen from the pods")
    where.add_argument("--tracking", metavar="BLOCK", help="saved MLflowTracking block instead of --tracking-uri")
    where.add_argument("--store-uri", help="data-store root as seen from the pods, e.g. s3://bucket/gpuflow")
    where.add_argument("--s3-endpoint-url", help="S3 endpoint (MinIO and friends)")
    where.add_argument("--s3-region")
    where.add_argument("--data-store", metavar="BLOCK", help="saved DataStore block instead of --store-uri")
    where.add_argument(
        "--secret-env",
        action="append",
        metavar="KEY",
        help="variable read from --secret-name by key (repeatable; default for an s3:// store: "
        + ", ".join(_S3_SECRET_KEYS)
        + ")",
    )


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _toleration(text: str) -> dict[str, str]:
    spec, sep, effect = text.rpartition(":")
    if not sep or not spec or not effect:
        raise argparse.ArgumentTypeError(f"expected KEY[=VALUE]:EFFECT, e.g. nvidia.com/gpu:NoSchedule, got {text!r}")
    key, has_value, value = spec.partition("=")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def manifests_command(args: argparse.Namespace, out: Any = None) -> int:
    """Print the manifests; 2 with one line on stderr for a bad option or block, 0 otherwise."""
    from tasks.core.errors import ConfigurationError

    stream = out or sys.stdout
    try:
        documents = _build(args)
    except ConfigurationError as exc:
        print(f"gpuflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import yaml

    stream.write(yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True, width=120))
    stream.flush()
    return EXIT_OK


def _build(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tasks.kube import manifests

    if args.manifest_kind == "rbac":
        return manifests.rbac_manifests(
            args.namespace,
            args.service_account,
            http_routes=args.http_routes,
            workload_service_account=args.workload_service_account,
        )
    target = _target(args)
    if args.manifest_kind == "train":
        return manifests.training_manifests(_trainer_spec(args), target.job_settings())
    return _serve(args, target)


def _target(args: argparse.Namespace) -> Any:
    """The block the stage would use, from --block (if any) with the given flags over it: a KubernetesGPUJob for
    ``train``, a KubernetesServing for ``serve`` (the runner's and the rollout's own settings paths)."""
    from pydantic import ValidationError

    from blocks.kubernetes import KubernetesGPUJob
    from blocks.kubernetes_pod import POD_FIELDS
    from blocks.kubernetes_serving import KubernetesServing, resolve_kubernetes_serving
    from tasks.core.errors import ConfigurationError

    serve = args.manifest_kind == "serve"
    cls = KubernetesServing if serve else KubernetesGPUJob
    settable = set(POD_FIELDS + _JOB_FLAGS) & set(cls.model_fields)
    fields: dict[str, Any] = {}
    if args.block:
        block = resolve_kubernetes_serving(args.block) if serve else _load_block(args.block)
        fields = block.model_dump(include=set(cls.model_fields) - {"credentials"})
    for name in settable:
        value = getattr(args, name, None)
        if value is None:
            continue
        fields[name] = dict(value) if name in ("node_selector", "labels") else value
    if not fields.get("image"):
        raise ConfigurationError(f"--image is required (or --block naming a {cls.__name__} block with an image)")
    try:
        return cls(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"bad Kubernetes settings: {problems}") from None


def _load_block(name: str) -> Any:
    from blocks.kubernetes import KubernetesGPUJob
    from tasks.core.errors import ConfigurationError

    slug = KubernetesGPUJob.get_block_type_slug()
    short = name.split("/", 1)[1] if name.startswith(f"{slug}/") else name
    try:
        return KubernetesGPUJob.load(short)
    except ValueError as exc:
        raise ConfigurationError(f"no {slug} block named {short!r}: {exc}") from None


def _tracking(args: argparse.Namespace) -> Any:
    from blocks.mlflow_tracking import MLflowTracking, resolve_tracking
    from tasks.core.errors import ConfigurationError

    if not (args.tracking_uri or args.tracking):
        raise ConfigurationError(
            "give --tracking-uri (e.g. http://mlflow.gpuflow:5000) or --tracking BLOCK: pods cannot use this "
            "machine's embedded MLflow store"
        )
    from tasks.kube.reachable import check_tracking_uri

    tracking = MLflowTracking(tracking_uri=args.tracking_uri) if args.tracking_uri else resolve_tracking(args.tracking)
    check_tracking_uri(tracking.uri, "gpuflow manifests")
    return tracking


def _store(args: argparse.Namespace) -> Any:
    from blocks.data_store import DataStore, resolve_data_store
    from tasks.core.errors import ConfigurationError

    if not (args.store_uri or args.data_store):
        raise ConfigurationError(
            "give --store-uri (e.g. s3://bucket/gpuflow) or --data-store BLOCK: pods cannot use this machine's "
            "embedded store"
        )
    from tasks.kube.reachable import check_store_uri

    if args.store_uri:
        store = DataStore(root_uri=args.store_uri, s3_endpoint_url=args.s3_endpoint_url, s3_region=args.s3_region)
    else:
        store = resolve_data_store(args.data_store)
    check_store_uri(store.root, "gpuflow manifests")
    return store


def _secret_keys(args: argparse.Namespace, store_root: str) -> list[str]:
    if args.secret_env is not None:
        return list(args.secret_env)
    return list(_S3_SECRET_KEYS) if store_root.startswith("s3://") else []


def _trainer_spec(args: argparse.Namespace) -> Any:
    """The train stage's own WorkloadSpec; secret keys the Secret must hold are added by name (no values)."""
    import dataclasses

    from tasks.core.settings import DEFAULT_MODEL_NAME
    from tasks.training.trainer_job import trainer_workload

    store = _store(args)
    spec = trainer_workload(
        dataset_uri=args.dataset,
        training_id=args.training_id or f"train-{args.run_id}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hidden_size=args.hidden_size,
        seed=args.seed,
        device=args.device,
        run_id=args.run_id,
        tracking=_tracking(args),
        store=store,
        model_name=args.model_name or DEFAULT_MODEL_NAME,
        early_stop=args.early_stop,
        patience=args.patience,
        telemetry_interval=args.telemetry_interval,
    )
    extra = {key: "" for key in _secret_keys(args, store.root) if key not in spec.secret_env}
    return dataclasses.replace(spec, secret_env={**spec.secret_env, **extra}) if extra else spec


def _serve(args: argparse.Namespace, block: Any) -> list[dict[str, Any]]:
    """The server objects a rollout with this block creates: the Deployments come from the rollout's own
    :func:`tasks.kube.servers.track_deployment`, with the command's store, secret keys and server flags added to
    the block as the block's own ``env``, ``secret_keys`` and ``server_args``."""
    from tasks.core.errors import ConfigurationError
    from tasks.kube import manifests
    from tasks.kube.servers import block_server_name, server_env, track_deployment

    pod = block.pod_settings()
    model, version = _model_and_version(args.model_uri, args.model_version, "--model-uri")
    name = manifests.server_name(args.name) if args.name else block_server_name(block, model)
    tracking_uri = block.tracking_uri or _tracking(args).uri  # the block's wins, as in a rollout
    env = server_env(block, tracking_uri)
    store = _store(args) if (args.store_uri or args.data_store) else None
    secret_keys = [k for k in _secret_keys(args, store.root if store else "") if k not in env]
    secret_keys += [k for k in block.secret_keys if k not in secret_keys]
    server_args = list(args.server_args)
    if server_args[:1] == ["--"]:
        server_args = server_args[1:]
    block = block.model_copy(
        update={
            "env": {**block.env, **(store.workload_env() if store is not None else {})},
            "secret_keys": secret_keys,
            "server_args": [*block.server_args, *server_args],
        }
    )
    common = {"tracking_uri": tracking_uri, "pod": pod}
    documents = [
        track_deployment(
            block,
            name,
            track="stable",
            model_uri=args.model_uri,
            model_version=version,
            replicas=args.replicas,
            **common,
        )
    ]
    if args.canary_model_uri:
        _, canary_version = _model_and_version(args.canary_model_uri, args.canary_version, "--canary-model-uri")
        documents.append(
            track_deployment(
                block,
                name,
                track="canary",
                model_uri=args.canary_model_uri,
                model_version=canary_version,
                replicas=args.canary_replicas,
                **common,
            )
        )
    documents.append(manifests.server_service(name, pod))
    if args.canary_weight is not None and not args.gateway:
        raise ConfigurationError(
            "--canary-weight needs --gateway: without a Gateway the split follows the replica counts "
            "(--replicas, --canary-replicas)"
        )
    if args.gateway:
        weight = 0 if args.canary_weight is None else args.canary_weight
        if not 0 <= weight <= 100:
            raise ConfigurationError(f"--canary-weight must be a percentage 0-100, got {weight}")
        if weight and not args.canary_model_uri:
            raise ConfigurationError("--canary-weight above 0 needs --canary-model-uri")
        weights = {"stable": 100 - weight, "canary": weight} if args.canary_model_uri else {"stable": 100}
        documents += [manifests.track_service(name, track, pod) for track in weights]  # type: ignore[arg-type]
        documents.append(
            manifests.http_route(
                name, gateway=args.gateway, gateway_namespace=args.gateway_namespace, weights=weights, settings=pod
            )
        )
    return documents


def _model_and_version(uri: str, given: str | None, what: str) -> tuple[str, str]:
    """``models:/<name>/<version>`` -> (name, version); other URIs need --model-version / --canary-version."""
    from tasks.core.errors import ConfigurationError

    parts = uri[len("models:/") :].split("/") if uri.startswith("models:/") else []
    model = parts[0].split("@")[0] if parts else ""
    version = given or (parts[1] if len(parts) == 2 and parts[1].isdigit() else "")
    if not version:
        flag = "--model-version" if what == "--model-uri" else "--canary-version"
        raise ConfigurationError(f"{what} {uri!r} names no version: give {flag} (the gpuflow.io/model-version label)")
    return model or "model", version
