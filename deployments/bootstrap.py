"""Put gpuflow on a Prefect server in one idempotent step: work pool, block types, default blocks, deployments.

``prefect deploy`` alone fails on a fresh server (no work pool) and leaves the UI's block forms empty; this does
the setup first, then deploys ``prefect.yaml`` with Prefect's own machinery (``prefect --no-prompt deploy --all``
in a subprocess), with ``GPUFLOW_VERSION`` set to the package version + git commit. Running it again creates
nothing: the report says what was created and what was already there.

With ``kubernetes=True`` (``gpuflow bootstrap --kubernetes``) it also creates the ``gpuflow-kubernetes`` work
pool from ``deployments/kubernetes/base-job-template.json`` (GPU variables; see docs/kubernetes.md) and
registers the KubernetesGPUJob block type; it saves no such block, since only you know the image to run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from blocks.registry import kubernetes_block_types, local_block_types
from deployments import PROJECT_ROOT
from deployments.worker_settings import process_base_job_template
from tasks.core.errors import ConfigurationError
from tasks.tracking.runs import pipeline_version

PROCESS_POOL = "gpuflow-process"
KUBERNETES_POOL = "gpuflow-kubernetes"
KUBERNETES_TEMPLATE = PROJECT_ROOT / "deployments" / "kubernetes" / "base-job-template.json"
DEFAULT_BLOCK_NAME = "default"
DEPLOY_TIMEOUT_SECONDS = 600.0


@dataclass
class BootstrapReport:
    """What one bootstrap created and what it found already there (names)."""

    created: dict[str, list[str]] = field(
        default_factory=lambda: {"work_pools": [], "block_types": [], "blocks": [], "deployments": []}
    )
    existing: dict[str, list[str]] = field(
        default_factory=lambda: {"work_pools": [], "block_types": [], "blocks": [], "deployments": []}
    )
    version: str = ""

    @property
    def created_anything(self) -> bool:
        return any(self.created.values())

    def lines(self) -> list[str]:
        out = [f"gpuflow {self.version}"]
        for kind in self.created:
            made, there = self.created[kind], self.existing[kind]
            out.append(f"{kind}: created {', '.join(made) or 'none'}; already there {', '.join(there) or 'none'}")
        return out


def declared_deployments(project_dir: Path) -> list[str]:
    """``flow_name/deployment_name`` for each deployment in prefect.yaml (how the API names them)."""
    from prefect.flows import load_flow_from_entrypoint

    document = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    names = []
    for item in document.get("deployments", []):
        flow: Any = load_flow_from_entrypoint(str(project_dir / item["entrypoint"]))
        names.append(f"{flow.name}/{item['name']}")
    return names


def ensure_work_pool(report: BootstrapReport, name: str = PROCESS_POOL) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            template = process_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            report.created["work_pools"].append(name)
        else:
            report.existing["work_pools"].append(name)


def ensure_kubernetes_pool(report: BootstrapReport, name: str = KUBERNETES_POOL) -> None:
    """The Kubernetes work pool for running flows on a cluster, with gpuflow's GPU base job template."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            template = json.loads(KUBERNETES_TEMPLATE.read_text())
            client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=template))
            report.created["work_pools"].append(name)
        else:
            report.existing["work_pools"].append(name)
    for cls in kubernetes_block_types():  # prefect-kubernetes: about 1 s to import, only for --kubernetes
        register_block_type(cls, report)


def register_block_type(cls: type[Block], report: BootstrapReport) -> str:
    """Register (or update in place) a block type's schema, reported as created or existing; returns its slug."""
    slug = cls.get_block_type_slug()
    with get_client(sync_client=True) as client:
        try:
            client.read_block_type_by_slug(slug)
            had_type = True
        except ObjectNotFound:
            had_type = False
    cls.register_type_and_schema()
    (report.existing if had_type else report.created)["block_types"].append(slug)
    return slug


def ensure_blocks(report: BootstrapReport) -> None:
    """Register each block type (schemas are updated in place) and save a ``default`` block where none is."""
    for cls in local_block_types():
        slug = register_block_type(cls, report)
        qualified = f"{slug}/{DEFAULT_BLOCK_NAME}"
        try:
            cls.load(DEFAULT_BLOCK_NAME)
        except ValueError:  # Block.load says "Unable to find block document named ..."
            cls().save(DEFAULT_BLOCK_NAME)
            report.created["blocks"].append(qualified)
        else:
            report.existing["blocks"].append(qualified)


def existing_deployments(names: list[str]) -> set[str]:
    found = set()
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            found.add(name)
    return found


def deploy_all(project_dir: Path, version: str) -> None:
    """``prefect --no-prompt deploy --all`` in the project folder, against the current PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "GPUFLOW_VERSION": version}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=project_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise ConfigurationError(f"`prefect deploy --all` in {project_dir} failed (exit {done.returncode}):\n{tail}")


def bootstrap(project_dir: Path = PROJECT_ROOT, *, kubernetes: bool = False) -> BootstrapReport:
    """Create the work pool, block types and default blocks if missing, then deploy everything in prefect.yaml.

    ``kubernetes``: also the ``gpuflow-kubernetes`` work pool and the KubernetesGPUJob block type.

    Needs a Prefect server (PREFECT_API_URL); Prefect's ephemeral API has no workers to run deployments.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigurationError(
            "PREFECT_API_URL is not set: bootstrap needs a Prefect server, e.g. `prefect server start` and "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    project_dir = Path(project_dir).resolve()
    report = BootstrapReport(version=pipeline_version())
    ensure_work_pool(report)
    if kubernetes:
        ensure_kubernetes_pool(report)
    ensure_blocks(report)
    names = declared_deployments(project_dir)
    before = existing_deployments(names)
    deploy_all(project_dir, report.version)
    after = existing_deployments(names)
    missing = sorted(set(names) - after)
    if missing:
        raise ConfigurationError(f"prefect deploy finished but the server has no deployment {', '.join(missing)}")
    report.existing["deployments"].extend(sorted(before))
    report.created["deployments"].extend(sorted(after - before))
    return report
