"""Errors that end a trainer with the contract's exit code: the built-in trainer, the launcher and the SDK raise
the same ones, so each failure maps to one exit code wherever it happens."""

from __future__ import annotations

from workloads.sdk.contract import EXIT_CONFIG, EXIT_DATA, EXIT_FAILED


class TrainerError(Exception):
    """An error with a message for the user and the exit code the program ends with."""

    exit_code = EXIT_FAILED


class ConfigError(TrainerError):
    """Arguments or environment the trainer cannot use."""

    exit_code = EXIT_CONFIG


class DatasetError(TrainerError):
    """The dataset is missing, incomplete or does not match its manifest."""

    exit_code = EXIT_DATA


class GroupError(TrainerError):
    """Distributed training: another rank failed (ending with its exit code), or the group could not be reached."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code
