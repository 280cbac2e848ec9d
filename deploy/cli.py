"""`compress deploy RUN_DIR --target T [--target T2 ...]`: bundle, ship, verify, measure, switch.

Also `--status` (releases on each device and which is current) and `--rollback` (back to the
previous release). Bad input is refused before any device is changed: one line, exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compress.core.console import count
from compress.core.errors import GateFailed, UsageError
from deploy.bundle import Packer, SampleMaker, failed_gates, gates_refusal, read_run
from deploy.fleet import KEEP, Console, ReportRefresher, deploy_command, releases_command
from deploy.release import check_slugs
from deploy.targets import SshOptions, parse_target
from deploy.targets.ssh import unsafe_path


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
    parser.add_argument("--val-samples", type=count, default=256, help="labelled val samples shipped for top-1")
    parser.add_argument("--allow-failed-gates", action="store_true",
                        help="deploy a run whose gates failed (refused otherwise, exit 3)")
    parser.add_argument("--keep", type=int, default=KEEP, metavar="N",
                        help=f"releases kept on each device and bundles on this machine (default {KEEP}); older "
                             "ones are removed after a switch, never the current one nor the one --rollback goes to")


def ssh_options(args: argparse.Namespace) -> SshOptions:
    files = (("--known-hosts", args.known_hosts), ("--identity", args.identity), ("--ssh-config", args.ssh_config))
    for flag, value in files:
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{flag} {value}: file not found")
        if value is not None and flag != "--ssh-config" and unsafe_path(str(Path(value).resolve())):
            raise UsageError(f"{flag} {value}: {unsafe_path(str(Path(value).resolve()))}")
    for option in args.ssh_option:
        if "=" not in option or option.startswith("-"):
            raise UsageError(f"--ssh-option {option}: write it as Key=Value")
    absolute = {flag: str(Path(value).resolve()) if value else None for flag, value in files}
    return SshOptions(absolute["--known-hosts"], absolute["--identity"], list(args.ssh_option),
                      absolute["--ssh-config"])


def check_gates(run_dir: Path, allow_failed: bool, console: Console) -> None:
    """Refuse a run whose gates failed, as the pipeline's deploy stage does, unless --allow-failed-gates.

    Exit 3, not 2: the input is sound and the verdict is the one `compress run` gave with 3, so a
    script that stops on a failed gate treats both commands alike; nothing on a device has changed.
    """
    failed = failed_gates(read_run(run_dir)["stages"].get("report", {}).get("outputs") or {})
    if not failed:
        return
    if not allow_failed:
        raise GateFailed(f"{run_dir}: {gates_refusal(failed, '--allow-failed-gates')}")
    console(f"note: deploying although gate(s) failed ({', '.join(failed)}): --allow-failed-gates")


def run_deploy(args: argparse.Namespace, console: Console, make_sample: SampleMaker | None,
               refresh_report: ReportRefresher, packer: Packer | None = None) -> int:
    """The parsed `compress deploy` arguments, carried out; the hooks come from the compress side (`packer`: how
    the run's artifact is chosen and bundled where it is no classifier's, e.g. a causal LM's)."""
    ssh = ssh_options(args)
    targets = [parse_target(spec, ssh) for spec in args.target]
    check_slugs(targets)
    if args.bwlimit is not None and args.bwlimit < 1:
        raise UsageError(f"--bwlimit {args.bwlimit}: must be >= 1 KB/s")
    if args.keep < 1:
        raise UsageError(f"--keep {args.keep}: must be >= 1")
    if args.status or args.rollback:
        return releases_command(targets, "status" if args.status else "rollback", console, Path(args.run_dir),
                                refresh_report)
    check_gates(Path(args.run_dir), args.allow_failed_gates, console)
    failed = deploy_command(Path(args.run_dir), targets, console, make_sample, refresh_report, args.runtime,
                            args.artifact, args.val_samples, args.bwlimit, args.keep, packer)
    return 1 if failed else 0
