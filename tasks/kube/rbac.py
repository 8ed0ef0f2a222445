"""The RBAC a gpuflow namespace needs: ServiceAccounts for flow pods and workload pods, a Role with the fewest verbs
the flows use, and its RoleBinding (``gpuflow manifests rbac``). Pure: no cluster access."""

from __future__ import annotations

from tasks.kube.checks import dns_label, dns_subdomain
from tasks.kube.pod_settings import LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NAME, Manifest


def rbac_manifests(
    namespace: str,
    service_account: str = "gpuflow-flows",
    *,
    http_routes: bool,
    workload_service_account: str = "gpuflow-workload",
) -> list[Manifest]:
    """ServiceAccounts for flow pods and workload pods, a Role with the fewest verbs the flows use, a RoleBinding.

    Flows create and watch training Jobs (pods and logs to follow them, events to explain a pending pod),
    the headless Service of a distributed training, and the canary's Deployments and Services; they read
    the servers' /metrics through the pod proxy and replay the canary's labelled traffic through the Service proxy
    (POST, hence ``create``). Workloads need no API access at all, hence no token.
    """
    dns_label(namespace, "namespace")
    dns_subdomain(service_account, "service account")
    dns_subdomain(workload_service_account, "workload service account")
    labels = {LABEL_NAME: "gpuflow", LABEL_COMPONENT: "rbac", LABEL_MANAGED_BY: "gpuflow"}
    rules = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["create", "get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "delete", "get", "patch"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["create", "delete", "get", "list", "patch"],
        },
    ]
    if http_routes:
        rules.append(
            {
                "apiGroups": ["gateway.networking.k8s.io"],
                "resources": ["httproutes"],
                "verbs": ["create", "delete", "get", "patch"],
            }
        )
    meta = {"namespace": namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account, **meta}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": workload_service_account, **meta},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": service_account, **meta},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": service_account, **meta},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]
