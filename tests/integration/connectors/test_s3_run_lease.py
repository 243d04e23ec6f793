"""One runner per s3:// checkpoint directory: the lease refuses a second runner and fences a stale one.

Real ``python -m onceflow run`` processes against a moto S3 server on
127.0.0.1: input, checkpoints and output all on ``s3://``. A short lease
(``ONCEFLOW_LEASE_SECONDS``) keeps the takeover test quick. Seeds:
``LEASE_SEED`` replays a test; every assertion message carries the seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import fsspec
import pytest

from onceflow import read_committed_lines
from tests.support.chaos import JOBS

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
JOB_FILE = JOBS / "s3_counts.py"
RUN_TIMEOUT = 60.0
LEASE_SECONDS = 2.0


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("LEASE_SEED", random.randrange(2**32)))
    print(f"LEASE_SEED={value}")
    return value


def write_input(url: str, rng: random.Random, files: int, lines: int) -> Counter[str]:
    fs = fsspec.filesystem("s3")
    counts: Counter[str] = Counter()
    for f in range(files):
        keys = [f"k{rng.randrange(50)}" for _ in range(lines)]
        counts.update(keys)
        fs.pipe_file(f"{url}/part-{f}.txt", "".join(f"{k},{i}\n" for i, k in enumerate(keys)).encode())
    return counts


def expected_lines(counts: Counter[str]) -> Counter[str]:
    return Counter(f"{k},{i}" for k, c in counts.items() for i in range(1, c + 1))


def start(bucket: str, chk: str, *, delay_us: int, log: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "onceflow", "run", str(JOB_FILE)]
    command += ["-p", f"input={bucket}/in", "-p", f"output={bucket}/out", "-p", f"delay_us={delay_us}"]
    command += ["--checkpoint-dir", chk, "--checkpoint-interval", "0.3", "--progress", "off"]
    command += ["--restart-attempts", "0"]
    env = dict(os.environ, ONCEFLOW_LEASE_SECONDS=str(LEASE_SECONDS))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], log: Path) -> tuple[int, str]:
    try:
        proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, log.read_text()


def metadata_objects(chk: str) -> dict[str, bytes]:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(chk) if p.endswith("/_metadata")}


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_runner_on_an_s3_checkpoint_directory_is_refused(s3_bucket, seed, tmp_path) -> None:
    rng = random.Random(seed)
    counts = write_input(f"{s3_bucket}/in", rng, files=3, lines=1500)
    chk = f"{s3_bucket}/chk"
    first = start(s3_bucket, chk, delay_us=1000, log=tmp_path / "first.log")
    try:
        wait_for(lambda: metadata_objects(chk), "the first runner's first checkpoint")
        second = start(s3_bucket, chk, delay_us=1000, log=tmp_path / "second.log")
        code, err = finish(second, tmp_path / "second.log")
        assert code == 2, f"seed={seed}: the second runner was not refused (exit {code}):\n{err}"
        assert "another onceflow run" in err and str(first.pid) in err, f"seed={seed}: {err}"
        assert "retry after" in err and "Traceback" not in err, f"seed={seed}: {err}"
        assert first.poll() is None, f"seed={seed}: the first run ended while the second was refused"
    finally:
        code, err = finish(first, tmp_path / "first.log")
    assert code == 0, f"seed={seed}: the first runner failed:\n{err}"
    got = Counter(read_committed_lines(f"{s3_bucket}/out"))
    assert got == expected_lines(counts), f"seed={seed}: output not exact: {len(got)} lines\n{err}"


@pytest.mark.slow
def test_a_stale_runner_whose_lease_was_taken_over_cannot_complete_a_checkpoint(
    s3_bucket, seed, tmp_path
) -> None:
    rng = random.Random(seed)
    counts = write_input(f"{s3_bucket}/in", rng, files=3, lines=1500)
    chk = f"{s3_bucket}/chk"
    stale = start(s3_bucket, chk, delay_us=1000, log=tmp_path / "stale.log")
    try:
        wait_for(lambda: metadata_objects(chk), "the first runner's first checkpoint")
        time.sleep(rng.uniform(0.0, 0.5))
        # A paused process (GC pause, SIGSTOP, a VM freeze) stops renewing its lease.
        os.killpg(stale.pid, signal.SIGSTOP)
        time.sleep(LEASE_SECONDS + 1.0)
        taker = start(s3_bucket, chk, delay_us=1000, log=tmp_path / "taker.log")
        code, err = finish(taker, tmp_path / "taker.log")
        assert code == 0, f"seed={seed}: the runner taking over an expired lease failed:\n{err}"
        after_takeover = metadata_objects(chk)
        output = Counter(read_committed_lines(f"{s3_bucket}/out"))
        assert output == expected_lines(counts), f"seed={seed}: output after the takeover not exact"
    finally:
        os.killpg(stale.pid, signal.SIGCONT)
    code, err = finish(stale, tmp_path / "stale.log")
    assert code != 0, f"seed={seed}: the stale runner exited 0 after losing its lease:\n{err}"
    assert "lease" in err and "Traceback" not in err, f"seed={seed}: the stale runner's error: {err}"
    assert metadata_objects(chk) == after_takeover, f"seed={seed}: the stale runner wrote _metadata"
    got = Counter(read_committed_lines(f"{s3_bucket}/out"))
    assert got == expected_lines(counts), f"seed={seed}: output changed by the stale runner\n{err}"
