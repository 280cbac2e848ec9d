"""`compress` command line: run, validate, init, report, benchmark, runs, compare, deploy.

Exit codes: 0 ok, 1 a stage failed, 2 bad usage / config / input, 3 a gate failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from compress.core.console import Console, count
from compress.core.errors import CompressError, GateFailed, UsageError


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from compress.core.fileio import ensure_writable_dir
    from compress.runner import Runner, load_pipeline

    cfg = load_pipeline(args.pipeline)
    if args.quiet:
        from compress.distill import train

        train.SHOW_PROGRESS = False
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    # named as typed, with the option that changes it (the runner checks the folder again, resolved)
    ensure_writable_dir(run_dir, name=f"--run-dir {run_dir}" if args.run_dir else
                        f"{run_dir} (the default run dir; --run-dir chooses another)")
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

    from compress.data.fingerprint import fingerprint
    from compress.tasks.registry import task_for

    cfg = load_pipeline(args.pipeline)
    task = task_for(cfg)
    data = task.load_data(cfg.seed)  # read and split as the run will: bad data is refused here, not halfway
    console(f"{args.pipeline}: ok (stages: {', '.join(cfg.stages)})")
    console(f"task: {cfg.task_name}")
    files = fingerprint(cfg.data)
    console(f"data: {cfg.data.source}" + (f", {files['files']} files, fingerprint {files['sha256']} (names, sizes "
                                          "and times: a change reruns what reads the data)" if files else ""))
    counts = task.declared_class_counts()
    if counts:
        console(f"samples per class ({len(counts)} classes): " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
                f" ({sum(counts.values())} in the main source, before its val/test split)")
    for line in task.describe_data(data):  # what `compress run` logs as [data]: one description, one function
        console(f"data: {line}")
    for line in task.validate_models(cfg, data):
        console(f"models: {line}")
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
    from compress.core.fileio import DirLock, ensure_writable_dir
    from compress.reporting import rewrite_report
    from compress.reporting.verdict import recommendation_sentence

    run_dir = Path(args.run_dir)
    if not (run_dir / "pipeline.yaml").is_file():  # what is read first: a folder that is no run dir says so
        raise UsageError(f"{run_dir / 'pipeline.yaml'}: not found (not a run dir?)")
    refuse_own_report(run_dir, "report")
    ensure_writable_dir(run_dir, create=False)  # a read-only folder: one line, before any work
    lock = DirLock(run_dir)  # a run's report stage writes the same files, from results that may be half made
    if not lock.acquire():
        raise UsageError(f"{run_dir}: a run (pid {lock.holder()}) is in progress in this run dir: its report stage "
                         "writes the report; to rebuild it, wait until the run has ended")
    try:
        written = rewrite_report(run_dir)
    finally:
        lock.release()
    if written.report["headline"]:
        console(recommendation_sentence(written.report["headline"], written.report["accuracy_budget"]))
    for gate in written.failed_gates:
        console(f"gate {gate['gate']}: FAIL ({gate['detail']})")
    console(f"report: {Path(args.run_dir) / 'report.html'} (and report.md, report.json)")
    return 0


def cmd_benchmark(args: argparse.Namespace, console: Console) -> int:
    from compress.measuring.adhoc import benchmark_file, parse_ints
    from compress.reporting.fmt import latency_table
    from deploy.runner.harness import LatencySettings
    from compress.core.fileio import write_json
    from compress.measuring.footprint import describe

    settings = LatencySettings(args.warmup, args.warmup_seconds, args.runs, args.min_seconds)
    shape = parse_ints(args.shape, "--shape") if args.shape else None
    result = benchmark_file(args.model, args.backend, parse_ints(args.batch, "--batch"), shape, args.threads, settings,
                            args.rounds, memory=not args.no_memory, precision=args.precision)
    print(latency_table(result["rows"]))
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

    for run_dir in (Path(args.run_a), Path(args.run_b)):
        refuse_own_report(run_dir, "compare")
    print(compare_runs(Path(args.run_a), Path(args.run_b)))
    return 0


def cmd_diagnose(args: argparse.Namespace, console: Console) -> int:
    from compress.core.fileio import write_json
    from compress.measuring.diagnose import describe, diagnose, engine_entry
    from compress.runner import load_pipeline
    from compress.tasks.registry import task_for

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        raise UsageError(f"{run_dir}: not a run dir (no run.json)")
    entry = engine_entry(run_dir, args.artifact)  # an artifact the run lacks is refused before the data is read
    pipeline = load_pipeline(run_dir / "pipeline.yaml")
    task = task_for(pipeline)
    result = diagnose(run_dir, args.artifact, task.val_inputs(task.load_data(pipeline.seed), args.samples), entry)
    print("\n".join(describe(result)))
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    from deploy.cli import run_deploy

    run_dir = Path(args.run_dir)
    return run_deploy(args, console, *deploy_stage_of(run_dir).command_hooks(run_dir))


def run_stage_of(run_dir: Path, name: str):
    """Stage `name` of the run's task (a causal LM reports and deploys its own way).

    A run dir without a readable pipeline.yaml gets the shared stage, whose command then says what is missing.
    """
    import yaml

    from compress.config import DataConfig
    from compress.stages import STAGES, stages_of
    from compress.tasks.registry import task_named

    try:
        recorded = yaml.safe_load((run_dir / "pipeline.yaml").read_text()) or {}
        task = task_named(recorded.get("task"), DataConfig.model_validate(recorded["data"])).name
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration, yaml.YAMLError):
        task = None
    return stages_of(task).get(name) or STAGES[name]


def deploy_stage_of(run_dir: Path):
    """The deploy stage of the run's task: its hooks serve `compress deploy`."""
    return run_stage_of(run_dir, "deploy")


def refuse_own_report(run_dir: Path, command: str) -> None:
    """`compress report` and `compare` read the shared report's results; a task with a report stage of its own
    (causal LMs) rebuilds its report by rerunning that stage."""
    from compress.stages import STAGES

    if run_stage_of(run_dir, "report") is not STAGES["report"]:
        raise UsageError(f"{run_dir}: compress {command} reads classification results; this run's task writes its own "
                         f"report: rebuild it with `compress run {run_dir / 'pipeline.yaml'} --run-dir {run_dir} "
                         "--force report` and read report.md")


class OneLineParser(argparse.ArgumentParser):
    """argparse that answers misuse in one line, like every other refusal: the error and where the help is.

    argparse prints its usage block first, several lines that hide the one that says what is wrong.
    Sub-command parsers are made of this class too (add_subparsers uses the parent's class), and
    an argument no parser knows is blamed on the sub-command it was typed after.
    """

    commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.commands.get(getattr(parsed, "command", None), self).error(
                f"unrecognized arguments: {' '.join(unknown)}")
        return parsed


GLOBAL_OPTIONS = (("--quiet", "no progress output"),
                  ("--debug", "show tracebacks, and the libraries' warnings on the console too"))


def add_global_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """--quiet / --debug, before the sub-command or after it (where users type them).

    After it they default to SUPPRESS, so a sub-command that does not see the flag leaves the value
    given before it in place.
    """
    default = {"default": argparse.SUPPRESS} if after_command else {}
    for flag, text in GLOBAL_OPTIONS:
        parser.add_argument(flag, action="store_true", help=text, **default)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="compress", description=__doc__.splitlines()[0])
    add_global_options(parser)
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
    bench.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                       help="openvino: the precision to compute in (default: the plugin's, bf16 on CPUs with AMX or "
                            "AVX512-BF16); the table says what ran")
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

    diagnose = sub.add_parser("diagnose", help="where an engine's outputs start to differ from its model, tensor by tensor")
    diagnose.add_argument("run_dir")
    diagnose.add_argument("artifact", help="an engine of the run, e.g. student.onnxruntime.int8")
    diagnose.add_argument("--samples", type=count, default=64, help="val inputs to compare on (default 64)")
    diagnose.add_argument("--json", help="also write every tensor's error to this file")
    diagnose.set_defaults(func=cmd_diagnose)

    from deploy.cli import add_arguments as add_deploy_arguments

    deploy = sub.add_parser("deploy", help="ship a run's artifact to devices: verify, benchmark, switch, roll back")
    add_deploy_arguments(deploy)
    deploy.set_defaults(func=cmd_deploy)
    for command in sub.choices.values():
        add_global_options(command, after_command=True)
    parser.commands = dict(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("quiet", "debug"):  # accepted before or after the sub-command
        setattr(args, name, getattr(args, name, False))
    console = Console(args.quiet)
    with library_messages(run_log_path(args) if args.command == "run" else None, args.debug):
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


def run_log_path(args: argparse.Namespace) -> Path | None:
    """runs/<name>/run.log (or under --run-dir): the run's name is read from the YAML before it is validated;
    None when the file cannot tell it (cmd_run then says what is wrong)."""
    if args.run_dir:
        return Path(args.run_dir) / "run.log"
    from compress.config import NAME_PATTERN, read_yaml

    try:
        name = (read_yaml(args.pipeline) or {}).get("name")
    except (CompressError, AttributeError):
        return None
    return Path("runs") / name / "run.log" if isinstance(name, str) and NAME_PATTERN.match(name) else None


class RunLog(logging.FileHandler):
    """A log file opened at its first record, its folder made then: a run that logs nothing leaves no file."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextlib.contextmanager
def library_messages(log_path: Path | None, debug: bool):
    """A run's console carries the toolchain's own lines: the libraries' warnings and log records
    (torch's CUDA_HOME and pytree notes, Python warnings) go to `log_path` instead, and with --debug
    to stderr as well. Without a log file (commands other than run) only torch's pytree notes are silenced.
    """
    if not debug:  # torchao's import (through transformers' models) logs deprecation notes of torch's pytree
        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    if log_path is None:
        yield
        return
    handlers: list[logging.Handler] = [RunLog(log_path)] + ([logging.StreamHandler(sys.stderr)] if debug else [])
    import torch  # noqa: F401  (torch gives its loggers console handlers when imported; a run imports it anyway)

    loggers = [logging.getLogger(), logging.getLogger("torch")]
    taken = {logger.name: [h for h in logger.handlers if _writes_to_console(h)] for logger in loggers}
    root_level = logging.getLogger().level
    logging.captureWarnings(True)
    logging.getLogger().setLevel(logging.WARNING)
    for logger in loggers:
        for handler in taken[logger.name]:
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            for handler in handlers:
                logger.removeHandler(handler)
            for handler in taken[logger.name]:
                logger.addHandler(handler)
        for handler in handlers:
            handler.close()
        logging.captureWarnings(False)
        logging.getLogger().setLevel(root_level)


def _writes_to_console(handler: logging.Handler) -> bool:
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return not isinstance(handler, logging.FileHandler) and getattr(handler, "stream", None) in streams
