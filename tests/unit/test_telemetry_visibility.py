"""CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES decide which devices are sampled, with CUDA's own rules."""

from __future__ import annotations

import pytest

from workloads.telemetry.readings import mig_profile_of
from workloads.telemetry.visibility import PhysicalGpu, Target, select_visible

GPUS = [
    PhysicalGpu(0, "GPU-aaaa-0"),
    PhysicalGpu(1, "GPU-bbbb-1", mig_uuids=("MIG-m10", "MIG-m11")),  # MIG on: CUDA shows two devices
    PhysicalGpu(2, "GPU-cccc-2"),
]
ALL = (Target(0), Target(1, 0), Target(1, 1), Target(2))


@pytest.mark.parametrize(
    ("env", "targets"),
    [
        ({}, ALL),
        ({"CUDA_VISIBLE_DEVICES": "3"}, (Target(2),)),  # indices count MIG instances, as CUDA enumerates
        ({"CUDA_VISIBLE_DEVICES": "2,0"}, (Target(1, 1), Target(0))),
        ({"CUDA_VISIBLE_DEVICES": "0,0"}, (Target(0),)),
        ({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}, (Target(1, 0), Target(1, 1))),
        ({"CUDA_VISIBLE_DEVICES": "MIG-m11"}, (Target(1, 1),)),
        ({"CUDA_VISIBLE_DEVICES": "MIG-m1"}, ()),  # ambiguous prefix names nothing
        ({"CUDA_VISIBLE_DEVICES": "-1"}, ()),
        ({"CUDA_VISIBLE_DEVICES": ""}, ()),
        ({"CUDA_VISIBLE_DEVICES": "1,9,0"}, (Target(1, 0),)),  # stops at the first bad entry
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, ALL),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, ()),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-cccc-2,GPU-aaaa-0"}, (Target(2), Target(0))),
        ({"NVIDIA_VISIBLE_DEVICES": "5,6"}, ALL),  # host indices inside a container: already applied
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-aaaa-0,GPU-cccc-2", "CUDA_VISIBLE_DEVICES": "1"}, (Target(2),)),
    ],
)
def test_visible_targets(env: dict[str, str], targets: tuple[Target, ...]) -> None:
    assert select_visible(GPUS, env).targets == targets


def test_an_entry_that_names_nothing_is_explained() -> None:
    selection = select_visible(GPUS, {"CUDA_VISIBLE_DEVICES": "0,GPU-zzzz,2"})

    assert selection.targets == (Target(0),)
    assert selection.notes == (
        "CUDA_VISIBLE_DEVICES entry 'GPU-zzzz' names no visible device: it and the entries after it are ignored",
    )


def test_hiding_every_device_names_the_variable() -> None:
    assert select_visible(GPUS, {"CUDA_VISIBLE_DEVICES": ""}).hidden_by == "CUDA_VISIBLE_DEVICES=''"
    assert select_visible([], {"CUDA_VISIBLE_DEVICES": ""}).hidden_by == ""  # nothing to hide


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "1g.5gb"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", "1g.10gb+me"),
        ("NVIDIA H100 80GB HBM3", ""),
    ],
)
def test_mig_profile_comes_from_the_instance_name(name: str, profile: str) -> None:
    assert mig_profile_of(name) == profile
