"""One artifact to many devices at once, and their releases: what `compress deploy` and the deploy stage do.

The caller hands in what only the compress side knows: how to make the bundle's val sample from
the run's data (`make_sample`) and how to rebuild the run's report with the device results
(`refresh_report`), so this package reads no dataset and renders no report itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from compress.core.errors import UsageError
from deploy.bundle import Packer, SampleMaker, classifier_packer, prune_bundles, read_run
from deploy.release import (deploy_bundle, in_parallel, note_current, probe, refuse_usage_errors, save_results,
                            summary_line)
from deploy.targets import Target, describe

ReportRefresher = Callable[[Path], None]
KEEP = 5  # releases kept on each device and bundles on the host (`--keep`, stages.deploy.keep)


class Console(Protocol):
    """Progress lines (`console(message)`) and errors (`console.error(message)`)."""

    def __call__(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


def releases_command(targets: list[Target], command: str, console: Console, run_dir: Path,
                     refresh_report: ReportRefresher) -> int:
    """`--status` or `--rollback` on every target at once; 1 when any of them failed."""
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
        if answer.get("deploying") is not None:
            holder = answer["deploying"]
            console(f"  a deploy is in progress (pid {holder.get('pid', '?')} on the device, since "
                    f"{holder.get('since', '?')})")
        if answer.get("rollback_to"):
            console(f"  --rollback goes back to {answer['rollback_to']}")
    return 1 if failed else 0


def deploy_command(run_dir: Path, targets: list[Target], console: Console, make_sample: SampleMaker | None,
                   refresh_report: ReportRefresher, runtime: str | None = None, artifact: str | None = None,
                   val_samples: int = 256, bwlimit: int | None = None, keep: int = KEEP,
                   packer: Packer | None = None) -> list[str]:
    """Deploy one artifact of the run to every target at once; returns the labels of the targets that failed.

    Bad input (an unknown runtime or artifact, a device that cannot run it) raises UsageError before
    any device is changed. The device results land in stages/deploy/<target>/results.json and the
    run's report is rebuilt with them (`refresh_report`); `make_sample` makes each bundle's val sample.
    After a switch, each device and the run's bundles/ keep their newest `keep` releases. `packer` chooses the
    artifact and makes its bundle (default: a classifier's, with a val sample made by `make_sample`).
    """
    run_dir = run_dir.resolve()
    record = read_run(run_dir)
    if val_samples < 1:
        raise UsageError(f"--val-samples {val_samples}: must be >= 1")
    packer = packer or classifier_packer(record, make_sample, val_samples)
    choices = {t.spec: packer.choose(run_dir, record, runtime, artifact, t.default_runtime) for t in targets}
    report = record["stages"].get("report", {}).get("outputs", {})
    if artifact is None and "recommended" in report and report["recommended"] is None:
        chosen = ", ".join(sorted({c.name for c in choices.values()}))
        console(f"note: the run's report recommends no artifact (none is within its accuracy budget); deploying "
                f"{chosen}, the first built for the runtime: name the one you want with --artifact")

    probes = in_parallel(targets, lambda t: probe(t, choices[t.spec].runtime, packer.text, packer.generation))
    refuse_usage_errors(probes)  # bad input: exit 2 before any device is changed
    devices = {t.spec: info for t, info, error in probes if error is None}
    for target, info, error in probes:
        if error is None:
            console(f"{target.label}: {describe(info)}")

    bundles: dict[str, Any] = {}
    out_root = run_dir / "stages" / "deploy" / "bundles"
    for choice in {choices[spec].name: choices[spec] for spec in devices}.values():
        bundles[choice.name] = packer.make(run_dir, choice, out_root)
        console(f"bundle {bundles[choice.name].version}: {choice.name} ({out_root / bundles[choice.name].version})")

    def ship(target: Target) -> dict[str, Any]:
        log = lambda message: console(f"{target.label}: {message}")  # noqa: E731
        results = deploy_bundle(target, bundles[choices[target.spec].name], devices[target.spec], log, bwlimit, keep)
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
    if len(failed) < len(probes):  # something was switched: the older bundles may go
        pruned = prune_bundles(out_root, keep, {bundle.version for bundle in bundles.values()})
        if pruned:
            console(f"removed {len(pruned)} old bundle(s) from {out_root}, keeping the newest {keep}")
    refresh_report(run_dir)
    return failed
