"""``python -m flows.cli``: the ``gpuflow`` command (what the tests and benchmarks start)."""

import sys

from flows.cli import main
from workloads.exiting import forget_handled_interrupt

code = main()
forget_handled_interrupt()  # an interrupt main handled ends with 130, never by SIGINT
sys.exit(code)
