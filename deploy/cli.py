"""`compress deploy RUN_DIR --target T [--target T2 ...]`: bundle, ship, verify, measure, switch.

Also `--status` (releases on each device and which is current) and `--rollback` (back to the
previous release). Bad input is refused before any device is changed: one line, exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.cli import Console

from compress.errors import UsageError
from deploy.targets import SshOptions, Target, parse_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--target", action="append", required=True, metavar="TARGET",
                        help="local:/path, ssh://user@host[:port]/path or jetson://user@host[:port]/path; repeatable")
    parser.add_argument("--runtime", help="onnxruntime | openvino | tensorrt (default: onnxruntime; "
                                          "tensorrt for jetson://)")
    parser.add_argument("--artifact", help="model.backend.precision, e.g. student.onnxruntime.fp32")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--rollback", action="store_true", help="switch back to the previous release")
    action.add_argument("--status", action="store_true", help="list releases and which is current")
    parser.add_argument("--known-hosts", metavar="FILE", help="check host keys against FILE only (strict)")
    parser.add_argument("--identity", metavar="FILE", help="ssh private key (ssh -i)")
    parser.add_argument("--ssh-config", metavar="FILE", help="ssh -F FILE instead of ~/.ssh/config")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="ssh -o, repeatable")
    parser.add_argument("--bwlimit", type=int, metavar="KBPS", help="upload bandwidth limit in KB/s")
    parser.add_argument("--val-samples", type=int, default=256, help="labelled val samples shipped for top-1")


def ssh_options(args: argparse.Namespace) -> SshOptions:
    files = (("--known-hosts", args.known_hosts), ("--identity", args.identity), ("--ssh-config", args.ssh_config))
    for flag, value in files:
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{flag} {value}: file not found")
    for option in args.ssh_option:
        if "=" not in option or option.startswith("-"):
            raise UsageError(f"--ssh-option {option}: write it as Key=Value")
    absolute = {flag: str(Path(value).resolve()) if value else None for flag, value in files}
    return SshOptions(absolute["--known-hosts"], absolute["--identity"], list(args.ssh_option),
                      absolute["--ssh-config"])


def run_deploy(args: argparse.Namespace, console: "Console") -> int:
    from deploy.release import check_slugs

    ssh = ssh_options(args)
    targets = [parse_target(spec, ssh) for spec in args.target]
    check_slugs(targets)
    if args.bwlimit is not None and args.bwlimit < 1:
        raise UsageError(f"--bwlimit {args.bwlimit}: must be >= 1 KB/s")
    if args.status or args.rollback:
        return releases_command(targets, "status" if args.status else "rollback", console, Path(args.run_dir))
    failed = deploy_command(Path(args.run_dir), targets, console, args.runtime, args.artifact, args.val_samples,
                            args.bwlimit)
    return 1 if failed else 0


def releases_command(targets: list[Target], command: str, console: "Console", run_dir: Path) -> int:
    from deploy.release import in_parallel, note_current, refuse_usage_errors

    outcomes = in_parallel(targets, lambda t: t.runner(command, t.root, timeout=120))
    refuse_usage_errors(outcomes)
    failed = 0
    for target, answer, error in outcomes:
        if error is not None:
            failed += 1
            console.error(f"{target.label}: FAILED: {str(error).removeprefix(target.label + ': ')}")
            continue
        if command == "rollback":
            console(f"{target.label}: current {answer['current']} (was {answer['previous']})")
            if note_current(run_dir, target, answer["current"]):
                refresh_report(run_dir)
            continue
        console(f"{target.label}: {len(answer['releases'])} release(s), current {answer['current'] or 'none'}")
        for release in answer["releases"]:
            mark = "*" if release["current"] else " "
            console(f"  {mark} {release['version']}  {release['artifact']}  {release['runtime']}  {release['created']}")
        for name in answer.get("incomplete_uploads", []):
            console(f"    {name}  (incomplete upload, never current)")
    return 1 if failed else 0


def deploy_command(run_dir: Path, targets: list[Target], console: "Console", runtime: str | None = None,
                   artifact: str | None = None, val_samples: int = 256, bwlimit: int | None = None) -> list[str]:
    """Deploy one artifact of the run to every target at once; returns the labels of the targets that failed.

    Bad input (an unknown runtime or artifact, a device that cannot run it) raises UsageError before
    any device is changed. The device results land in stages/deploy/<target>/results.json and the
    run's report is rebuilt with them.
    """
    from deploy.bundle import choose, make_bundle, read_run
    from deploy.release import deploy_bundle, in_parallel, probe, refuse_usage_errors, save_results, summary_line
    from deploy.targets import describe

    run_dir = run_dir.resolve()
    record = read_run(run_dir)
    if val_samples < 1:
        raise UsageError(f"--val-samples {val_samples}: must be >= 1")
    choices = {t.spec: choose(run_dir, record, runtime, artifact, t.default_runtime) for t in targets}

    probes = in_parallel(targets, lambda t: probe(t, choices[t.spec].runtime))
    refuse_usage_errors(probes)  # bad input: exit 2 before any device is changed
    devices = {t.spec: info for t, info, error in probes if error is None}
    for target, info, error in probes:
        if error is None:
            console(f"{target.label}: {describe(info)}")

    bundles: dict[str, Any] = {}
    out_root = run_dir / "stages" / "deploy" / "bundles"
    for choice in {choices[spec].name: choices[spec] for spec in devices}.values():
        bundles[choice.name] = make_bundle(run_dir, choice, out_root, val_samples)
        console(f"bundle {bundles[choice.name].version}: {choice.name} ({out_root / bundles[choice.name].version})")

    def ship(target: Target) -> dict[str, Any]:
        log = lambda message: console(f"{target.label}: {message}")  # noqa: E731
        results = deploy_bundle(target, bundles[choices[target.spec].name], devices[target.spec], log, bwlimit)
        save_results(run_dir, target, results)
        return results

    reachable = [t for t in targets if t.spec in devices]
    shipped = {t.spec: (r, e) for t, r, e in in_parallel(reachable, ship)}
    failed = []
    console("summary:")
    for target, _, error in probes:
        results, error = shipped.get(target.spec, (None, error))
        if error is not None:
            failed.append(target.label)
            console.error(f"{target.label}: FAILED, current unchanged: {str(error).removeprefix(target.label + ': ')}")
        else:
            console(f"  {target.label}: ok, {summary_line(results)}")
    refresh_report(run_dir)
    return failed


def refresh_report(run_dir: Path) -> None:
    """Fold the device results into the run's report (when the run has a benchmark to report)."""
    from compress import cli

    if (run_dir / "stages" / "benchmark" / "results.json").is_file():
        cli.main(["--quiet", "report", str(run_dir)])

