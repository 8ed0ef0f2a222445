"""Load a saved block by name, or fail with a configuration error that says what is saved instead.

Prefect's ``Block.load`` answers a mistyped name with a ``ValueError`` (a traceback on the console); every
gpuflow resolver goes through :func:`load_saved` so the user reads the block type and the names that exist.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.blocks.core import Block

from tasks.core.errors import ConfigurationError

B = TypeVar("B", bound=Block)


def strip_slug(cls: type[Block], name: str) -> str:
    """``name`` without a leading ``<block-type-slug>/`` of ``cls`` (both spellings name the same block)."""
    slug = cls.get_block_type_slug()
    return name.split("/", 1)[1] if name.startswith(f"{slug}/") else name


def saved_names(cls: type[Block]) -> list[str]:
    """Names of the saved blocks of ``cls``'s type, sorted; empty when none (or the API cannot list them)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            documents = client.read_block_documents_by_type(cls.get_block_type_slug(), include_secrets=False)
    except Exception:
        return []
    return sorted(d.name for d in documents if d.name and not d.is_anonymous)


def not_saved(cls: type[Block], name: str) -> ConfigurationError:
    """The error for a block name that is not saved: the type, the name and what is saved instead."""
    names = saved_names(cls)
    saved = ", ".join(repr(n) for n in names) if names else "none"
    return ConfigurationError(
        f"no {cls.get_block_type_slug()} block named {name!r} (saved {cls.get_block_type_slug()} blocks: {saved})"
    )


def load_saved(cls: type[B], name: str) -> B:
    """The saved block of ``cls``'s type called ``name`` (``slug/name`` accepted); a missing one names what exists.

    A saved block that no longer validates (a field the UI's form let through, or one an upgrade made invalid)
    is a ``ConfigurationError`` with pydantic's reasons; Prefect's own error only says that validation failed.
    """
    bare = strip_slug(cls, name)
    try:
        block = cls.load(bare)
    except ValueError as exc:
        raise not_saved(cls, bare) from exc
    except RuntimeError as exc:
        if "failed validation" not in str(exc):
            raise
        raise invalid_block(cls, bare) from exc
    if not isinstance(block, cls):
        raise ConfigurationError(f"block {name!r} is a {type(block).__name__}, not a {cls.__name__}")
    return block


def invalid_block(cls: type[Block], name: str) -> ConfigurationError:
    """Why the saved block ``name`` does not validate, field by field."""
    from prefect.client.orchestration import get_client
    from pydantic import ValidationError

    with get_client(sync_client=True) as client:
        saved = client.read_block_document_by_name(name, cls.get_block_type_slug())
    kind = cls.get_block_type_slug()
    try:
        cls.model_validate(saved.data)
    except ValidationError as invalid:
        return ConfigurationError(f"{kind} block {name!r} is not valid: {field_problems(invalid, kind)}")
    return ConfigurationError(f"{kind} block {name!r} failed validation when loaded; save it again from the UI")


def field_problems(invalid: Any, whole: str) -> str:
    """A pydantic ``ValidationError`` as ``field.path: reason`` items (``whole`` names a problem of no field)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in invalid.errors())
