"""The OpenAPI 3.1 description served at ``GET /openapi.json``, filled in with the loaded model's shape.

Kept beside the handlers it describes and rebuilt once the model is known, so the document states the real
feature count, labels and limits instead of placeholders.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "Refused; the body says what was wrong and what was expected.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "expected": {"type": "string"}},
            }
        }
    },
}


def _status(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}},
    }


def document(
    *,
    model: str,
    version: str,
    n_features: int | None,
    labels: list[Any] | None,
    feature_names: list[str] | None,
    max_rows: int,
    max_body_bytes: int,
) -> dict[str, Any]:
    """The API document; ``n_features``/``labels`` are None before the model is loaded."""
    number: dict[str, Any] = {"type": "number"}
    row: dict[str, Any] = {"type": "array", "items": number}
    if n_features is not None:
        row |= {"minItems": n_features, "maxItems": n_features}
    rows = {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}
    instance: dict[str, Any] = row
    if feature_names:
        keyed = {"type": "object", "properties": {name: number for name in feature_names}, "required": feature_names}
        instance = {"oneOf": [row, keyed]}
    label: dict[str, Any] = {"enum": labels} if labels else {}
    width = f"{n_features}" if n_features is not None else "n_features"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gpuflow inference server",
            "version": "1",
            "description": f"Serves {model} version {version}; at most {max_rows} rows, {max_body_bytes} body bytes.",
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "summary": "Predict class labels (and probabilities with proba=1) for rows of raw features.",
                    "parameters": [
                        {
                            "name": "proba",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                            "description": "1 or true: also return class probabilities (softmax of the logits).",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"type": "object", "required": ["rows"], "properties": {"rows": rows}},
                                        {
                                            "type": "object",
                                            "required": ["instances"],
                                            "properties": {
                                                "instances": {"type": "array", "items": instance, "maxItems": max_rows}
                                            },
                                        },
                                    ]
                                }
                            },
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"},
                                "description": f"Rows of {width} little-endian float32 values, back to back.",
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One prediction per row, in row order.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["predictions"],
                                        "properties": {
                                            "predictions": {"type": "array", "items": label},
                                            "probabilities": {
                                                "type": "array",
                                                "items": {"type": "array", "items": number},
                                            },
                                            "labels": {"type": "array", "description": "Probability column order."},
                                        },
                                    }
                                },
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"},
                                    "description": "One little-endian int32 label index per row (labels from "
                                    "GET /v1/model); with proba=1 followed by n_classes float32 per row.",
                                },
                            },
                        },
                        "400": _ERROR,
                        "405": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                        "422": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/v1/model": {
                "get": {
                    "summary": "The model served: name, version, labels, features.",
                    "responses": {"200": _status("Model metadata."), "503": _ERROR},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: 200 while the process serves HTTP.",
                    "responses": {"200": _status("Alive.")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: 200 once the model is loaded and warmed up, 503 before and while stopping.",
                    "responses": {"200": _status("Ready."), "503": _status("Loading or stopping.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text exposition format 0.0.4).",
                    "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1."}}}
            },
        },
    }
