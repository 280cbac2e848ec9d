#!/usr/bin/env python3
"""The releases under a device folder: checksums, the deploy lock, the switch of `current`, history, pruning.

Piped alone to `python3 -` for the steps that work on the device folder (verify, prepare, activate,
discard, rollback, status), as runner.py is for the others, and carried in every bundle. So it
imports nothing, runner.py neither: activate checks every file again in its own step, and that
needs the checksums here. Every command prints one JSON document on the last line of stdout
(`{"error": ...}` and exit 1 on failure).

  python3 releases.py verify   RELEASE_DIR [--manifest-sha256 S]   (every file against manifest.json)
  python3 releases.py status   ROOT        (releases, current, an upload in progress, the rollback target)
  python3 releases.py rollback ROOT        (back to what was current before, by releases/.history)
  python3 releases.py prepare  ROOT TOKEN  (take ROOT's deploy lock and hold it while the deploy runs)
  python3 releases.py activate ROOT INCOMING VERSION [--token T] [--manifest-sha256 S] [--keep N]
  python3 releases.py discard  ROOT INCOMING [--token T]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"
RELEASES = "releases"
CURRENT = "current"
INCOMING_PREFIX = ".incoming-"
HISTORY = ".history"  # releases/.history: one JSON line per switch of `current`
HISTORY_LINES = 1000
LOCK = ".deploy.lock"
HEARTBEAT_SECONDS = 1.0
LOCK_WAIT_SECONDS = 5.0  # longer than a holder takes to see its host gone (one heartbeat)
# Files a release gains on the device after verification (never uploaded, never in the manifest):
# what the TensorRT engine build writes.
DEVICE_FILES = ("model.engine", "build.log", "device.json", "timing.cache")
HELD_LOCKS: list = []  # the lock files this process holds open: closing one drops its lock


class ReleaseError(ValueError):
    """A release or device folder that is not as it should be (a ValueError, which runner.py reports too)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(release: Path) -> dict:
    path = release / MANIFEST
    if not path.is_file():
        raise ReleaseError(f"{path}: no manifest")
    return json.loads(path.read_text())


def verify(release: Path, manifest_sha256: str | None = None) -> dict:
    """Every manifest file present with its sha256; nothing unexpected beside them."""
    manifest = read_manifest(release)
    if manifest_sha256 and sha256_file(release / MANIFEST) != manifest_sha256:
        raise ReleaseError(f"checksum mismatch: {MANIFEST}")
    expected = manifest["files"]
    for name, digest in sorted(expected.items()):
        path = release / name
        if not path.is_file():
            raise ReleaseError(f"checksum: {name} is missing")
        actual = sha256_file(path)
        if actual != digest:
            raise ReleaseError(f"checksum mismatch: {name} (sha256 {actual[:12]}, manifest {digest[:12]})")
    present = {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()}
    extra = sorted(present - set(expected) - {MANIFEST} - set(DEVICE_FILES))
    engine = manifest.get("engine") or {}
    if engine.get("builder") == "tensorrt_llm":  # the folder TensorRT-LLM saves its engine to, on the device
        extra = [name for name in extra if not name.startswith(engine["folder"].rstrip("/") + "/")]
    if extra:
        raise ReleaseError(f"checksum: unexpected file {extra[0]}")
    return {"verified": len(expected)}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def releases_of(root: Path) -> list[str]:
    folder = root / RELEASES
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def current_of(root: Path) -> str | None:
    link = root / CURRENT
    return Path(os.readlink(link)).name if link.is_symlink() else None


def switch(root: Path, version: str) -> None:
    """Point `current` at releases/<version> with one rename: readers see the old or the new, never neither."""
    if not (root / RELEASES / version / MANIFEST).is_file():
        raise ReleaseError(f"release {version} not found under {root / RELEASES}")
    tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.join(RELEASES, version), tmp)
    os.replace(tmp, root / CURRENT)


# ---------------------------------------------------------------- the deploy lock
#
# One deploy of a device folder at a time, across its steps, though each step is its own process:
# `prepare` takes flock(ROOT/.deploy.lock), writes its deploy's token and its pid there, answers, and
# stays alive holding the lock, writing a heartbeat to the host. It exits when the host ends it (after
# activate or discard) or when a heartbeat finds the host gone (killed, connection lost), and the
# kernel drops the lock with it. So "a deploy is running" is exactly "the flock is held", never an
# mtime (rsync -a copies those from the host): every .incoming-* that prepare finds belongs to a
# deploy that no longer runs, and activate and discard act only for the deploy whose token the
# holder wrote. rollback, and activate or discard run by hand (no token), hold it for their step.
# A host that vanishes without closing its connection (power cut) holds the lock until the device's
# TCP gives up on that connection, which the heartbeat ensures it does (minutes, not forever).


def lock_holder(root: Path) -> dict | None:
    """What the deploy holding ROOT's lock wrote into it (token, pid, since), or None when none holds it."""
    try:
        with open(root / LOCK) as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        try:
            return json_object((root / LOCK).read_text())
        except OSError:
            return {}
    except OSError:
        return None


def take_lock(root: Path, token: str):
    """ROOT's lock file, open and flocked for `token`; a holder on its way out has LOCK_WAIT_SECONDS to go."""
    fh = open(root / LOCK, "a+")
    deadline = time.time() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.time() > deadline:
                fh.close()
                holder = lock_holder(root) or {}
                raise ReleaseError(f"{root}: another deploy is in progress (pid {holder.get('pid', '?')} on the "
                                   f"device, since {holder.get('since', '?')}); try again when it ends") from None
            time.sleep(0.1)
    fh.truncate(0)
    fh.write(json.dumps({"token": token, "pid": os.getpid(), "since": utc_now()}))
    fh.flush()
    return fh


def hold_for(root: Path, token: str | None) -> None:
    """Go on only inside the deploy `token` whose prepare holds ROOT's lock; with no token, take it for this step."""
    if token is None:
        HELD_LOCKS.append(take_lock(root, f"step-{os.getpid()}"))
    elif (lock_holder(root) or {}).get("token") != token:
        raise ReleaseError(f"{root / LOCK}: this deploy no longer holds the lock (its connection dropped?)")


def prepare(root: Path, token: str) -> dict:
    """Create the layout, take the deploy lock and drop the uploads of deploys that no longer run."""
    (root / RELEASES).mkdir(parents=True, exist_ok=True)
    HELD_LOCKS.append(take_lock(root, token))
    removed = sorted(p.name for p in (root / RELEASES).glob(INCOMING_PREFIX + "*"))
    for name in removed:
        shutil.rmtree(root / RELEASES / name, ignore_errors=True)
    return {"root": str(root), "removed_stale": removed, "locked": token}


def hold_lock() -> None:
    """The rest of `prepare`'s life: a heartbeat to the host until the host is gone or ends it."""
    try:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            sys.stdout.write("\n")
            sys.stdout.flush()
    except OSError:
        os._exit(0)


# ---------------------------------------------------------------- history, rollback, pruning


def read_history(root: Path) -> list[dict]:
    """releases/.history, oldest first: {"at", "action": activate | rollback, "version", "previous"}."""
    try:
        lines = (root / RELEASES / HISTORY).read_text().splitlines()
    except OSError:
        return []
    return [entry for entry in map(json_object, lines) if entry.get("version")]


def record_switch(root: Path, action: str, version: str, previous: str | None) -> None:
    """Add a line to the history, rewritten whole through a rename so that no reader sees half of it."""
    entries = read_history(root)[-HISTORY_LINES:]
    entries.append({"at": utc_now(), "action": action, "version": version, "previous": previous})
    path = root / RELEASES / HISTORY
    tmp = path.with_name(f"{HISTORY}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    os.replace(tmp, path)


def rollback_target(root: Path, current: str | None) -> str | None:
    """What was current before `current` was activated (skipping releases since pruned), by the history.

    A release activated before there was a history goes back by name order, as it always did.
    """
    before = {e["version"]: e.get("previous") for e in read_history(root) if e.get("action") == "activate"}
    present = releases_of(root)
    if current not in before:
        older = [v for v in present if current is None or v < current]
        return older[-1] if older else None
    seen, version = {current}, before[current]
    while version is not None and version not in present and version not in seen:
        seen.add(version)
        version = before.get(version)
    return version if version in present else None


def prune(root: Path, keep: int) -> list[str]:
    """Remove all but the `keep` newest releases, never the current one nor the one a rollback goes to."""
    current, names = current_of(root), releases_of(root)
    kept = set(names[-keep:]) | {current, rollback_target(root, current)}
    pruned = [name for name in names if name not in kept]
    for name in pruned:
        shutil.rmtree(root / RELEASES / name, ignore_errors=True)
    return pruned


# ---------------------------------------------------------------- the steps


def activate(root: Path, incoming: str, version: str, token: str | None = None,
             manifest_sha256: str | None = None, keep: int | None = None) -> dict:
    """Check every file again, rename the upload to its version and switch `current`, all in this one step.

    So a file changed after the verify step is refused here, and a release whose switch failed is
    removed again: none is left behind that was never current.
    """
    source, target = root / RELEASES / incoming, root / RELEASES / version
    hold_for(root, token)
    if not incoming.startswith(INCOMING_PREFIX) or not source.is_dir():
        raise ReleaseError(f"{source}: no such upload")
    if target.exists():
        raise ReleaseError(f"release {version} already exists")
    verify(source, manifest_sha256)
    previous = current_of(root)
    os.rename(source, target)
    try:
        switch(root, version)
    except BaseException:
        if current_of(root) != version:
            shutil.rmtree(target, ignore_errors=True)
        raise
    answer = {"current": version, "previous": previous, "pruned": []}
    try:
        record_switch(root, "activate", version, previous)
        answer["pruned"] = prune(root, keep) if keep else []
    except OSError as error:  # `current` is switched already: say so rather than fail
        answer["warning"] = f"switched, but the history or pruning failed: {error}"
    return answer


def discard(root: Path, incoming: str, token: str | None = None) -> dict:
    path = root / RELEASES / incoming
    hold_for(root, token)
    if incoming.startswith(INCOMING_PREFIX) and path.is_dir():
        shutil.rmtree(path)
    return {"discarded": incoming}


def rollback(root: Path) -> dict:
    if not (root / RELEASES).is_dir():
        raise ReleaseError(f"no releases under {root / RELEASES}")
    hold_for(root, None)
    current = current_of(root)
    target = rollback_target(root, current)
    if target is None:
        raise ReleaseError(f"no release before {current or 'none'} in {root / RELEASES / HISTORY}")
    switch(root, target)
    record_switch(root, "rollback", target, current)
    return {"current": target, "previous": current}


def status(root: Path) -> dict:
    current = current_of(root)
    rows = []
    for version in releases_of(root):
        try:
            manifest = read_manifest(root / RELEASES / version)
        except ValueError:
            manifest = {}
        rows.append({"version": version, "current": version == current, "artifact": manifest.get("artifact"),
                     "runtime": manifest.get("runtime"), "created": manifest.get("created")})
    folder = root / RELEASES
    incoming = sorted(p.name for p in folder.glob(INCOMING_PREFIX + "*")) if folder.is_dir() else []
    return {"root": str(root), "current": current, "releases": rows, "incomplete_uploads": incoming,
            "deploying": lock_holder(root), "rollback_to": rollback_target(root, current)}


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="releases.py", description="the releases under a device folder")
    sub = parser.add_subparsers(dest="command", required=True)
    verify_parser = sub.add_parser("verify")
    verify_parser.add_argument("release")
    for name in ("status", "rollback"):
        sub.add_parser(name).add_argument("root")
    prepare_parser = sub.add_parser("prepare")
    activate_parser = sub.add_parser("activate")
    discard_parser = sub.add_parser("discard")
    for p, names in ((prepare_parser, ("root", "token")), (activate_parser, ("root", "incoming", "version")),
                     (discard_parser, ("root", "incoming"))):
        for name in names:
            p.add_argument(name)
    for p in (activate_parser, discard_parser):
        p.add_argument("--token", help="the deploy whose prepare holds the lock (default: take it for this step)")
    for p in (verify_parser, activate_parser):
        p.add_argument("--manifest-sha256", help="the sha256 manifest.json must have")
    activate_parser.add_argument("--keep", type=int, help="then remove all but the N newest releases")
    return parser.parse_args(argv)


def dispatch(args: argparse.Namespace) -> dict:
    if args.command == "verify":
        return verify(Path(args.release).expanduser().resolve(), args.manifest_sha256)
    root = Path(args.root).expanduser()
    if args.command == "prepare":
        return prepare(root, args.token)
    if args.command == "activate":
        return activate(root, args.incoming, args.version, args.token, args.manifest_sha256, args.keep)
    if args.command == "discard":
        return discard(root, args.incoming, args.token)
    return rollback(root) if args.command == "rollback" else status(root)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = dispatch(args)
    except (OSError, ValueError, KeyError) as error:
        print(json.dumps({"error": str(error) or type(error).__name__}))
        return 1
    print(json.dumps(result, default=str), flush=True)
    if args.command == "prepare":
        hold_lock()
    return 0


if __name__ == "__main__":
    sys.exit(main())
