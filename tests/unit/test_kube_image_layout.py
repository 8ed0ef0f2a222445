"""The image the emulated kubelet runs pods from is laid out from workloads/Dockerfile itself, so the two cannot
drift: a file the Dockerfile does not copy is missing in every emulated pod, as in the real image."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.fixtures.kube.image import DOCKERFILE, ROOT, VENV, DockerfileError, build_image, image_files

TEXT = DOCKERFILE.read_text()


def test_the_layout_is_exactly_what_the_runtime_stage_copies() -> None:
    files = image_files(TEXT)

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {f"/app/{name.rstrip('*')}" for name in packages["include"]}
    assert wanted <= set(files), "every package pip installs is in /app"
    assert files["/app/blocks"] == "blocks"  # through COPY --from=build /src/blocks, back to the build context
    assert files["/app/requirements.lock"] == "requirements.lock" and files[VENV] == VENV
    assert not any(path.startswith("/app/tests") or path.startswith("/app/examples") for path in files)


def test_a_folder_the_dockerfile_stops_copying_is_missing_from_the_layout(tmp_path: Path) -> None:
    edited = tmp_path / "Dockerfile"
    edited.write_text(TEXT.replace("COPY --from=build --chown=0:0 /src/tasks /app/tasks\n", ""))
    assert edited.read_text() != TEXT, "the line this test removes is in the Dockerfile"

    image = build_image(edited, ROOT, tmp_path / "image")

    app = image.host_path("/app")
    assert sorted(p.name for p in app.iterdir()) == [
        "blocks", "deployments", "flows", "prefect.yaml", "requirements.lock", "workloads",
    ]  # fmt: skip
    assert (app / "workloads" / "trainer").is_dir() and not list(app.rglob("__pycache__"))  # .dockerignore
    assert image.workdir == "/app" and image.user == "1000:1000"
    assert image.env["HOME"] == image.env["TMPDIR"] == "/scratch"
    assert image.env["PATH"].startswith("/opt/venv/bin:")


def test_a_copy_of_something_outside_the_build_context_is_refused(tmp_path: Path) -> None:
    edited = tmp_path / "Dockerfile"
    edited.write_text(TEXT.replace("COPY --chown=0:0 prefect.yaml", "COPY --chown=0:0 tests/conftest.py prefect.yaml"))

    with pytest.raises(DockerfileError, match=r"COPY source tests/conftest\.py .*\.dockerignore drops it"):
        build_image(edited, ROOT, tmp_path / "image")
