"""``python -m workloads.trainer``: see the package docstring for arguments, environment and exit codes."""

from workloads.exiting import exit_quickly
from workloads.trainer.cli import main

if __name__ == "__main__":
    exit_quickly(main())
