"""`compress` command line: run, validate, init, report, deploy.

Exit codes: 0 ok, 1 a stage failed, 2 bad usage / config / input, 3 a gate failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compress.errors import CompressError, GateFailed, UsageError


class Console:
    """Prints progress lines unless quiet; errors always go to stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    @staticmethod
    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from compress.config import load_config
    from compress.runner import Runner

    cfg = load_config(args.pipeline)
    if args.quiet:
        from compress.distill import train

        train.SHOW_PROGRESS = False
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    record = Runner(cfg, run_dir, force=args.force, log=console, debug=args.debug).run()
    if record.get("rank"):  # a non-zero torchrun rank: rank 0 reports
        return 0
    report = record["stages"].get("report", {}).get("outputs", {})
    console(f"run dir: {run_dir}")
    if (run_dir / "report.md").exists():
        console(f"report: {run_dir / 'report.md'}")
    failed = [g for g in report.get("gates", []) if not g["passed"]]
    if failed:
        names = ", ".join(f"{g['gate']} ({g['detail']})" for g in failed)
        raise GateFailed(f"gate failed: {names}")
    return 0


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from compress.config import load_config

    cfg = load_config(args.pipeline)
    console(f"{args.pipeline}: ok (stages: teacher, {', '.join(cfg.stages)})")
    return 0


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    from compress.template import PIPELINE_TEMPLATE

    path = Path(args.path)
    if path.exists() and not args.overwrite:
        raise UsageError(f"{path}: already exists (use --overwrite)")
    path.write_text(PIPELINE_TEMPLATE)
    console(f"wrote {path}; run it with: compress run {path}")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from compress.config import load_config
    from compress.fileio import read_json, write_text
    from compress.report import render_devices, render_markdown, summary

    run_dir = Path(args.run_dir)
    results_path = run_dir / "stages" / "benchmark" / "results.json"
    if not results_path.is_file():
        raise UsageError(f"{results_path}: not found (run the pipeline's benchmark stage first)")
    cfg = load_config(run_dir / "pipeline.yaml")
    results = read_json(results_path)
    info = summary(results, cfg.gates)
    write_text(run_dir / "report.md", render_markdown(cfg.name, results, info) + render_devices(run_dir))
    console(f"report: {run_dir / 'report.md'}")
    return 0


def cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    from deploy.cli import run_deploy

    return run_deploy(args, console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compress", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline.yaml")
    run.add_argument("pipeline")
    run.add_argument("--run-dir", help="default: runs/<name>")
    run.add_argument("--force", metavar="STAGE", help="rerun STAGE and every stage after it")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a pipeline.yaml without running it")
    validate.add_argument("pipeline")
    validate.set_defaults(func=cmd_validate)

    init = sub.add_parser("init", help="write a commented example pipeline.yaml")
    init.add_argument("path", nargs="?", default="pipeline.yaml")
    init.add_argument("--overwrite", action="store_true")
    init.set_defaults(func=cmd_init)

    report = sub.add_parser("report", help="rebuild the report of a run from its saved results")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    from deploy.cli import add_arguments as add_deploy_arguments

    deploy = sub.add_parser("deploy", help="ship a run's artifact to devices: verify, benchmark, switch, roll back")
    add_deploy_arguments(deploy)
    deploy.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("quiet", "debug"):  # accepted before or after the sub-command
        setattr(args, name, getattr(args, name, False))
    console = Console(args.quiet)
    try:
        return args.func(args, console)
    except CompressError as error:
        if args.debug:
            import traceback

            traceback.print_exc()
        Console.error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        Console.error("interrupted")
        return 130
