"""``python -m workloads.server``: the command a pod or a local process runs."""

from workloads.server.cli import main

raise SystemExit(main())
