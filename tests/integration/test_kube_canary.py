"""The rollout stage on the emulated Kubernetes cluster: real Deployments, Services, pods and HTTPRoutes.

Every server pod is a real ``python -m workloads.server`` process the emulator's controllers start from the
Deployments the rollout creates; the rollout talks to the emulated API server with the real ``kubernetes``
client through the kubeconfig, scrapes each pod's /metrics through ``pods/<pod>:8080/proxy`` and replays the
labelled test split through ``services/<name>:http/proxy`` (or through a gateway that follows the HTTPRoute),
so the split really comes from the replica ratio or the route's weights. MLflow is a real ``mlflow server`` and
the store an S3 bucket (moto's server) for the module, as the isolated pods cannot read the test's files; Prefect
is the session's test server.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from blocks.canary_policy import CanaryPolicy
from blocks.kubernetes_serving import KubernetesServing
from flows.rollout import RolloutResult, rollout
from tasks.core.errors import ConfigurationError, RetryableError
from tasks.kube.cluster_metrics import TrackCounters
from tasks.kube.cluster_serving import canary_replicas
from tasks.kube.servers import server_name_for
from tasks.rollout.server_metrics import ServerSample
from tasks.rollout.serving import ServerNotReady
from tests.conftest import MlflowServer, S3Server
from tests.fixtures.cluster_services import services_env
from tests.fixtures.kube import KubeCluster
from tests.fixtures.kube.gateway import RouteGateway
from tests.fixtures.models import (
    RolloutHome,
    aliases,
    champion_and_challenger,
    register_version,
    registry_client,
    rollout_home,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

IMAGE = "gpuflow/workloads:test"
FAST = {
    "analysis_seconds": 2.0,
    "check_interval_seconds": 0.5,
    "min_requests": 15,
    "local_requests_per_second": 120,
    "local_concurrency": 4,
    "local_request_timeout_seconds": 5.0,
    "min_accuracy": 0.8,
    "min_agreement": 0.8,
    "max_error_rate": 0.05,
    "max_p95_latency_ratio": 3.0,
    "latency_tolerance_seconds": 0.05,  # pods on 2 busy cores behind a proxy: tens of ms of noise
    "server_start_timeout_seconds": 120.0,
}


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, mlflow_server: MlflowServer
) -> Iterator[RolloutHome]:
    """One set-up for the module, on the MLflow server and an S3 bucket: the digits dataset and two logged models
    (good, shuffled labels)."""
    env = services_env(s3_server, mlflow_server)
    with rollout_home(tmp_path_factory.mktemp("kube-rollout-home"), env=env) as made:
        yield made


@pytest.fixture
def model_name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


def _policy(**fields: Any) -> str:
    name = f"kube-rollout-{uuid.uuid4().hex[:8]}"
    CanaryPolicy(**{**FAST, **fields}).save(name)
    return name


def _serving(cluster: KubeCluster, **fields: Any) -> str:
    name = f"kube-serving-{uuid.uuid4().hex[:8]}"
    KubernetesServing(
        image=IMAGE,
        namespace=cluster.namespace,
        cpu_request="100m",
        memory_request="256Mi",
        memory_limit="3Gi",
        poll_interval_seconds=0.2,
        image_pull_grace_seconds=0,
        **fields,
    ).save(name)
    return name


def _deployment(cluster: KubeCluster, name: str) -> Any | None:
    """A Deployment read with the real client, or None when there is none."""
    try:
        return kubernetes.client.AppsV1Api(cluster.api).read_namespaced_deployment(name, cluster.namespace)
    except kubernetes.client.exceptions.ApiException as exc:
        assert exc.status == 404, exc
        return None


def _service_names(cluster: KubeCluster) -> set[str]:
    services = kubernetes.client.CoreV1Api(cluster.api).list_namespaced_service(cluster.namespace)
    return {s.metadata.name for s in services.items}


def _server_pods(cluster: KubeCluster, server: str, track: str) -> list[dict[str, Any]]:
    live = cluster.pods(f"gpuflow.io/model={server},gpuflow.io/track={track}")
    return [p for p in live if not p["metadata"].get("deletionTimestamp")]


def _model_uri_of(deployment: Any) -> str:
    command = deployment.spec.template.spec.containers[0].command
    return str(command[command.index("--model-uri") + 1])


class ReplicaRecorder:
    """Polls both Deployments with the real client and keeps every distinct (stable, canary) replica pair."""

    def __init__(self, cluster: KubeCluster, server: str) -> None:
        self._apps = kubernetes.client.AppsV1Api(cluster.api)
        self._names = (f"{server}-stable", f"{server}-canary")
        self._ns = cluster.namespace
        self.pairs: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _replicas(self, name: str) -> int:
        try:
            return int(self._apps.read_namespaced_deployment(name, self._ns).spec.replicas or 0)
        except kubernetes.client.exceptions.ApiException:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            pair = (self._replicas(self._names[0]), self._replicas(self._names[1]))
            if not self.pairs or self.pairs[-1] != pair:
                self.pairs.append(pair)
            self._stop.wait(0.05)

    def __enter__(self) -> ReplicaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _in_order(wanted: list[Any], seen: list[Any]) -> bool:
    """Every item of ``wanted`` appears in ``seen``, in that order (others may come between)."""
    position = 0
    for item in seen:
        if position < len(wanted) and item == wanted[position]:
            position += 1
    return position == len(wanted)


def test_canary_replicas_round_half_up_and_never_leave_a_step_without_a_canary() -> None:
    assert [canary_replicas(10, w) for w in (10, 25, 50, 100)] == [1, 3, 5, 10]  # 2.5 rounds up to 3
    assert [canary_replicas(3, w) for w in (10, 50, 99, 100)] == [1, 2, 2, 3]  # 0.3 -> 1 (never 0), 99% keeps 1 stable
    assert canary_replicas(2, 1) == 1 and canary_replicas(2, 90) == 1
    assert server_name_for("Digits_Model") == "digits-model" and server_name_for("7up") == "m-7up"
    assert len(server_name_for("x" * 80)) <= 40


def test_track_counters_keep_what_gone_and_restarted_pods_served() -> None:
    counters = TrackCounters()
    counters.update("a", ServerSample({"200": 10.0}, ((0.1, 10.0), (float("inf"), 10.0))))
    counters.update("b", ServerSample({"200": 5.0, "500": 1.0}, ((0.1, 6.0), (float("inf"), 6.0))))
    start = counters.total()
    counters.update("a", ServerSample({"200": 3.0}, ((0.1, 3.0), (float("inf"), 3.0))))  # restarted: 10 + 3
    counters.update("b", ServerSample({"200": 7.0, "500": 1.0}, ((0.1, 8.0), (float("inf"), 8.0))))
    # "b" then disappears (scaled down): its last figures still count.
    delta = counters.total().since(start)
    assert dict(delta.requests) == {"200": 5.0, "500": 0.0}
    assert dict(delta.buckets) == {0.1: 5.0, float("inf"): 5.0}


def test_a_good_challenger_is_promoted_step_by_step_by_replica_ratio(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    _, challenger = champion_and_challenger(model_name, home.good_run, home.good_run)
    server = server_name_for(model_name)
    serving = _serving(kube_cluster, replicas=3)

    with ReplicaRecorder(kube_cluster, server) as recorder:
        result: RolloutResult = rollout(
            model_name=model_name,
            dataset_uri=home.dataset_uri,
            policy=_policy(step_weights=[10, 50, 100]),
            serving=serving,
        )

    assert (result.decision, result.failed_check, result.backend) == ("promoted", None, "kubernetes"), result.reason
    assert aliases(model_name) == {"champion": challenger, "challenger": challenger}
    # 3 pods in all: 10% rounds to 0.3 pod -> 1 canary (never 0), 50% -> 1.5 -> 2, 100% -> all 3.
    assert [round(s.effective_weight or 0, 1) for s in result.steps] == [33.3, 66.7, 100.0]
    assert _in_order([(3, 1), (2, 1), (1, 2), (0, 3), (3, 0)], recorder.pairs), recorder.pairs
    for step in result.steps:
        assert all(check.passed for check in step.checks), step.checks
        assert step.unanswered == 0 and step.stable.errors == 0
        total = step.stable.routed + step.canary.routed
        if step.weight < 100:  # the Service balanced the pods: the canary's share follows its pod count
            assert abs(step.canary.routed / total - step.effective_weight / 100) < 0.2, (step.weight, total)
        else:
            assert step.stable.routed == 0

    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and stable.spec.replicas == 3
    assert _model_uri_of(stable) == f"models:/{model_name}/{challenger}"
    assert stable.spec.template.metadata.labels["gpuflow.io/model-version"] == challenger
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert {server, f"{server}-stable"} <= _service_names(kube_cluster)
    assert f"{server}-canary" not in _service_names(kube_cluster)
    kube_cluster.wait_for(lambda: not _server_pods(kube_cluster, server, "canary"), 30, what="canary pods gone")
    pods = _server_pods(kube_cluster, server, "stable")
    assert len(pods) == 3 and {p["metadata"]["labels"]["gpuflow.io/model-version"] for p in pods} == {challenger}
    run = registry_client().get_run(result.rollout_run_id)
    assert run.data.tags["gpuflow.rollout.backend"] == "kubernetes"
    assert run.data.tags["gpuflow.rollout.decision"] == "promoted"


def test_through_a_slow_throttling_service_proxy_the_split_holds_and_the_canary_is_promoted(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    """The API server's proxy adds latency and answers 429 past its rate (API Priority and Fairness): those
    refusals are nobody's answer, so they are waited out and sent again, never charged to the canary."""
    _, challenger = champion_and_challenger(model_name, home.good_run, home.good_run)
    throttle = kube_cluster.throttle_proxy(latency_seconds=0.03, requests_per_second=50, burst=5)

    result = rollout(
        model_name=model_name,
        dataset_uri=home.dataset_uri,
        policy=_policy(step_weights=[50, 100], analysis_seconds=3.0),
        serving=_serving(kube_cluster, replicas=2),
    )

    assert (result.decision, result.failed_check) == ("promoted", None), result.reason
    assert aliases(model_name) == {"champion": challenger, "challenger": challenger}
    assert throttle.throttled > 0, "the proxy refused requests past its rate"
    for step in result.steps:
        assert all(check.passed for check in step.checks), step.checks
        assert step.unanswered == step.retried_on_stable == 0, "no 429 was taken for a canary failure"
        assert step.canary.errors == step.stable.errors == 0
        total = step.stable.routed + step.canary.routed
        assert abs(step.canary.routed / total - (step.effective_weight or 0) / 100) < 0.2, (step.weight, total)


def test_a_rollback_leaves_an_existing_stable_deployment_template_untouched(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    client = registry_client()
    champion = register_version(model_name, home.good_run)
    client.set_registered_model_alias(model_name, "challenger", champion)
    serving = _serving(kube_cluster, replicas=2)
    policy = _policy(step_weights=[50, 100])
    first = rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=policy, serving=serving)
    assert first.decision == "promoted_without_canary"
    server = server_name_for(model_name)
    before = _deployment(kube_cluster, f"{server}-stable")
    assert before is not None

    challenger = register_version(model_name, home.shuffled_run)
    client.set_registered_model_alias(model_name, "challenger", challenger)
    result = rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=policy, serving=serving)

    assert (result.decision, result.failed_check) == ("rolled_back", "accuracy"), result.reason
    after = _deployment(kube_cluster, f"{server}-stable")
    assert after is not None
    assert after.spec.template == before.spec.template, "a rollback never touches stable's pod template"
    assert after.spec.replicas == before.spec.replicas == 2
    assert aliases(model_name) == {"champion": champion}
    assert _deployment(kube_cluster, f"{server}-canary") is None


def test_the_first_model_goes_straight_to_a_stable_deployment(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    version = register_version(model_name, home.good_run)
    registry_client().set_registered_model_alias(model_name, "challenger", version)
    server = server_name_for(model_name)

    result = rollout(model_name=model_name, dataset_uri=home.dataset_uri, serving=_serving(kube_cluster, replicas=2))

    assert result.decision == "promoted_without_canary" and result.steps == []
    assert aliases(model_name)["champion"] == version
    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and _model_uri_of(stable) == f"models:/{model_name}/{version}"
    assert len([p for p in _server_pods(kube_cluster, server, "stable") if _ready(p)]) == 2
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert {server, f"{server}-stable"} <= _service_names(kube_cluster)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def test_with_a_gateway_the_route_weights_split_the_traffic(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    champion, challenger = champion_and_challenger(model_name, home.good_run, home.good_run)
    server = server_name_for(model_name)
    custom = kubernetes.client.CustomObjectsApi(kube_cluster.api)
    weights_seen: list[dict[str, int]] = []
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            try:
                route = custom.get_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", kube_cluster.namespace, "httproutes", server
                )
            except kubernetes.client.exceptions.ApiException:
                route = None
            if route is not None:
                refs = route["spec"]["rules"][0]["backendRefs"]
                weights = {ref["name"].removeprefix(f"{server}-"): ref["weight"] for ref in refs}
                if not weights_seen or weights_seen[-1] != weights:
                    weights_seen.append(weights)
            stop.wait(0.05)

    # The gateway takes each route change 1 s after it was written: a step whose traffic started before that would
    # see about half its canary share.
    with RouteGateway(kube_cluster, server, program_delay_seconds=1.0) as gateway:
        serving = _serving(kube_cluster, replicas=2, gateway="gpuflow-gateway", service_url=gateway.url)
        recorder = threading.Thread(target=record, daemon=True)
        recorder.start()
        try:
            result = rollout(
                model_name=model_name,
                dataset_uri=home.dataset_uri,
                policy=_policy(step_weights=[25, 100]),
                serving=serving,
            )
        finally:
            stop.set()
            recorder.join(timeout=5)

    assert result.decision == "promoted", result.reason
    assert _in_order(
        [{"stable": 100}, {"stable": 75, "canary": 25}, {"stable": 0, "canary": 100}, {"stable": 100}], weights_seen
    ), weights_seen
    step = result.steps[0]
    assert step.effective_weight == 25.0
    assert abs(step.canary.routed / (step.canary.routed + step.stable.routed) - 0.25) < 0.1
    assert gateway.forwarded[f"{server}-canary"] > 0 and gateway.unrouted == 0
    route = custom.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", kube_cluster.namespace, "httproutes", server
    )
    assert route["spec"]["parentRefs"][0]["name"] == "gpuflow-gateway"
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [(f"{server}-stable", 100)]
    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and _model_uri_of(stable) == f"models:/{model_name}/{challenger}"
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert aliases(model_name)["champion"] == challenger
    assert champion != challenger


def test_a_canary_that_crashes_mid_step_is_rolled_back_and_stable_keeps_serving(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.good_run)
    server = server_name_for(model_name)
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = rollout(
            model_name=model_name,
            dataset_uri=home.dataset_uri,
            policy=_policy(step_weights=[50, 100], analysis_seconds=8.0),
            serving=_serving(kube_cluster, replicas=2),
        )

    worker = threading.Thread(target=run, name="rollout")
    worker.start()
    kube_cluster.wait_for(
        lambda: any(_ready(p) for p in _server_pods(kube_cluster, server, "canary")), 120, what="a ready canary pod"
    )
    # The flow checks readiness itself after the pod's; on a loaded machine 1 s was sometimes before the step began
    # (the crash then read as "never became ready"). 3 s of the 8 s window is still mid-step.
    time.sleep(3.0)
    (canary_pod, *_) = [p["metadata"]["name"] for p in _server_pods(kube_cluster, server, "canary")]
    kube_cluster.crash_container(canary_pod)
    worker.join(timeout=180)
    assert not worker.is_alive(), "the rollout did not end after its canary crashed"

    result: RolloutResult = outcome["result"]
    # Whichever the analysis sees first: the requests the dying pod dropped, or the container's restart.
    assert result.decision == "rolled_back" and result.failed_check in ("error_rate", "canary_up"), result.reason
    assert result.steps[-1].weight == 50, "rolled back in the step the crash happened in"
    assert aliases(model_name)["champion"] == champion
    assert _deployment(kube_cluster, f"{server}-canary") is None
    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and stable.spec.replicas == 2
    assert all(step.unanswered == 0 for step in result.steps), "stable answered what the crashed canary did not"


def test_a_canary_that_crashes_before_ready_is_rolled_back_naming_its_pod(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster, tmp_path: Any
) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "README.txt").write_text("no MLmodel here")
    client = registry_client()  # in the run's artifacts on the MLflow server, where the pods can download it
    client.log_artifacts(home.good_run, str(empty), "not-a-model")
    source = client.get_run(home.good_run).info.artifact_uri.rstrip("/") + "/not-a-model"
    champion, _ = champion_and_challenger(model_name, home.good_run, home.good_run, source=source)
    server = server_name_for(model_name)

    result = rollout(
        model_name=model_name,
        dataset_uri=home.dataset_uri,
        policy=_policy(step_weights=[50, 100]),
        serving=_serving(kube_cluster, replicas=2),
    )

    assert (result.decision, result.failed_check) == ("rolled_back", "canary_ready")
    assert f"pod {server}-canary-" in result.reason and "exit code 2" in result.reason, result.reason
    assert "is not an MLflow model" in result.reason, "the pod's last log lines say why"
    assert aliases(model_name) == {"champion": champion}
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert f"{server}-canary" not in _service_names(kube_cluster)
    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and stable.spec.replicas == 2


ROUTE_TROUBLE = {
    "refused by the gateway": (
        {"refuse": "NotAllowedByListeners"},
        {},
        ConfigurationError,
        r"HTTPRoute .* Gateway .*/gpuflow-gateway refused the route: NotAllowedByListeners",
    ),
    "attached to a gateway nobody runs": (
        {},
        {"gateway": "no-such-gateway", "route_accept_timeout_seconds": 1.0},
        RetryableError,
        r"was not accepted within 1s: Gateway .*/no-such-gateway has not reported on the route \(is its controller",
    ),
}


@pytest.mark.parametrize("case", list(ROUTE_TROUBLE))
def test_a_route_the_gateway_does_not_accept_fails_the_stage_and_leaves_nothing(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster, case: str
) -> None:
    gateway_options, block_options, error, message = ROUTE_TROUBLE[case]
    champion, challenger = champion_and_challenger(model_name, home.good_run, home.good_run)
    server = server_name_for(model_name)

    with RouteGateway(kube_cluster, server, **gateway_options) as gateway:
        fields = {"gateway": "gpuflow-gateway", **block_options}
        serving = _serving(kube_cluster, replicas=2, service_url=gateway.url, **fields)
        with pytest.raises(error, match=message):
            rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=_policy(), serving=serving)

    assert aliases(model_name) == {"champion": champion, "challenger": challenger}, "no alias moved"
    assert _deployment(kube_cluster, f"{server}-stable") is None, "the stable this rollout created is removed"
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert not {server, f"{server}-stable", f"{server}-canary"} & _service_names(kube_cluster)
    with pytest.raises(kubernetes.client.exceptions.ApiException, match="Not Found"):
        kubernetes.client.CustomObjectsApi(kube_cluster.api).get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", kube_cluster.namespace, "httproutes", server
        )


def test_server_pods_the_cluster_refuses_fail_the_stage_at_once_saying_why_and_leave_nothing(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    champion, challenger = champion_and_challenger(model_name, home.good_run, home.good_run)
    server = server_name_for(model_name)
    kube_cluster.deny_pods("policy.example.com", "model servers need a cost-center label")
    started = time.monotonic()

    with pytest.raises(ServerNotReady) as refused:
        rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=_policy(), serving=_serving(kube_cluster))

    assert refused.value.blameless, "the cluster's policy is not the candidate's fault: an error, not a verdict"
    assert f"stable Deployment {server}-stable" in str(refused.value)
    assert refused.value.reason == (
        'the cluster refuses to create its pods: admission webhook "policy.example.com" denied the request: '
        "model servers need a cost-center label"
    )
    assert time.monotonic() - started < 30, "not the readiness timeout"
    assert aliases(model_name) == {"champion": champion, "challenger": challenger}, "no alias moved"
    assert _deployment(kube_cluster, f"{server}-stable") is None, "the stable this rollout created is removed"
    assert not {server, f"{server}-stable", f"{server}-canary"} & _service_names(kube_cluster)


def test_a_role_without_a_needed_verb_fails_the_stage_naming_it_and_the_role_to_grant(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    champion_and_challenger(model_name, home.good_run, home.good_run)
    kube_cluster.forbid("create", "deployments")

    with pytest.raises(ConfigurationError) as refused:
        rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=_policy(), serving=_serving(kube_cluster))

    message = str(refused.value)
    assert message.startswith("Kubernetes refused to POST /apis/apps/v1/namespaces/gpuflow-test/deployments: 403 ")
    assert 'cannot create resource "deployments"' in message and "{" not in message, "the Status message, not JSON"
    assert message.endswith("the flow's service account needs the Role from `gpuflow manifests rbac`")


def test_a_canary_whose_image_cannot_be_pulled_fails_the_stage_and_leaves_no_canary(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    version = register_version(model_name, home.good_run)
    registry_client().set_registered_model_alias(model_name, "challenger", version)
    serving = _serving(kube_cluster, replicas=2)
    rollout(model_name=model_name, dataset_uri=home.dataset_uri, serving=serving)  # stable runs the image
    challenger = register_version(model_name, home.good_run)
    registry_client().set_registered_model_alias(model_name, "challenger", challenger)
    kube_cluster.known_images.discard(IMAGE)  # the registry lost it: new pods (as on a new node) cannot pull it
    server = server_name_for(model_name)
    started = time.monotonic()

    with pytest.raises(
        ServerNotReady, match=r"canary Deployment .* pod .*image pull failed for 'gpuflow/workloads:test'"
    ):
        rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=_policy(), serving=serving)

    assert time.monotonic() - started < 60, "an image that cannot be pulled fails fast"
    assert aliases(model_name) == {"champion": version, "challenger": challenger}, "no alias moved"
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert f"{server}-canary" not in _service_names(kube_cluster)
    kube_cluster.wait_for(
        lambda: not kube_cluster.pods(f"gpuflow.io/model={server},gpuflow.io/track=canary"),
        30,
        what="canary pods deleted",
    )
    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and _model_uri_of(stable) == f"models:/{model_name}/{version}"


class FakePrometheus:
    """Prometheus's instant-query API over the emulated pods: each query scrapes the pods it names through the
    API server's pod proxy (as Prometheus's own scrapes would reach them) and answers the matching series."""

    def __init__(self, cluster: KubeCluster) -> None:
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)["query"][0]
                owner.queries.append(query)
                body = json.dumps(owner._answer(cluster, query)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _answer(cluster: KubeCluster, query: str) -> dict[str, Any]:
        matchers = {name: (op, value) for name, op, value in re.findall(r'(\w+)(=~|=)"([^"]*)"', query)}
        names = set(matchers["__name__"][1].split("|"))
        namespace = matchers["namespace"][1]
        route = matchers.get("route", (None, None))[1]
        result = []
        for pod in matchers["pod"][1].split("|"):
            url = f"{cluster.url}/api/v1/namespaces/{namespace}/pods/{pod}:8080/proxy/metrics"
            try:
                request = urllib.request.Request(url, headers=cluster.admin_headers)  # Prometheus' own access
                with urllib.request.urlopen(request, timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                continue  # a target Prometheus could not scrape has no fresh series
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in names and (route is None or sample.labels.get("route") == route):
                        labels = {"__name__": sample.name, "namespace": namespace, "pod": pod, **sample.labels}
                        result.append({"metric": labels, "value": [time.time(), repr(float(sample.value))]})
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_the_analysis_reads_the_figures_from_prometheus_when_given(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    _, challenger = champion_and_challenger(model_name, home.good_run, home.good_run)
    prometheus = FakePrometheus(kube_cluster)
    try:
        result = rollout(
            model_name=model_name,
            dataset_uri=home.dataset_uri,
            policy=_policy(step_weights=[50, 100]),
            serving=_serving(kube_cluster, replicas=2, prometheus_url=prometheus.url),
        )
    finally:
        prometheus.close()

    assert result.decision == "promoted", result.reason
    assert any("gpuflow_server_requests_total" in q for q in prometheus.queries)
    assert any("gpuflow_server_model_load_seconds" in q for q in prometheus.queries)
    step = result.steps[0]
    # Server-side figures came from Prometheus's series: they count what the driver saw answered.
    assert step.canary.requests >= step.canary.answered > 0 and step.stable.requests >= step.stable.answered > 0
    assert set(result.server_startup) >= {"stable_model_load_seconds", "canary_model_load_seconds"}
    assert aliases(model_name)["champion"] == challenger


def test_a_rollout_that_times_out_removes_the_canary_and_gives_stable_its_pods_back(
    home: RolloutHome, model_name: str, kube_cluster: KubeCluster
) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.good_run)
    server = server_name_for(model_name)
    policy = _policy(step_weights=[50, 100], analysis_seconds=300.0)  # far longer than the flow may run

    state = rollout.with_options(timeout_seconds=25)(
        model_name=model_name,
        dataset_uri=home.dataset_uri,
        policy=policy,
        serving=_serving(kube_cluster, replicas=2),
        return_state=True,
    )

    assert state.name == "TimedOut", state.message
    # The canary's Deployment made pods before the timeout struck, or there was nothing to remove.
    created = [e for e in kube_cluster.events(f"{server}-canary") if e["reason"] == "ScalingReplicaSet"]
    assert created, "the flow timed out before the canary Deployment existed"
    assert aliases(model_name)["champion"] == champion
    assert _deployment(kube_cluster, f"{server}-canary") is None
    assert f"{server}-canary" not in _service_names(kube_cluster)
    stable = _deployment(kube_cluster, f"{server}-stable")
    assert stable is not None and stable.spec.replicas == 2, "stable got its pods back"
    assert _model_uri_of(stable) == f"models:/{model_name}/{champion}"
