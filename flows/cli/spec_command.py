"""``gpuflow spec infer|check``: write a starting dataset spec from a data file, or check a file against a spec.

Importing this module costs only argparse (``gpuflow``'s parser imports it for every command); pyarrow and
the spec code are imported when the command runs. Neither command needs Prefect, MLflow or a server: a spec
given by block name is the one case that needs the Prefect API (``PREFECT_API_URL``).

Wiring (flows/cli.py)::

    add_spec_parser(commands)              # in build_parser()
    if args.command == "spec": return spec_command(args)
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_FAILED = 0, 1


def add_spec_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``spec infer`` and ``spec check`` to the ``gpuflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "spec",
        help="write a dataset spec from a data file, or check a file against a spec",
        description="Dataset specs declare your own data (typed columns, a class or float target, split, "
        "duplicates): see docs/data.md.",
    )
    actions = parser.add_subparsers(dest="spec_action", required=True, metavar="ACTION")
    infer = actions.add_parser(
        "infer",
        help="write a starting spec from a CSV or Parquet file (review it before use)",
        description="Infer column types, observed ranges and the label kind from a data file and write a spec "
        "(YAML) to review: the ranges are what this file holds, not necessarily what your data may hold.",
    )
    infer.add_argument("file", metavar="FILE", help="CSV or Parquet: a path, file:// or s3://bucket/key")
    infer.add_argument("--target", metavar="COL", help="the target column (default: target/label/class/y, else last)")
    infer.add_argument("-o", "--output", metavar="SPEC.yaml", help="write the spec here instead of stdout")
    check = actions.add_parser(
        "check",
        help="validate a data file against a spec without publishing anything",
        description="Read and check FILE exactly as prepare would (types, ranges, classes, duplicates, split) and "
        "publish nothing. Exit 0 when it passes, 1 with the error otherwise.",
    )
    check.add_argument("spec", metavar="SPEC", help="a spec file (YAML/JSON) or a saved DatasetSpec block name")
    check.add_argument("file", metavar="FILE", help="CSV or Parquet: a path, file:// or s3://bucket/key")
    check.add_argument("--val-fraction", type=float, default=0.15)
    check.add_argument("--test-fraction", type=float, default=0.15)
    check.add_argument("--seed", type=int, default=42)
    check.add_argument("--drop-duplicates", action="store_true", help="drop duplicate rows instead of failing")
    check.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def spec_command(args: argparse.Namespace) -> int:
    """Run ``gpuflow spec infer|check``; 0 on success, 1 with ``gpuflow: error: ...`` on stderr otherwise."""
    from tasks.core.errors import GpuflowError

    try:
        if args.spec_action == "infer":
            return _infer(args)
        return _check(args)
    except GpuflowError as exc:
        print(f"gpuflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _infer(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from tasks.data.spec import infer_spec
    from workloads.store import store_from_env

    spec = infer_spec(args.file, store_from_env(), args.target)
    text = (
        f"# dataset spec inferred by `gpuflow spec infer` from {args.file}: review the types, ranges and classes\n"
        + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    )
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        target = spec["target"]
        columns = len(spec["columns"])
        print(f"wrote {args.output}: {columns} feature column(s), target {target['name']!r} ({target['type']})")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from tasks.core.errors import ConfigurationError
    from tasks.data.schema import PrepareParams
    from tasks.data.spec import check_file, resolve_spec
    from workloads.store import store_from_env

    spec = resolve_spec(args.spec)
    if spec is None:
        raise ConfigurationError("SPEC is empty: give a spec file or a saved DatasetSpec block name")
    params = PrepareParams(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        drop_duplicates=args.drop_duplicates,
    )
    result = check_file(args.file, spec, params, store_from_env())
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        rows = ", ".join(f"{k} {v}" for k, v in result["rows"].items())
        print(
            f"ok: {result['source_uri']} matches the spec ({result['task']}); rows {rows}; "
            f"would be dataset version {result['version']}"
        )
    return EXIT_OK
