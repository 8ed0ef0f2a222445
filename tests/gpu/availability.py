"""Why the GPU checks cannot run here ("" when they can): torch must see CUDA and NVML a device."""

from __future__ import annotations

import os

import torch

from workloads.gpu import inventory


def why_no_gpu() -> str:
    cuda, nvml = torch.cuda.is_available(), inventory().count > 0
    if cuda and nvml:
        return ""
    if not cuda and not nvml:
        return "no NVIDIA GPU: torch.cuda.is_available() is False and NVML found no device"
    if not cuda:
        return "NVML sees a GPU but torch.cuda.is_available() is False (CPU-only torch build?)"
    if os.environ.get("GPUFLOW_TEST_REAL_NVML") != "1":
        return "torch sees CUDA but the suite hides the real NVML: run with GPUFLOW_TEST_REAL_NVML=1"
    return "torch sees CUDA but NVML found no device (no libnvidia-ml.so.1 on the library path?)"


REASON = why_no_gpu()
