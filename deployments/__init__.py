"""What puts gpuflow's flows on a Prefect server: the deployments declared in ``prefect.yaml``.

``deployment_entrypoints()`` reads them so tests and tools can check that each one points at a real flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def deployment_entrypoints(prefect_yaml: Path = PROJECT_ROOT / "prefect.yaml") -> dict[str, str]:
    """Deployment name -> ``path/to/file.py:flow_function`` as declared in prefect.yaml."""
    document: dict[str, Any] = yaml.safe_load(prefect_yaml.read_text())
    return {item["name"]: item["entrypoint"] for item in document.get("deployments", [])}
