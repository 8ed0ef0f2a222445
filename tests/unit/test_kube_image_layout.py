"""The image the emulated kubelet runs pods from is laid out from workloads/Dockerfile itself, so the two cannot
drift: a file the Dockerfile does not copy is missing in every emulated pod, as in the real image. A user's image
FROM it is laid out from the user's own Dockerfile (examples/digits_cnn/Dockerfile) on top of it."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.kube.image import DOCKERFILE, ROOT, VENV, DockerfileError, Image, build_image, image_files

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


EXAMPLE = ROOT / "examples" / "digits_cnn"
GPUFLOW = "gpuflow/workloads:test"


@pytest.fixture(scope="module")
def gpuflow(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image(DOCKERFILE, ROOT, tmp_path_factory.mktemp("gpuflow-image"))


def test_the_venv_holds_the_packages_pip_installs_so_gpuflow_imports_from_any_workdir(gpuflow: Image) -> None:
    (purelib,) = gpuflow.host_path(VENV).glob("lib/python*/site-packages")

    installed = {p.name for p in purelib.iterdir() if (p / "__init__.py").is_file()}

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert installed == {name.rstrip("*") for name in packages["include"]}
    assert (purelib / "workloads" / "launcher" / "entrypoint.py").is_file()
    assert not list(purelib.rglob("__pycache__"))


def test_a_user_image_from_gpuflows_is_its_files_and_settings_plus_the_users_copies(
    gpuflow: Image, tmp_path: Path
) -> None:
    project = tmp_path / "digits_cnn"  # the example as a user's folder, with the data make_data.py writes
    shutil.copytree(EXAMPLE, project)
    (project / "digits.csv").write_text("pixel_0,label\n0,0\n")

    build_args = {"GPUFLOW_IMAGE": GPUFLOW}  # docker build --build-arg GPUFLOW_IMAGE=gpuflow/workloads:test .
    image = build_image(
        project / "Dockerfile", project, tmp_path / "image", bases={GPUFLOW: gpuflow}, build_args=build_args
    )

    assert [p.name for p in image.host_path("/project").iterdir()] == ["cnn.py"]  # .dockerignore keeps the data out
    assert (image.host_path("/app/workloads/sdk/pytorch.py")).is_file()  # gpuflow's layer underneath
    assert image.host_path(f"{VENV}/bin/python").exists()
    assert image.workdir == "/project" and image.user == gpuflow.user and image.env == gpuflow.env


def test_a_user_image_from_an_image_nobody_laid_out_has_only_its_own_files(gpuflow: Image, tmp_path: Path) -> None:
    image = build_image(EXAMPLE / "Dockerfile", EXAMPLE, tmp_path / "image", bases={GPUFLOW: gpuflow})

    assert sorted(p.name for p in image.root.iterdir()) == ["project"]  # FROM its default, registry.example.com/...
    assert image.workdir == "/project" and image.user == ""
