"""``onceflow checkpoints delete URL (--id N | --all)``: never all by default, never under a run.

Real ``python -m onceflow`` processes on a local checkpoint directory. Seeds:
``DELETE_SEED`` replays a test; every assertion message carries the seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from onceflow.operators.file_sink import read_committed_lines

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60.0

JOB = """
    import time
    from onceflow import FileSink, FileSource, Job


    def slow(word):
        time.sleep(float(DELAY))
        return word


    def build(input, output, delay="0"):
        global DELAY
        DELAY = delay
        job = Job("delete-me")
        (
            job.source(FileSource(input), name="read", uid="read")
            .map(slow, name="slow")
            .key_by(lambda w: w)
            .stateful_map(lambda s, w: ((s or 0) + 1, f"{w},{(s or 0) + 1}"), name="count", uid="count")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("DELETE_SEED", random.randrange(2**32)))
    print(f"DELETE_SEED={value}")
    return value


@pytest.fixture
def workspace(tmp_path: Path, seed: int) -> Path:
    rng = random.Random(seed)
    (tmp_path / "in").mkdir()
    words = [f"w{rng.randrange(30)}" for _ in range(3000)]
    (tmp_path / "in" / "words.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    return tmp_path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [e.get("PYTHONPATH")])])
    return e


def run_command(ws: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "onceflow", "run", str(ws / "job.py"), "-p", f"input={ws / 'in'}"]
    command += ["-p", f"output={ws / 'out'}", "--checkpoint-dir", str(ws / "chk"), "--progress", "off"]
    command += ["--batch-size", "16"]
    return command + list(extra)


def onceflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onceflow", *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def checkpoints(ws: Path) -> list[str]:
    return sorted(p.parent.name for p in (ws / "chk" / "delete-me").glob("chk-*/_metadata"))


def finished_run(ws: Path, *extra: str) -> None:
    done = subprocess.run(
        run_command(ws, *extra), cwd=REPO, env=env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("choice", [(), ("--id", "1", "--all")], ids=["neither", "both"])
def test_delete_needs_exactly_one_of_id_and_all(workspace: Path, seed: int, choice: tuple[str, ...]) -> None:
    finished_run(workspace)
    before = checkpoints(workspace)
    assert before, f"seed={seed}: the run left no checkpoint"

    done = onceflow("checkpoints", "delete", str(workspace / "chk"), *choice)

    assert done.returncode == 2, f"seed={seed}: exit {done.returncode}: {done.stdout}{done.stderr}"
    assert "--id" in done.stderr and "--all" in done.stderr, f"seed={seed}: {done.stderr}"
    assert checkpoints(workspace) == before, f"seed={seed}: checkpoints deleted without --id or --all"


def test_delete_is_refused_while_a_run_holds_the_directory(workspace: Path, seed: int) -> None:
    proc = subprocess.Popen(
        # --retain 1000: the run's own retention must not delete what the test
        # watches, so any checkpoint that vanishes was deleted by the command.
        run_command(workspace, "-p", "delay=0.001", "--checkpoint-interval", "0.2", "--retain", "1000"),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not checkpoints(workspace):
            assert proc.poll() is None, f"seed={seed}: the run ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, f"seed={seed}: no checkpoint"
            time.sleep(0.02)
        before = checkpoints(workspace)
        done = onceflow("checkpoints", "delete", str(workspace / "chk"), "--all")
        assert proc.poll() is None, f"seed={seed}: the run ended before the delete could be tried"
        assert done.returncode == 2, f"seed={seed}: exit {done.returncode}: {done.stdout}{done.stderr}"
        assert "another onceflow run" in done.stderr, f"seed={seed}: {done.stderr}"
        assert set(before) <= set(checkpoints(workspace)), f"seed={seed}: deleted under a running job"
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, f"seed={seed}: {err}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_after_checkpoints(ws: Path, seed: int, count: int, *extra: str) -> list[int]:
    """Run until ``count`` checkpoints completed, kill -9 the run, return the completed ids."""
    proc = subprocess.Popen(
        run_command(ws, "-p", "delay=0.001", "--checkpoint-interval", "0.1", "--retain", "10", *extra),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(checkpoints(ws)) < count:
            assert proc.poll() is None, f"seed={seed}: the run ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, f"seed={seed}: fewer than {count} checkpoints"
            time.sleep(0.02)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
    return sorted(int(name.split("-")[1]) for name in checkpoints(ws))


def listed_files(job_dir: Path, *, but: int | None = None) -> set[str]:
    """Every file the completed checkpoints' ``_metadata`` list (all ``but`` one), relative to the job."""
    listed: set[str] = set()
    for meta in job_dir.glob("chk-*/_metadata"):
        if meta.parent.name != f"chk-{but}":
            listed |= {h["path"] for h in json.loads(meta.read_text())["handles"]}
    return listed


def test_deleting_incremental_checkpoints_keeps_the_shared_files_others_list(
    workspace: Path, seed: int
) -> None:
    """The oldest incremental checkpoint holds the base every later one builds on: deleting it
    keeps those files; a resumed run restores and ends exactly; ``--all`` leaves no shared file."""
    job_dir = workspace / "chk" / "delete-me"
    ids = kill_after_checkpoints(workspace, seed, 4, "--incremental-checkpoints")
    shared_before = {f"shared/{p.name}" for p in (job_dir / "shared").iterdir()}
    oldest = ids[0]
    kept_for_others = listed_files(job_dir) - listed_files(job_dir, but=oldest)
    shared_of_oldest = {p for p in listed_files(job_dir) if p.startswith("shared/")} - kept_for_others
    assert shared_of_oldest & listed_files(job_dir, but=oldest), (
        f"seed={seed}: no shared file of checkpoint {oldest} is listed by a later one"
    )

    done = onceflow("checkpoints", "delete", str(workspace / "chk"), "--id", str(oldest))

    assert done.returncode == 0, f"seed={seed}: {done.stderr}"
    listed = listed_files(job_dir)
    missing = sorted(p for p in listed if not (job_dir / p).exists())
    assert not missing, f"seed={seed}: deleting {oldest} removed files others list: {missing}"
    shared_after = {f"shared/{p.name}" for p in (job_dir / "shared").iterdir()}
    assert shared_after - listed == set(), f"seed={seed}: unlisted shared files kept: {shared_after - listed}"
    assert shared_after <= shared_before, f"seed={seed}: the delete wrote shared files"

    finished_run(workspace, "-p", "delay=0.001", "--incremental-checkpoints")
    words = (workspace / "in" / "words.txt").read_text().split()
    lines = read_committed_lines(str(workspace / "out"))
    expected: dict[str, int] = {}
    for word in words:
        expected[word] = expected.get(word, 0) + 1
    finals = {}
    for line in lines:
        word, count = line.split(",")
        finals[word] = max(finals.get(word, 0), int(count))
    assert len(lines) == len(words) and finals == expected, f"seed={seed}: output differs after the resume"

    done = onceflow("checkpoints", "delete", str(workspace / "chk"), "--all")
    assert done.returncode == 0, f"seed={seed}: {done.stderr}"
    assert not list((job_dir / "shared").iterdir()), f"seed={seed}: --all left shared files"


def test_deleting_one_checkpoint_keeps_the_files_another_references(workspace: Path, seed: int) -> None:
    rng = random.Random(seed)
    ids = kill_after_checkpoints(workspace, seed, 3)
    older, newer = rng.sample(ids, 2)
    older, newer = min(older, newer), max(older, newer)
    job_dir = workspace / "chk" / "delete-me"
    # An incremental checkpoint references files of an older one: make `newer` share `older`'s count state.
    older_meta = json.loads((job_dir / f"chk-{older}" / "_metadata").read_text())
    newer_path = job_dir / f"chk-{newer}" / "_metadata"
    newer_meta = json.loads(newer_path.read_text())
    shared = [h for h in older_meta["handles"] if h["uid"] == "count"]
    newer_meta["handles"] = [h for h in newer_meta["handles"] if h["uid"] != "count"] + shared
    newer_path.write_text(json.dumps(newer_meta))
    shared_files = [job_dir / h["path"] for h in shared]

    done = onceflow("checkpoints", "delete", str(workspace / "chk"), "--id", str(older))

    assert done.returncode == 0, f"seed={seed}: {done.stderr}"
    assert f"chk-{older}" not in checkpoints(workspace), f"seed={seed}: checkpoint {older} still there"
    missing = [str(f) for f in shared_files if not f.exists()]
    assert not missing, f"seed={seed}: deleting {older} removed files {newer} references: {missing}"
    others = {f"chk-{i}" for i in ids if i != older}
    assert set(checkpoints(workspace)) == others, f"seed={seed}: other checkpoints were deleted"

    missing_id = onceflow("checkpoints", "delete", str(workspace / "chk"), "--id", "999")
    assert missing_id.returncode == 2 and "999" in missing_id.stderr, f"seed={seed}: {missing_id.stderr}"
