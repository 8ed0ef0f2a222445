"""The OpenAPI 3.1 description served at ``GET /openapi.json``, generated from the loaded model's signature and task.

Kept beside the handlers it describes and rebuilt once the model is known, so the document states the real
input (feature count, tensor shape, typed columns and their categories), the answers of the model's task
(class labels, or numbers for a regressor) and the limits instead of placeholders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workloads.server.inputs import InputSpec

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


def _nested(shape: tuple[int, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    schema = leaf
    for size in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    return schema


_VALUE: dict[str, dict[str, Any]] = {
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
}


def _row_schemas(inputs: InputSpec | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of one row in ``rows``, and of one element of ``instances``."""
    number: dict[str, Any] = {"type": "number"}
    if inputs is None:
        row: dict[str, Any] = {"type": "array", "items": number}
        return row, row
    flat = {"type": "array", "items": number, "minItems": inputs.n_features, "maxItems": inputs.n_features}
    if inputs.shape is not None:
        row = {"oneOf": [_nested(inputs.shape, number), flat]}
        return row, row
    if not inputs.columns:
        return flat, flat
    values = []
    for column in inputs.columns:
        value: dict[str, Any] = dict(_VALUE[column.kind])
        if column.categories is not None:
            value["enum"] = list(column.categories)
        values.append(value)
    row = {"type": "array", "prefixItems": values, "items": False, "minItems": len(values)} if inputs.typed else flat
    names = [column.name for column in inputs.columns]
    keyed = {"type": "object", "properties": dict(zip(names, values, strict=True)), "required": names}
    return row, {"oneOf": [row, keyed]}


def _answers(task: str | None, labels: list[Any] | None) -> tuple[str, dict[str, Any], str]:
    """Summary, JSON answer schema and compact answer description for the task."""
    number: dict[str, Any] = {"type": "number"}
    if task == "regression":
        answer = {
            "type": "object",
            "required": ["predictions"],
            "properties": {"predictions": {"type": "array", "items": number}},
        }
        return (
            "Predict one value per row (a regression model).",
            answer,
            "One little-endian float32 value per row.",
        )
    label: dict[str, Any] = {"enum": labels} if labels else {}
    answer = {
        "type": "object",
        "required": ["predictions"],
        "properties": {
            "predictions": {"type": "array", "items": label},
            "probabilities": {"type": "array", "items": {"type": "array", "items": number}},
            "labels": {"type": "array", "description": "Probability column order."},
        },
    }
    return (
        "Predict class labels (and probabilities with proba=1) for rows of raw features.",
        answer,
        "One little-endian int32 label index per row (labels from GET /v1/model); with proba=1 followed by "
        "n_classes float32 per row.",
    )


def document(
    *,
    model: str,
    version: str,
    inputs: InputSpec | None,
    task: str | None,
    labels: list[Any] | None,
    max_rows: int,
    max_body_bytes: int,
) -> dict[str, Any]:
    """The API document; ``inputs``, ``task`` and ``labels`` are None before the model is loaded."""
    row, instance = _row_schemas(inputs)
    rows = {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}
    summary, answer, compact_answer = _answers(task, labels)
    width = f"{inputs.n_features}" if inputs is not None else "n_features"
    request_content: dict[str, Any] = {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"type": "object", "required": ["rows"], "properties": {"rows": rows}},
                    {
                        "type": "object",
                        "required": ["instances"],
                        "properties": {"instances": {"type": "array", "items": instance, "maxItems": max_rows}},
                    },
                ]
            }
        },
    }
    answer_content: dict[str, Any] = {"application/json": {"schema": answer}}
    if inputs is None or not inputs.typed:
        request_content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": f"Rows of {width} little-endian float32 values, back to back.",
        }
        answer_content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": compact_answer,
        }
    parameters = []
    if task != "regression":
        parameters.append(
            {
                "name": "proba",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                "description": "1 or true: also return class probabilities.",
            }
        )
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
                    "summary": summary,
                    "parameters": parameters,
                    "requestBody": {"required": True, "content": request_content},
                    "responses": {
                        "200": {"description": "One prediction per row, in row order.", "content": answer_content},
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
                    "summary": "The model served: name, version, task, labels, input.",
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
