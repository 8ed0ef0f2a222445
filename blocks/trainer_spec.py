"""The trainer-spec block: a team's training code (entry point or command), its hyperparameters, saved by name.

``gpuflow run --trainer NAME`` and ``ml_pipeline(trainer="NAME")`` load it when NAME is not a file; the Prefect UI
shows it as a form. The spec model lives in ``tasks.core.trainer_spec``; the contract is docs/trainers.md.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.loading import load_saved
from tasks.core.trainer_spec import TrainerSpec


class TrainerSpecBlock(Block):
    """A saved trainer spec.

    Example:
        Save a spec read from a file, then load it by name:
        ```python
        from blocks.trainer_spec import TrainerSpecBlock
        from tasks.core.trainer_spec import parse_trainer_text
        TrainerSpecBlock(spec=parse_trainer_text(open("trainer.yaml").read())).save("cnn")
        trainer_spec_block = TrainerSpecBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "gpuflow Trainer Spec"
    _block_type_slug = "gpuflow-trainer-spec"

    spec: TrainerSpec = Field(
        default_factory=TrainerSpec,
        description="Entry point or command (empty: the built-in MLP), hyperparameters and their types.",
    )


def load_trainer_block(name: str) -> TrainerSpec:
    """The spec saved under ``name``; a missing name is a ConfigurationError listing the saved ones."""
    return load_saved(TrainerSpecBlock, name).spec
