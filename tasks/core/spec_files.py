"""A spec reference on the command line or in a flow parameter: a YAML/JSON file, or the name of a saved block.

The dataset spec and the trainer spec are both chosen this way (``--dataset-spec``, ``--trainer``), so they read a
reference by one rule: a known suffix, a path separator or an existing file is a file; anything else is a block.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.errors import ConfigurationError
from workloads.store import local_path

SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def spec_path(ref: str) -> Path:
    """The local path a file reference (path or ``file://``) names."""
    text = ref.strip()
    return local_path(text) if text.startswith("file://") else Path(text).expanduser()


def looks_like_file(ref: str) -> bool:
    """Whether a reference names a file rather than a saved block."""
    path = spec_path(ref)
    return path.suffix.lower() in SPEC_SUFFIXES or "/" in ref.strip() or path.is_file()


def read_spec_file(ref: str, what: str, error: type[ConfigurationError]) -> tuple[Path, str]:
    """The file's path and text; a missing file is ``error`` naming ``what`` ("dataset spec") and the path."""
    path = spec_path(ref)
    if not path.is_file():
        raise error(f"{what} file {path} does not exist")
    return path, path.read_text(encoding="utf-8")
