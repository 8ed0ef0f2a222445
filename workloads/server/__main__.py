"""``python -m workloads.server``: the command a pod or a local process runs."""

from workloads.exiting import forget_handled_interrupt
from workloads.server.cli import main

code = main()
forget_handled_interrupt()  # stopped by SIGINT mid-import still ends with the server's own exit code
raise SystemExit(code)
