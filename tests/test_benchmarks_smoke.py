"""Every benchmarks/*.py runs in its --smoke mode, so an interface change cannot silently break the numbers
benchmarks/README.md quotes.

A script's smoke mode runs the code paths of its real run at the smallest sizes. Nothing else runs these
scripts, so this is where a broken one shows: each runs in a subprocess (a script added later is covered by
the glob, and one without --smoke fails here), must exit 0, print its markdown table, and write nothing into
the repository (temp folders only; benchmarks/README.md is written by hand from real runs). They run two at
a time, as most train on one thread; what they cost together is measured in benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
WORKERS = 2
TIMEOUT_S = 900  # a hung script fails its test instead of holding CI
# A markdown table: a header row, then its |---|---:| separator.
TABLE = re.compile(r"^\|.*\|[ \t]*\n\|(?:[ \t]*:?-{3,}:?[ \t]*\|)+[ \t]*$", re.MULTILINE)


def repository_state() -> str:
    """benchmarks/README.md's hash and git's view of the tree (new files, changes, files in ignored folders)."""
    state = hashlib.sha256((ROOT / "benchmarks" / "README.md").read_bytes()).hexdigest()
    if shutil.which("git") and (ROOT / ".git").exists():
        state += subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout
    return state


def run_smoke(script: Path, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}  # temp folders land under tmp
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as error:
        code, out, err = None, error.stdout or "", f"timed out after {TIMEOUT_S} s"
    return {"code": code, "stdout": out if isinstance(out, str) else out.decode(errors="replace"),
            "stderr": err if isinstance(err, str) else err.decode(errors="replace"),
            "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """{script name: future result}: every selected script's smoke run, started together, WORKERS at a time."""
    selected = [item.callspec.params["script"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    before = repository_state()
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures = {script.name: pool.submit(run_smoke, script, tmp_path_factory.mktemp(script.stem))
               for script in selected}
    yield before, futures
    pool.shutdown(wait=True)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_benchmark_runs_in_smoke_mode_and_prints_its_table(script, smoke_runs):
    before, futures = smoke_runs
    result = futures[script.name].result()
    print(f"{script.name} --smoke: {result['seconds']:.0f} s")  # shown with -s: how the two-minute budget is spent
    tail = f"\n--- stdout (end)\n{result['stdout'][-3000:]}\n--- stderr (end)\n{result['stderr'][-3000:]}"
    assert result["code"] == 0, f"{script.name} --smoke exited {result['code']} in {result['seconds']:.0f} s{tail}"
    assert TABLE.search(result["stdout"]), f"{script.name} --smoke printed no markdown table{tail}"
    assert repository_state() == before, f"{script.name} --smoke (or a script beside it) wrote into the repository"
