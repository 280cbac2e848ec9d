"""`compress` command line: run, validate, init, report, benchmark, runs, compare, deploy.

Exit codes: 0 ok, 1 a stage failed, 2 bad usage / config / input, 3 a gate failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compress.core.console import Console
from compress.core.errors import CompressError, GateFailed, UsageError


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from compress.runner import Runner, load_pipeline

    cfg = load_pipeline(args.pipeline)
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
        console(f"report: {run_dir / 'report.md'}" + (f", {run_dir / 'report.html'}" if (run_dir / "report.html").exists() else ""))
    failed = [g for g in report.get("gates", []) if not g["passed"]]
    if failed:
        names = ", ".join(f"{g['gate']} ({g['detail']})" for g in failed)
        raise GateFailed(f"gate failed: {names}")
    return 0


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from compress.runner import load_pipeline

    cfg = load_pipeline(args.pipeline)
    console(f"{args.pipeline}: ok (stages: {', '.join(cfg.stages)})")
    return 0


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    from compress.cli.template import PIPELINE_TEMPLATE

    path = Path(args.path)
    if path.exists() and not args.overwrite:
        raise UsageError(f"{path}: already exists (use --overwrite)")
    path.write_text(PIPELINE_TEMPLATE)
    console(f"wrote {path}; run it with: compress run {path}")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from compress.reporting import rewrite_report

    written = rewrite_report(Path(args.run_dir))
    for gate in written.failed_gates:
        console(f"gate {gate['gate']}: FAIL ({gate['detail']})")
    console(f"report: {Path(args.run_dir) / 'report.html'} (and report.md, report.json)")
    return 0


def cmd_benchmark(args: argparse.Namespace, console: Console) -> int:
    from compress.measuring.adhoc import benchmark_file, format_rows, parse_ints
    from deploy.runner.harness import LatencySettings
    from compress.core.fileio import write_json
    from compress.measuring.footprint import describe

    settings = LatencySettings(args.warmup, args.warmup_seconds, args.runs, args.min_seconds)
    shape = parse_ints(args.shape, "--shape") if args.shape else None
    result = benchmark_file(args.model, args.backend, parse_ints(args.batch, "--batch"), shape, args.threads, settings,
                            args.rounds, memory=not args.no_memory)
    print(format_rows(result["rows"]))
    for row in result["rows"]:
        if row.get("note"):
            print(f"note: batch {row['batch_size']}: {row['note']}")
    if result.get("memory"):
        print(f"memory: {describe(result['memory'])}")
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from compress.reporting.runs import list_runs

    print(list_runs(Path(args.root)))
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from compress.reporting.runs import compare_runs

    print(compare_runs(Path(args.run_a), Path(args.run_b)))
    return 0


def cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    from compress.stages.deploy import make_val_sample, refresh_report
    from deploy.cli import run_deploy

    return run_deploy(args, console, make_val_sample, refresh_report)


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

    bench = sub.add_parser("benchmark", help="benchmark one ONNX, IR, engine file or checkpoint and print the table")
    bench.add_argument("model", help="a model file, or an engine folder with engine.json")
    bench.add_argument("--backend", help="torch | onnxruntime | openvino | tensorrt (default: from the file)")
    bench.add_argument("--batch", default="1", help="batch sizes, comma-separated (default: 1)")
    bench.add_argument("--shape", help="per-sample input shape C,H,W when the file does not record it")
    bench.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--warmup-seconds", type=float, default=0.2)
    bench.add_argument("--runs", type=int, default=30)
    bench.add_argument("--min-seconds", type=float, default=0.5)
    bench.add_argument("--rounds", type=int, default=3,
                       help="load and time the artifact afresh this many times (default: 3); the rounds give the "
                            "p50's ± (how far a rerun may land, 95%%); 1 shows within-run sampling error only")
    bench.add_argument("--no-memory", action="store_true",
                       help="skip the memory measurement (the artifact alone in a fresh process)")
    bench.add_argument("--json", help="also write the rows (results.json schema) to this file")
    bench.set_defaults(func=cmd_benchmark)

    runs = sub.add_parser("runs", help="list runs with their headline numbers")
    runs.add_argument("root", nargs="?", default="runs", help="folder of run dirs (default: runs)")
    runs.set_defaults(func=cmd_runs)

    compare = sub.add_parser("compare", help="show two runs side by side")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.set_defaults(func=cmd_compare)

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
