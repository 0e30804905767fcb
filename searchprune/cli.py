"""The ``searchprune`` command line: ``run``, ``compare``, ``export`` and ``list``.

The working directory is on the import path, as with ``python -m searchprune``, so a
config may name plug-ins (``"mypkg.tasks:make_task"``) kept beside it.

Exit status: 0 on success, 2 on a config or usage error (the message names the key and
the fix), 1 on a failure while running, 130 on SIGINT (Ctrl-C) and 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from searchprune.config import ConfigError, load_config, read_config_data
from searchprune.provenance import version


def _run(args: argparse.Namespace) -> int:
    from searchprune.runner import run
    from searchprune.trust import check_plugins, read_received_config

    if args.resume:
        config = read_received_config(args.resume, args.set, trust=True)
        if args.config:  # the user's own CONFIG names the same plug-ins: they chose them
            given = load_config(args.config).resolved()
            saved = {**config.resolved(), "run": given["run"]}
            if {**given, "run": given["run"]} != saved:
                raise ConfigError(
                    f"{args.config} differs from the config of the run in {args.resume}; "
                    "resume without CONFIG, or start a new run with --out"
                )
        elif not args.trust_plugins:
            check_plugins(config, args.resume)
        run(config, args.resume, resume=True, echo=_echo(args))
        return 0
    if not args.config:
        raise ConfigError("searchprune run needs a CONFIG file (or --resume RUN_DIR)")
    overrides = list(args.set)
    if args.quiet:
        overrides.append("run.progress=false")
    if args.ray_address:
        overrides += ["evaluator.name=ray", f"evaluator.address={args.ray_address}"]
    config = load_config(args.config, overrides)
    out = args.out or Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    created = not out.exists()
    try:
        run(config, out, echo=_echo(args))
    except ConfigError:
        if created:  # a rejected config leaves no directory behind for a later run to reuse
            _remove_rejected(out)
        raise
    return 0


def _echo(args: argparse.Namespace) -> Callable[[str], None]:
    """Where a command's report goes: stdout, or nowhere with ``--quiet``."""
    return (lambda _: None) if args.quiet else print


def _remove_rejected(out: Path) -> None:
    """Remove the directory a rejected run made, unless another process holds it or a
    run has results there."""
    from searchprune.rundir import RunDir

    files = RunDir(out)
    if not out.is_dir():
        return
    try:
        with files.lock():
            if not files.holds_run:
                shutil.rmtree(out, ignore_errors=True)
    except ConfigError:  # another searchprune process holds it: it is theirs
        pass


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file or lies under one (a usage error, exit 2)."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"lies under {path}, which is a file"
            raise ConfigError(f"--out {out}: {where}; choose a directory")


def _compare(args: argparse.Namespace) -> int:
    from searchprune.compare import compare

    data = read_config_data(args.config, args.set)
    out = args.out or Path("runs") / f"compare-{Path(args.config).stem}"
    _check_out(out)
    compare(data, out, rerun_changed=args.rerun_changed, echo=_echo(args), quiet=args.quiet)
    return 0


def _export(args: argparse.Namespace) -> int:
    from searchprune.export import export_run

    try:
        result = export_run(
            args.run_dir, args.format, args.out, trust_plugins=args.trust_plugins, onnx=args.onnx
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print("\n".join(result.lines()))
    return 0


def _list(args: argparse.Namespace) -> int:
    from searchprune.criteria import CRITERIA
    from searchprune.fitness import FITNESSES
    from searchprune.pruners import METHODS
    from searchprune.search import SEARCHERS
    from searchprune.space import SPACES
    from searchprune.tasks import TASKS

    methods = [
        (e.name, e.description + (" [training-time]" if METHODS.get(e.name).trains else ""))
        for e in METHODS
    ]
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        ("tasks", [(e.name, e.description) for e in TASKS]),
        ("searchers", [(e.name, e.description) for e in SEARCHERS]),
        ("methods", methods),
        ("spaces", [(e.name, e.description) for e in SPACES]),
        ("criteria", [(e.name, e.description) for e in CRITERIA]),
        ("fitness functions", [(e.name, e.description) for e in FITNESSES]),
    ]
    for title, entries in sections:
        print(f"{title}:")
        for name, description in entries:
            print(f"  {name:<20} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchprune", description="Find how to prune a trained PyTorch network by search."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run", help="run a searcher or a baseline method from a YAML config"
    )
    run_parser.add_argument("config", nargs="?", help="YAML config (optional with --resume)")
    run_parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set run.max_evals=200 (repeatable)",
    )
    run_parser.add_argument("--out", type=Path, help="run directory (default runs/<config>-<time>)")
    run_parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint",
    )
    run_parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="evaluate on this Ray cluster (sets evaluator.name=ray)",
    )
    run_parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help="with --resume: import the plug-ins the run directory's config names even when "
        "they are not in the working directory or a searchprune plug-in package",
    )
    _add_quiet(run_parser)
    run_parser.set_defaults(handler=_run)
    compare_parser = commands.add_parser(
        "compare", help="run several methods over budgets and seeds; write tables and plots"
    )
    compare_parser.add_argument("config", help="YAML compare config (with a compare: section)")
    compare_parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    compare_parser.add_argument(
        "--out",
        type=Path,
        help="output directory (default runs/compare-<config>); reruns reuse finished runs",
    )
    compare_parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="run again (replacing them) the runs whose saved config differs from the "
        "comparison's; without it such runs are refused",
    )
    _add_quiet(compare_parser)
    compare_parser.set_defaults(handler=_compare)
    export_parser = commands.add_parser("export", help="write a run's best model to a file")
    export_parser.add_argument("run_dir", type=Path, help="a finished run directory")
    export_parser.add_argument(
        "--format", required=True, choices=["compact", "sparse", "masked", "torch-prune"]
    )
    export_parser.add_argument(
        "--out",
        type=Path,
        help="file to write (default RUN_DIR/model-FORMAT.pt2, a torch.export program, for "
        "compact and masked; .pt for sparse, which is TorchScript, and for torch-prune's "
        "state dict)",
    )
    export_parser.add_argument(
        "--onnx",
        action="store_true",
        help="also write the compact or masked model as ONNX beside --out (suffix .onnx); "
        "needs pip install onnx onnxscript onnxruntime",
    )
    export_parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help="import the plug-ins the run directory's config names even when they are not "
        "in the working directory or a searchprune plug-in package",
    )
    export_parser.set_defaults(handler=_export)
    list_parser = commands.add_parser(
        "list", help="list tasks, searchers, methods, criteria, fitness"
    )
    list_parser.set_defaults(handler=_list)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars and no tables (errors still go to stderr; the exit status "
        "tells the outcome); progress bars are off anyway when stderr is not a terminal",
    )


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise again."""
    try:
        descriptor = os.open(os.devnull, os.O_WRONLY)
        os.dup2(descriptor, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    if os.getcwd() not in sys.path:  # what `python -m` and pytest users expect
        sys.path.insert(0, os.getcwd())
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # here, where a reader that left is handled below
        return code
    except ConfigError as error:
        print(f"searchprune: config error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        from searchprune.runner import RunInterrupted

        if isinstance(interrupt, RunInterrupted):  # the run saved what a resume needs
            print(f"searchprune: {interrupt}", file=sys.stderr)
            return interrupt.exit_code
        print("searchprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`searchprune list | head`): stop quietly
        _silence_stdout()
        return 0 if args.command == "list" else 1
    except Exception as error:
        print(f"searchprune: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
