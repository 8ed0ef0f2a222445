"""Job and pod status -> what a user is told, with status dicts shaped like a real API server's answers."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.core.errors import PermanentError, RetryableError, WorkloadFailed
from tasks.kube.diagnosis import (
    TRAINER_EXIT_MEANINGS,
    Failure,
    creation_refusal,
    job_failure,
    replica_failure,
    same_refusal,
    workload_error,
)
from tasks.kube.pod_status import (
    job_finished,
    parse_time,
    pod_index,
    progress,
    start_problem,
    startup_timings,
    unschedulable_message,
)

PERMANENT = (2, 3, 126, 127)
SCHEDULER = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)


def pod(
    name: str = "gpuflow-train-abc-x7k2p",
    *,
    phase: str = "Pending",
    conditions: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
    image: str = "ghcr.io/acme/gpuflow:1.2",
    memory: str = "16Gi",
    node: str | None = None,
    index: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ml",
        "creationTimestamp": "2024-05-01T10:00:01Z",
        "labels": {"batch.kubernetes.io/job-name": "gpuflow-train-abc", "job-name": "gpuflow-train-abc"},
    }
    if index is not None:
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": index}
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "trainer",
                "image": image,
                "resources": {"limits": {"cpu": "4", "memory": memory}, "requests": {"cpu": "1", "memory": "4Gi"}},
            }
        ],
        "restartPolicy": "Never",
    }
    if node:
        spec["nodeName"] = node
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or [], "qosClass": "Burstable"}
    if state is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "image": image, "imageID": "", "ready": False, "restartCount": 0, "state": state}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def scheduled(at: str = "2024-05-01T10:00:03Z") -> dict[str, Any]:
    return {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": at}


def unschedulable() -> dict[str, Any]:
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": SCHEDULER,
        "lastProbeTime": None,
        "lastTransitionTime": "2024-05-01T10:00:01Z",
    }


def terminated(code: int, reason: str = "Error") -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "startedAt": "2024-05-01T10:00:20Z",
            "finishedAt": "2024-05-01T10:01:00Z",
            "containerID": "containerd://1234",
        }
    }


def job(reason: str | None = None, message: str = "", *, failed: int = 0, complete: bool = False) -> dict[str, Any]:
    conditions = []
    if reason is not None:
        conditions = [
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": "2024-05-01T10:10:00Z",
                "lastTransitionTime": "2024-05-01T10:10:00Z",
            },
        ]
    if complete:
        conditions = [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True", "lastTransitionTime": "2024-05-01T10:05:00Z"},
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "gpuflow-train-abc", "namespace": "ml", "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"activeDeadlineSeconds": 600, "backoffLimit": 3, "completions": 1, "parallelism": 1},
        "status": {"conditions": conditions, "failed": failed, "startTime": "2024-05-01T10:00:00Z"},
    }


def test_unschedulable_pod_is_shown_with_the_schedulers_reason_without_the_preemption_postscript() -> None:
    waiting = pod(conditions=[unschedulable()])
    assert unschedulable_message(waiting) == "0/3 nodes are available: 3 Insufficient nvidia.com/gpu"
    assert progress(waiting).endswith("waiting for a node: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
    assert unschedulable_message(pod(conditions=[scheduled()], node="gpu-1")) is None


def test_job_failed_on_its_deadline_while_unschedulable_names_the_missing_gpus() -> None:
    failure = job_failure(
        job("DeadlineExceeded", "Job was active longer than specified deadline"),
        [pod(conditions=[unschedulable()])],
        TRAINER_EXIT_MEANINGS,
        PERMANENT,
    )
    assert failure.reason.startswith("unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
    assert "deadline exceeded after 600s (activeDeadlineSeconds)" in failure.reason
    assert failure.permanent and failure.exit_code is None


def test_job_that_ran_past_its_deadline_says_so() -> None:
    running = pod(phase="Running", conditions=[scheduled()], node="gpu-1", state={"running": {"startedAt": "x"}})
    failure = job_failure(job("DeadlineExceeded"), [running], TRAINER_EXIT_MEANINGS, PERMANENT)
    assert failure.reason == "deadline exceeded after 600s (activeDeadlineSeconds)"
    assert failure.permanent


@pytest.mark.parametrize(
    ("reason", "message", "immediate"),
    [
        (
            "ErrImagePull",
            'rpc error: code = NotFound desc = failed to pull and unpack image "foo:bar": not found',
            False,
        ),
        ("ImagePullBackOff", 'Back-off pulling image "foo:bar"', False),
        ("InvalidImageName", 'Failed to apply default image tag "foo:bar": invalid reference format', True),
    ],
)
def test_image_pull_problems_name_the_image(reason: str, message: str, immediate: bool) -> None:
    stuck = pod(
        conditions=[scheduled()],
        node="gpu-1",
        image="foo:bar",
        state={"waiting": {"reason": reason, "message": message}},
    )
    problem = start_problem(stuck)
    assert problem is not None
    text, now = problem
    assert text == f"image pull failed for 'foo:bar': {reason}: {message}"
    assert now is immediate
    assert reason in progress(stuck)


def test_missing_secret_is_a_start_problem_naming_the_secret() -> None:
    stuck = pod(
        conditions=[scheduled()],
        node="gpu-1",
        state={"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "gpuflow-store" not found'}},
    )
    problem = start_problem(stuck)
    assert problem == (
        "container trainer of pod gpuflow-train-abc-x7k2p cannot be created: CreateContainerConfigError: "
        'secret "gpuflow-store" not found',
        False,
    )


def test_container_creating_is_progress_not_a_problem() -> None:
    creating = pod(conditions=[scheduled()], node="gpu-1", state={"waiting": {"reason": "ContainerCreating"}})
    assert start_problem(creating) is None
    assert progress(creating) == (
        "pod gpuflow-train-abc-x7k2p on node gpu-1: ContainerCreating "
        "(pulling image 'ghcr.io/acme/gpuflow:1.2', starting)"
    )


def test_oom_killed_names_container_pod_and_memory_limit() -> None:
    killed = pod(phase="Failed", conditions=[scheduled()], node="gpu-1", state=terminated(137, "OOMKilled"))
    failure = job_failure(
        job("BackoffLimitExceeded", "Job has reached the specified backoff limit", failed=4),
        [killed],
        TRAINER_EXIT_MEANINGS,
        PERMANENT,
    )
    assert failure.reason.startswith(
        "OOMKilled: container trainer of pod gpuflow-train-abc-x7k2p exceeded its memory limit 16Gi"
    )
    assert "BackoffLimitExceeded: 4 pod(s) failed, backoffLimit 3" in failure.reason
    assert failure.exit_code == 137 and failure.permanent


def test_pod_failure_policy_reports_the_trainers_exit_code_and_meaning() -> None:
    bad = pod(phase="Failed", conditions=[scheduled()], node="gpu-1", state=terminated(2))
    failure = job_failure(
        job(
            "PodFailurePolicy",
            "Container trainer for pod ml/gpuflow-train-abc-x7k2p failed with exit code 2 "
            "matching FailJob rule at index 0",
            failed=1,
        ),
        [bad],
        TRAINER_EXIT_MEANINGS,
        PERMANENT,
    )
    assert "exit code 2 (trainer: configuration error" in failure.reason
    assert "podFailurePolicy" in failure.reason
    assert failure.exit_code == 2 and failure.permanent and failure.pod == "gpuflow-train-abc-x7k2p"


def test_pod_failure_policy_names_the_pod_that_matched_it_not_the_peer_the_job_then_stopped() -> None:
    bad = pod("train-0", phase="Failed", conditions=[scheduled()], node="gpu-1", state=terminated(2))
    bad["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2024-05-01T10:00:30Z"
    stopped = pod("train-1", phase="Failed", conditions=[scheduled()], node="gpu-2", state=terminated(143))
    stopped["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2024-05-01T10:00:31Z"
    failure = job_failure(
        job("PodFailurePolicy", "Container trainer for pod ml/train-0 failed with exit code 2", failed=2),
        [bad, stopped],
        TRAINER_EXIT_MEANINGS,
        PERMANENT,
    )
    assert failure.exit_code == 2 and failure.pod == "train-0" and failure.permanent
    assert "exit code 2 (trainer: configuration error" in failure.reason


def test_backoff_limit_after_crashes_reports_the_last_pods_exit_code_and_is_retryable() -> None:
    first = pod("p-1", phase="Failed", state=terminated(1))
    first["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2024-05-01T10:00:30Z"
    last = pod("p-2", phase="Failed", state=terminated(1))
    failure = job_failure(job("BackoffLimitExceeded", failed=2), [last, first], TRAINER_EXIT_MEANINGS, PERMANENT)
    assert failure.reason.startswith("container trainer of pod p-2 ended with exit code 1 (trainer: unexpected failure")
    assert failure.exit_code == 1 and not failure.permanent


def test_unknown_failure_reason_is_passed_on_verbatim() -> None:
    failure = job_failure(
        job("MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes"),
        [],
        {},
        PERMANENT,
    )
    assert failure.reason == (
        "Job failed: MaxFailedIndexesExceeded: Job has exceeded the specified maximal number of failed indexes"
    )


def test_job_finished_reads_complete_and_failed_conditions_only() -> None:
    assert job_finished(job(complete=True)) == "Complete"
    assert job_finished(job("DeadlineExceeded")) == "Failed"
    running = job()
    running["status"]["conditions"] = [{"type": "FailureTarget", "status": "True"}]
    assert job_finished(running) is None


def test_timings_from_whole_second_timestamps() -> None:
    started = pod(
        phase="Running",
        conditions=[scheduled("2024-05-01T10:00:03Z")],
        node="gpu-1",
        state={"running": {"startedAt": "2024-05-01T10:00:45Z"}},
    )
    assert startup_timings(job(), [started]) == {"k8s_queue_seconds": 3.0, "k8s_start_seconds": 42.0}


def test_timings_with_sub_second_and_mixed_resolution_never_go_negative() -> None:
    fine = job()
    fine["metadata"]["creationTimestamp"] = "2024-05-01T10:00:00.750000Z"
    started = pod(
        phase="Succeeded",
        conditions=[scheduled("2024-05-01T10:00:00Z")],
        state=terminated(0, "Completed"),
    )
    started["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"] = "2024-05-01T10:00:01.25Z"
    assert startup_timings(fine, [started]) == {"k8s_queue_seconds": 0.0, "k8s_start_seconds": pytest.approx(1.25)}


def test_timings_take_the_first_scheduled_pod_and_are_empty_before_any() -> None:
    later = pod(
        "late", conditions=[scheduled("2024-05-01T10:00:09Z")], state={"running": {"startedAt": "2024-05-01T10:00:10Z"}}
    )
    early = pod(
        "early", conditions=[scheduled("2024-05-01T10:00:02Z")], state={"waiting": {"reason": "ContainerCreating"}}
    )
    assert startup_timings(job(), [later, early]) == {"k8s_queue_seconds": 2.0}
    assert startup_timings(job(), [pod(conditions=[unschedulable()])]) == {}


def test_parse_time_reads_api_timestamps() -> None:
    assert parse_time("2024-05-01T10:00:00Z") == parse_time("2024-05-01T10:00:00.000000+00:00")
    assert parse_time(None) is None and parse_time("garbage") is None


def test_pod_index_from_annotation() -> None:
    assert pod_index(pod(index="1")) == "1"
    assert pod_index(pod()) is None


def test_workload_error_is_permanent_or_retryable_and_a_workload_failure() -> None:
    permanent = workload_error("trainer", Failure("image pull failed for 'x'", None, True), ["a"])
    retryable = workload_error("trainer", Failure("exit code 1", 1, False), [])
    assert isinstance(permanent, WorkloadFailed) and isinstance(permanent, PermanentError)
    assert isinstance(retryable, WorkloadFailed) and isinstance(retryable, RetryableError)
    assert "image pull failed for 'x'" in str(permanent) and "| a" in str(permanent)


def test_prefect_retries_the_trainer_only_after_a_retryable_failure() -> None:
    from prefect.states import Failed

    from tasks.training.trainer_job import retry_only_retryable

    def retried(error: BaseException) -> bool:
        return retry_only_retryable(None, None, Failed(data=error))  # type: ignore[arg-type]

    assert retried(workload_error("trainer", Failure("exit code 1 (crash)", 1, False), []))
    assert not retried(workload_error("trainer", Failure("exit code 2 (configuration)", 2, True), []))
    assert not retried(WorkloadFailed("trainer", 1, []))  # a local process: its one attempt was the whole try


# -- pods the cluster refuses to create ---------------------------------------------------------------------

POD_SECURITY = (
    'Error creating: pods "gpuflow-train-abc-x7k2p" is forbidden: violates PodSecurity "restricted:latest": '
    'allowPrivilegeEscalation != false (container "trainer" must set securityContext.allowPrivilegeEscalation=false)'
)


def event(reason: str, message: str, at: str, uid: str = "job-uid", kind: str = "Warning") -> dict[str, Any]:
    return {
        "type": kind,
        "reason": reason,
        "message": message,
        "lastTimestamp": at,
        "involvedObject": {"kind": "Job", "name": "gpuflow-train-abc", "uid": uid},
        "metadata": {"name": "gpuflow-train-abc.17c2", "creationTimestamp": at},
    }


def quota(requested: int, used: int, limited: int) -> str:
    gpu = "requests.nvidia.com/gpu"
    return (
        f'Error creating: pods "gpuflow-train-abc-x7k2p" is forbidden: exceeded quota: gpu-quota, '
        f"requested: {gpu}={requested}, used: {gpu}={used}, limited: {gpu}={limited}"
    )


def test_a_pod_security_refusal_is_told_without_the_prefix_and_waiting_cannot_fix_it() -> None:
    refusal = creation_refusal([event("FailedCreate", POD_SECURITY, "2024-05-01T10:00:02Z")], "job-uid")

    assert refusal == (
        "the cluster refuses to create its pods: " + POD_SECURITY.removeprefix("Error creating: "),
        True,
    )


def test_a_full_quota_may_free_up_but_a_pod_above_the_quota_never_fits() -> None:
    full = creation_refusal([event("FailedCreate", quota(1, 1, 1), "2024-05-01T10:00:02Z")])
    too_big = creation_refusal([event("FailedCreate", quota(2, 0, 1), "2024-05-01T10:00:02Z")])

    assert full is not None and full[1] is False
    assert full[0].endswith(
        "exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, "
        "used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1"
    )
    assert too_big is not None and too_big[1] is True


def test_a_refusal_older_than_the_last_created_pod_or_about_another_job_is_not_one() -> None:
    refused = event("FailedCreate", quota(1, 1, 1), "2024-05-01T10:00:02Z")
    created = event("SuccessfulCreate", "Created pod: gpuflow-train-abc-x7k2p", "2024-05-01T10:00:09Z", kind="Normal")
    refused_again = event("FailedCreate", POD_SECURITY, "2024-05-01T10:00:15Z")

    assert creation_refusal([refused, created]) is None
    assert creation_refusal([refused, created, refused_again]) is not None
    assert creation_refusal([event("FailedCreate", POD_SECURITY, "2024-05-01T10:00:02Z", uid="old")], "job-uid") is None
    assert creation_refusal([]) is None


def test_a_deployment_that_cannot_create_pods_says_why_from_its_replica_failure_condition() -> None:
    message = POD_SECURITY.removeprefix("Error creating: ")
    failing = {"status": {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                          "message": message}]}}  # fmt: skip

    assert replica_failure(failing) == ("the cluster refuses to create its pods: " + message, True)
    assert replica_failure({"status": {"conditions": [{"type": "Available", "status": "True"}]}}) is None


def test_refusals_that_differ_only_in_the_pods_generated_name_are_the_same_and_combined_events_read_alike() -> None:
    first = creation_refusal([event("FailedCreate", quota(1, 1, 1), "2024-05-01T10:00:02Z")])
    combined = "(combined from similar events): " + quota(1, 1, 1).replace("x7k2p", "q9z4m")
    later = creation_refusal([event("FailedCreate", combined, "2024-05-01T10:05:00Z")])

    assert first is not None and later is not None
    assert later[0].startswith('the cluster refuses to create its pods: pods "gpuflow-train-abc-q9z4m" is forbidden')
    assert same_refusal(later[0], first[0]) and not same_refusal(later[0], None)
    assert not same_refusal(later[0], "the cluster refuses to create its pods: " + POD_SECURITY)
