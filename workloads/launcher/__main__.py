"""``python -m workloads.launcher``: see the package docstring for options, environment and exit codes."""

from workloads.exiting import exit_quickly
from workloads.launcher.cli import main

if __name__ == "__main__":
    exit_quickly(main())
