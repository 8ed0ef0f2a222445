"""The dataset-spec block: a team's declared dataset (columns, target, split, duplicates), saved by name.

``gpuflow run --dataset-spec NAME`` and ``prepare(dataset_spec="NAME")`` load it when NAME is not a file;
the Prefect UI shows it as a form. The spec model itself lives in ``tasks.core.dataset_spec``.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.loading import load_saved
from tasks.core.dataset_spec import DatasetSpec, digits_spec


class DatasetSpecBlock(Block):
    """A saved dataset spec.

    Example:
        Save a spec read from a file, then load it by name:
        ```python
        from blocks.dataset_spec import DatasetSpecBlock
        from tasks.core.dataset_spec import parse_spec_text
        DatasetSpecBlock(spec=parse_spec_text(open("spec.yaml").read())).save("churn")
        dataset_spec_block = DatasetSpecBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "gpuflow Dataset Spec"
    _block_type_slug = "gpuflow-dataset-spec"

    spec: DatasetSpec = Field(
        default_factory=digits_spec, description="Feature columns, target, split and duplicate policy."
    )


def load_spec_block(name: str) -> DatasetSpec:
    """The spec saved under ``name``; a missing name is a ConfigurationError listing the saved ones."""
    return load_saved(DatasetSpecBlock, name).spec
