"""What Kubernetes accepts as names, labels, quantities, tolerations and extended resources, checked before
anything reaches a cluster: each check raises a :class:`ConfigurationError` naming the bad value and what was
expected, the way the API server would refuse it, only earlier and in gpuflow's words."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from tasks.core.errors import ConfigurationError

GPU_RESOURCE = "nvidia.com/gpu"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_MIG = re.compile(r"^nvidia\.com/mig-\d+g\.\d+gb$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}


def label_value(value: str) -> str:
    """``value`` made a valid label value: other characters become '-', at most 63, alphanumeric ends."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text)


def label_key(key: str) -> str:
    """Check a label key: ``[prefix/]name`` with a DNS subdomain prefix and a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or not (
        len(name) <= 63 and _LABEL_NAME.match(name)
    ):
        raise ConfigurationError(
            f"label key {key!r} is not valid: expected [dns.prefix/]name, the name 1-63 letters, digits, '-', '_', '.'"
        )
    return key


def label_value_checked(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ConfigurationError(
            f"{what} {value!r} is not a valid label value: at most 63 letters, digits, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )
    return value


def check_labels(labels: Mapping[str, str], what: str) -> None:
    """Check every key and value of a label map, naming ``what`` (node selector, label) in the error."""
    for key, value in labels.items():
        try:
            label_key(key)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{what}: {exc}") from None
        label_value_checked(value, f"{what} {key}=")


def check_toleration(toleration: Mapping[str, Any]) -> None:
    """Check one toleration's fields, operator, effect and key as the API server would."""
    if not isinstance(toleration, Mapping):
        raise ConfigurationError(f"a toleration must be a mapping, got {toleration!r}")
    unknown = set(toleration) - _TOLERATION_KEYS
    if unknown:
        raise ConfigurationError(
            f"toleration {toleration!r} has unknown fields {sorted(unknown)}: "
            f"expected {', '.join(sorted(_TOLERATION_KEYS))}"
        )
    operator = toleration.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise ConfigurationError(f"toleration operator must be Equal or Exists, got {operator!r}")
    if operator == "Exists" and toleration.get("value"):
        raise ConfigurationError(f"toleration {toleration!r}: operator Exists takes no value")
    effect = toleration.get("effect")
    if effect not in (None, "", *_EFFECTS):
        raise ConfigurationError(f"toleration effect must be one of {', '.join(sorted(_EFFECTS))}, got {effect!r}")
    if toleration.get("key"):
        label_key(str(toleration["key"]))


def gpu_resource_name(name: str) -> str:
    """``nvidia.com/gpu``, a MIG profile ``nvidia.com/mig-<g>g.<m>gb``, or another vendor's ``domain/name``."""
    if name == GPU_RESOURCE or _MIG.match(name):
        return name
    if name.startswith("nvidia.com/mig"):
        raise ConfigurationError(
            f"MIG resource {name!r} must look like nvidia.com/mig-<g>g.<m>gb, e.g. nvidia.com/mig-1g.10gb"
        )
    prefix, _, rest = name.partition("/")
    if not rest or not _DNS_SUBDOMAIN.match(prefix) or prefix.endswith("kubernetes.io") or not _LABEL_NAME.match(rest):
        raise ConfigurationError(
            f"GPU resource {name!r} is not an extended resource name: expected nvidia.com/gpu, "
            "nvidia.com/mig-<g>g.<m>gb or <vendor domain>/<name>"
        )
    return name


def quantity(text: str, what: str) -> Decimal:
    """Parse a Kubernetes quantity (``500m``, ``4``, ``16Gi``, ``1e3``); a clear error names the field."""
    try:
        value = parse_quantity(text.strip()) if isinstance(text, str) else None
    except ValueError:
        value = None
    if value is None or value < 0:
        raise ConfigurationError(f"{what} must be a Kubernetes quantity such as 500m, 2, 512Mi or 16Gi, got {text!r}")
    return Decimal(value)


def not_above(request: str, limit: str, resource: str) -> None:
    """A request above its limit is refused by Kubernetes: refuse it here first."""
    if quantity(request, f"{resource}_request") > quantity(limit, f"{resource}_limit"):
        raise ConfigurationError(f"{resource} request {request} is above its limit {limit}; Kubernetes refuses that")


def dns_label(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        raise ConfigurationError(f"{what} must be 1-63 lowercase letters, digits or '-' (a DNS label), got {value!r}")
    return value


def dns_subdomain(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ConfigurationError(
            f"{what} must be a DNS subdomain (lowercase letters, digits, '-' and '.'), got {value!r}"
        )
    return value


def env_name(name: str) -> None:
    if not _ENV_NAME.match(name):
        raise ConfigurationError(f"environment variable name {name!r} is not valid in Kubernetes")


def whole_number(value: object, what: str, minimum: int) -> None:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{what} must be a whole number, at least {minimum}, got {value!r}")


def slug(text: str) -> str:
    """Lowercase letters, digits and single dashes: the readable part of a generated name."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
