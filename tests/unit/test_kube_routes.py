"""Reading a Gateway's verdict on an HTTPRoute from its status, as controllers write it (Gateway API v1)."""

from __future__ import annotations

from typing import Any

from tasks.kube.routes import route_status


def condition(kind: str, status: str, generation: int, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "observedGeneration": generation, "reason": reason, "message": message}


def route(generation: int, *parents: dict[str, Any], namespace: str = "ml") -> dict[str, Any]:
    return {
        "metadata": {"name": "digits", "namespace": namespace, "generation": generation},
        "spec": {"parentRefs": [{"kind": "Gateway", "name": "edge"}]},
        "status": {"parents": list(parents)},
    }


def parent(*conditions: dict[str, Any], name: str = "edge", namespace: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name}
    if namespace:
        ref["namespace"] = namespace
    return {"parentRef": ref, "controllerName": "example.net/gateway", "conditions": list(conditions)}


def test_accepted_at_the_current_generation_is_accepted() -> None:
    found = route_status(
        route(3, parent(condition("Accepted", "True", 3), condition("ResolvedRefs", "True", 3))), "edge"
    )

    assert found.state == "accepted"


def test_an_answer_about_an_older_generation_is_still_pending() -> None:
    found = route_status(route(4, parent(condition("Accepted", "True", 3))), "edge")

    assert found.state == "pending"
    assert found.detail == "Gateway ml/edge has not yet reported on generation 4 of the route"


def test_no_status_from_the_gateway_says_its_controller_may_be_missing() -> None:
    assert route_status(route(1), "edge").detail == (
        "Gateway ml/edge has not reported on the route (is its controller running?)"
    )
    other = route_status(route(1, parent(condition("Accepted", "True", 1), name="other")), "edge")
    assert other.state == "pending", "another Gateway's verdict does not count"


def test_a_refusal_names_the_gateway_and_its_reason() -> None:
    refused = condition("Accepted", "False", 2, "NotAllowedByListeners", "no listener allows namespace ml")

    found = route_status(route(2, parent(refused)), "edge")

    assert found.state == "rejected"
    assert found.detail == ("Gateway ml/edge refused the route: NotAllowedByListeners: no listener allows namespace ml")


def test_unresolved_backends_are_a_rejection_even_when_accepted() -> None:
    found = route_status(
        route(2, parent(condition("Accepted", "True", 2), condition("ResolvedRefs", "False", 2, "BackendNotFound"))),
        "edge",
    )

    assert (found.state, found.detail) == (
        "rejected",
        "Gateway ml/edge could not resolve the route's backends: BackendNotFound",
    )


def test_the_gateway_namespace_defaults_to_the_routes_and_must_match() -> None:
    accepted = condition("Accepted", "True", 1)
    elsewhere = route(1, parent(accepted, namespace="infra"))

    assert route_status(elsewhere, "edge", "infra").state == "accepted"
    assert route_status(elsewhere, "edge").state == "pending"
    assert route_status(route(1, parent(accepted)), "edge", "ml").state == "accepted"
