"""``python -m workloads.launcher``: see the package docstring for options, environment and exit codes."""

import sys

from workloads.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
