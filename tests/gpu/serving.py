"""The model server on a real GPU, as the GPU checks start it."""

from __future__ import annotations

import json

import numpy as np

from tests.fixtures.model_server import call, start
from workloads.dataset import read_split


def answers_from_the_gpu(tracking_uri: str, model_uri: str, dataset_uri: str, accuracy: float) -> None:
    """The model server started with ``--device cuda`` runs the torch path on the GPU and answers the test split
    at least as well as ``accuracy``."""
    served = start(tracking_uri, "--model-uri", model_uri, "--device", "cuda")
    try:
        served.wait_for(r"ready: ", timeout=120)  # loaded, compiled and warmed up on the device
        status, _, body = call(served, "GET", "/v1/model")
        assert status == 200, body
        described = json.loads(body)
        assert (described["backend"], described["device"]) == ("torch", "cuda:0"), described
        features, labels = read_split(dataset_uri, "test")
        rows = json.dumps({"rows": features[:256].tolist()}).encode()
        status, _, body = call(served, "POST", "/v1/predict", rows, "application/json")
        assert status == 200, body
        assert (np.asarray(json.loads(body)["predictions"]) == labels[:256]).mean() >= accuracy
    finally:
        assert served.stop() == 0, "".join(served.lines)
