"""``python -m workloads.trainer``: see the package docstring for arguments, environment and exit codes."""

import gc
import sys

from workloads.trainer.cli import main

if __name__ == "__main__":
    code = main()
    # The interpreter's final garbage collections walk every torch/MLflow object (over a second here);
    # nothing left needs finalising, so freeze them out of its way. atexit handlers still run.
    gc.freeze()
    sys.exit(code)
