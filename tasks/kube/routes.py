"""Whether a Gateway has taken an HTTPRoute's current weights, read from the route's ``status.parents``.

Writing an HTTPRoute changes nothing by itself: the Gateway's controller (Envoy Gateway, Istio, GKE, ...)
has to accept it and program its data plane. Until it has, requests follow the old weights, or get a 404 or
503 from a Gateway that does not know the route yet, and a canary step would judge traffic it never routed.
Every controller reports on the route, per parent Gateway, with two conditions of the Gateway API:

- ``Accepted``: the Gateway took the route (``False``: it refused it, e.g. ``NotAllowedByListeners``);
- ``ResolvedRefs``: every backend Service was found (``False``: e.g. ``BackendNotFound``).

Each carries ``observedGeneration``; only a condition at the route's current ``metadata.generation`` speaks
for the weights just written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RouteState = Literal["accepted", "rejected", "pending"]


@dataclass(frozen=True)
class RouteStatus:
    state: RouteState
    detail: str  # why it is rejected or still pending, in words


def route_status(route: dict[str, Any], gateway: str, gateway_namespace: str | None = None) -> RouteStatus:
    """What Gateway ``gateway`` (in ``gateway_namespace``, default the route's) says of the route as it is now."""
    metadata = route.get("metadata") or {}
    generation = int(metadata.get("generation") or 1)
    namespace = gateway_namespace or metadata.get("namespace")
    where = f"Gateway {namespace}/{gateway}" if namespace else f"Gateway {gateway}"
    parents = [
        parent
        for parent in (route.get("status") or {}).get("parents") or []
        if _is_gateway(parent.get("parentRef") or {}, gateway, namespace, metadata.get("namespace"))
    ]
    if not parents:
        return RouteStatus("pending", f"{where} has not reported on the route (is its controller running?)")
    stale = False
    for parent in parents:
        conditions = {c.get("type"): c for c in parent.get("conditions") or []}
        current = {kind: c for kind, c in conditions.items() if int(c.get("observedGeneration") or 0) >= generation}
        if not current:
            stale = True
            continue
        for kind in ("Accepted", "ResolvedRefs"):
            condition = current.get(kind)
            if condition is not None and condition.get("status") == "False":
                words = "refused the route" if kind == "Accepted" else "could not resolve the route's backends"
                return RouteStatus("rejected", f"{where} {words}: {_reason(condition)}")
        accepted = current.get("Accepted")
        if accepted is not None and accepted.get("status") == "True":
            return RouteStatus("accepted", f"{where} accepted generation {generation}")
        stale = True
    if stale:
        return RouteStatus("pending", f"{where} has not yet reported on generation {generation} of the route")
    return RouteStatus("pending", f"{where} reported no Accepted condition")


def _is_gateway(ref: dict[str, Any], gateway: str, namespace: str | None, route_namespace: str | None) -> bool:
    if ref.get("kind", "Gateway") != "Gateway" or ref.get("name") != gateway:
        return False
    return (ref.get("namespace") or route_namespace) == namespace


def _reason(condition: dict[str, Any]) -> str:
    reason, message = condition.get("reason") or "no reason given", condition.get("message") or ""
    return f"{reason}: {message}" if message else str(reason)
