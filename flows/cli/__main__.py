"""``python -m flows.cli``: the ``gpuflow`` command (what the tests and benchmarks start)."""

import sys

from flows.cli import main

sys.exit(main())
