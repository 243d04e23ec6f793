"""Issue 11 holes: each once gave exit 0 with wrong output; now exact output or a clear refusal.

Every test here runs the real thing: ``python -m onceflow run`` in its own
process group, killed with SIGKILL once the run completed a checkpoint, then
changed (the job file, the input files, the Redis stream) and rerun on the same
checkpoint directory. The outcome of the rerun must be exact output or a
refusal that names what changed; never exit 0 with wrong output.

Seeds: ``HOLES_SEED`` replays a test; every assertion message carries the seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from onceflow import read_committed_lines

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60.0


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("HOLES_SEED", random.randrange(2**32)))
    print(f"HOLES_SEED={value}")
    return value


def completed_checkpoints(chk: Path) -> int:
    return len(list(chk.glob("*/chk-*/_metadata")))


def onceflow_run(
    job_file: Path,
    chk: Path,
    *params: str,
    kill_when: Callable[[], bool] | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``onceflow run`` to its end, or SIGKILL its process group as soon as ``kill_when()``."""
    command = [sys.executable, "-m", "onceflow", "run", str(job_file), "--checkpoint-dir", str(chk)]
    command += ["--checkpoint-interval", "0.1", "--progress", "off", "--restart-attempts", "0", *extra]
    for param in params:
        command += ["-p", param]
    env = dict(os.environ, PYTHONHASHSEED=str(random.randrange(2**32)))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        if kill_when is not None:
            while proc.poll() is None and not kill_when():
                assert time.monotonic() < deadline, f"{command} neither finished nor reached the kill point"
                time.sleep(0.005)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def running_counts(words: list[str]) -> Counter[str]:
    """The committed lines a keyed running count of ``words`` must produce: ``word,i`` for i in 1..n."""
    return Counter(f"{w},{i}" for w, n in Counter(words).items() for i in range(1, n + 1))


# --------------------------------------------------------------------------- hole 2: default uids

COUNT_JOB = """
    import time
    from onceflow import FileSink, FileSource, Job


    def slow(word):
        time.sleep(0.0005)
        return word


    def build(input, output):
        job = Job("holes-uid")
        words = job.source(FileSource(input, read_size=256), name="read", uid="read").map(slow, name="slow")
    {counting}
        counted.sink(FileSink(output), name="write", uid="write")
        return job
"""

COUNTING = {
    "stateful_map": """
        def count(state, word):
            n = (state or 0) + 1
            return n, f"{word},{n}"
        counted = words.{inserted}key_by(lambda w: w).stateful_map(count)
    """,
    "reduce": """
        counted = (
            words.{inserted}map(lambda w: (w, 1)).key_by(lambda kv: kv[0])
            .reduce(lambda a, b: (a[0], a[1] + b[1]))
            .map(lambda kv: f"{kv[0]},{kv[1]}")
        )
    """,
}

INSERTED = {
    # an unnamed operator of the same kind, inserted before the count, keeping its own state
    "stateful_map": "key_by(lambda w: w).stateful_map(lambda s, w: ((s or 0) + 1, w)).",
    "reduce": "map(lambda w: (w, 0)).key_by(lambda kv: kv[0]).reduce(lambda a, b: b).map(lambda kv: kv[0]).",
}


def count_job(kind: str, *, inserted: bool) -> str:
    counting = textwrap.dedent(COUNTING[kind]).replace("{inserted}", INSERTED[kind] if inserted else "")
    return textwrap.dedent(COUNT_JOB).replace("{counting}", textwrap.indent(counting, "    ").strip("\n"))


@pytest.mark.parametrize("kind", ["stateful_map", "reduce"])
def test_an_unnamed_operator_inserted_before_a_keyed_count_never_takes_its_state(
    tmp_path: Path, seed: int, kind: str
) -> None:
    rng = random.Random(seed)
    words = [f"w{rng.randrange(40)}" for _ in range(6000)]
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "words.txt").write_text("\n".join(words) + "\n")
    job_file, chk, out = tmp_path / "job.py", tmp_path / "chk", tmp_path / "out"
    job_file.write_text(count_job(kind, inserted=False))
    params = (f"input={inp}", f"output={out}")

    first = onceflow_run(job_file, chk, *params, kill_when=lambda: completed_checkpoints(chk) >= 2)
    assert first.returncode == -signal.SIGKILL, f"seed={seed}: the first run was not killed: {first.stderr}"
    job_file.write_text(count_job(kind, inserted=True))
    rerun = onceflow_run(job_file, chk, *params)

    committed = Counter(read_committed_lines(str(out)))
    if rerun.returncode == 0:
        assert committed == running_counts(words), f"seed={seed}: exit 0 with wrong counts\n{rerun.stderr}"
    else:
        assert rerun.returncode == 2, f"seed={seed}: {rerun.stderr}"
        assert "uid" in rerun.stderr, f"seed={seed}: the refusal does not say what to do: {rerun.stderr}"
        assert "Traceback" not in rerun.stderr


def explicit_count_uid(job_source: str, kind: str) -> str:
    call = ".stateful_map(count)" if kind == "stateful_map" else ".reduce(lambda a, b: (a[0], a[1] + b[1]))"
    assert call in job_source
    return job_source.replace(call, call[:-1] + ', uid="count")', 1)


def killed_after_checkpoints(
    tmp_path: Path, seed: int, job_source: str
) -> tuple[Path, Path, tuple[str, ...]]:
    """Write input and ``job_source``, run it and SIGKILL it after two completed checkpoints."""
    rng = random.Random(seed)
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "words.txt").write_text("\n".join(f"w{rng.randrange(40)}" for _ in range(6000)) + "\n")
    job_file, chk = tmp_path / "job.py", tmp_path / "chk"
    job_file.write_text(job_source)
    params = (f"input={inp}", f"output={tmp_path / 'out'}")
    first = onceflow_run(job_file, chk, *params, kill_when=lambda: completed_checkpoints(chk) >= 2)
    assert first.returncode == -signal.SIGKILL, f"seed={seed}: the first run was not killed: {first.stderr}"
    return job_file, chk, params


def test_restored_state_of_another_operator_kind_under_the_same_uid_is_refused(
    tmp_path: Path, seed: int
) -> None:
    job_file, chk, params = killed_after_checkpoints(
        tmp_path, seed, explicit_count_uid(count_job("reduce", inserted=False), "reduce")
    )
    job_file.write_text(explicit_count_uid(count_job("stateful_map", inserted=False), "stateful_map"))

    rerun = onceflow_run(job_file, chk, *params)

    assert rerun.returncode == 2, f"seed={seed}: {rerun.stderr}"
    assert "'count'" in rerun.stderr and "reduce" in rerun.stderr and "stateful_map" in rerun.stderr


def test_unmatched_state_names_the_operators_without_uid_and_can_be_dropped_on_purpose(
    tmp_path: Path, seed: int
) -> None:
    job_file, chk, params = killed_after_checkpoints(tmp_path, seed, count_job("reduce", inserted=False))
    job_file.write_text(count_job("reduce", inserted=True))

    refused = onceflow_run(job_file, chk, *params)
    dropped = onceflow_run(job_file, chk, *params, extra=("--allow-unmatched-state",))

    assert refused.returncode == 2, f"seed={seed}: {refused.stderr}"
    error = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert error and "'reduce-" in error[0] and "uid=" in error[0], f"seed={seed}: {refused.stderr}"
    assert dropped.returncode == 0, f"seed={seed}: {dropped.stderr}"
    assert "reduce-" in dropped.stderr, f"seed={seed}: dropping state must be said: {dropped.stderr}"


# --------------------------------------------------------------------------- hole 3: input identity

LINES_JOB = """
    import time
    from onceflow import FileSink, FileSource, Job


    def slow(line):
        time.sleep(0.0005)
        return line


    def build(input, output):
        job = Job("holes-files")
        (
            job.source(FileSource(input, read_size=512), name="read", uid="read")
            .map(slow, name="slow")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""


@pytest.mark.parametrize("change", ["renamed", "rewritten"])
def test_input_files_renamed_or_rewritten_after_a_kill_are_refused_not_read_again(
    tmp_path: Path, seed: int, change: str
) -> None:
    rng = random.Random(seed)
    inp, out, chk = tmp_path / "in", tmp_path / "out", tmp_path / "chk"
    inp.mkdir()
    expected: list[str] = []
    for f in range(4):
        content = [f"f{f}-{i}-{rng.randrange(10**6)}" for i in range(1500)]
        (inp / f"part-{f}.txt").write_text("\n".join(content) + "\n")
        expected += content
    job_file = tmp_path / "job.py"
    job_file.write_text(textwrap.dedent(LINES_JOB))
    params = (f"input={inp}", f"output={out}")

    first = onceflow_run(job_file, chk, *params, kill_when=lambda: completed_checkpoints(chk) >= 2)
    assert first.returncode == -signal.SIGKILL, f"seed={seed}: the first run was not killed: {first.stderr}"
    if change == "renamed":
        for path in sorted(inp.iterdir()):
            path.rename(path.with_name("renamed-" + path.name))
        touched = str(inp / "part-0.txt")
    else:
        new = [f"new-{i}-{rng.randrange(10**6)}" for i in range(2000)]
        (inp / "part-0.txt").write_text("\n".join(new) + "\n")
        expected = new + expected[1500:]
        touched = str(inp / "part-0.txt")
    rerun = onceflow_run(job_file, chk, *params)

    committed = read_committed_lines(str(out))
    if rerun.returncode == 0:
        wrong = f"seed={seed}: exit 0 with wrong output\n{rerun.stderr}"
        assert Counter(committed) == Counter(expected), wrong
    else:
        assert touched in rerun.stderr and "--fresh" in rerun.stderr, f"seed={seed}: {rerun.stderr}"
        assert "Traceback" not in rerun.stderr
        assert len(committed) == len(set(committed)), f"seed={seed}: duplicates before the refusal"


# --------------------------------------------------------------------------- hole 5: vanished Redis stream

REDIS_URL = os.environ.get("ONCEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

STREAM_JOB = """
    import time
    from onceflow import FileSink, Job, RedisStreamSource


    def slow(entry):
        time.sleep(0.0005)
        return entry


    def build(url, stream, output):
        job = Job("holes-redis")
        (
            job.source(RedisStreamSource(url, stream, batch_size=100), name="read", uid="read")
            .map(slow, name="slow")
            .map(lambda entry: entry[1], name="id")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""


@pytest.fixture
def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    created: list[str] = []
    client.created = created  # type: ignore[attr-defined]
    yield client
    if created:
        client.delete(*created)
    client.close()


@pytest.mark.parametrize("fault", ["deleted", "restarted_empty", "trimmed", "deleted_while_running"])
def test_a_bounded_redis_stream_that_vanished_is_an_error_naming_it_and_the_last_id(
    tmp_path: Path, seed: int, redis_client, fault: str
) -> None:
    stream = f"holes-{seed}-{fault}"
    redis_client.created.append(stream)
    pipe = redis_client.pipeline()
    for i in range(20000):
        pipe.xadd(stream, {"i": str(i)})
    ids = list(pipe.execute())
    job_file, chk, out = tmp_path / "job.py", tmp_path / "chk", tmp_path / "out"
    job_file.write_text(textwrap.dedent(STREAM_JOB))
    params = (f"url={REDIS_URL}", f"stream={stream}", f"output={out}")

    def change_stream() -> None:
        if fault in ("deleted", "deleted_while_running"):
            redis_client.delete(stream)
        elif fault == "restarted_empty":  # Redis lost the stream; producers write new entries
            redis_client.delete(stream)
            for i in range(100):
                redis_client.xadd(stream, {"i": f"new-{i}"})
        else:
            redis_client.xtrim(stream, maxlen=5000, approximate=False)

    if fault == "deleted_while_running":
        deleted: list[bool] = []

        def delete_after_two_checkpoints() -> bool:
            if not deleted and completed_checkpoints(chk) >= 2:
                change_stream()
                deleted.append(True)
            return False  # never kill: the run goes on without its stream

        run = onceflow_run(job_file, chk, *params, kill_when=delete_after_two_checkpoints)
        assert deleted, f"seed={seed}: the run ended before two checkpoints: {run.stderr}"
    else:
        first = onceflow_run(job_file, chk, *params, kill_when=lambda: completed_checkpoints(chk) >= 2)
        assert first.returncode == -signal.SIGKILL, f"seed={seed}: not killed: {first.stderr}"
        change_stream()
        run = onceflow_run(job_file, chk, *params)

    committed = read_committed_lines(str(out))
    assert len(committed) == len(set(committed)), f"seed={seed}: duplicates"
    if run.returncode == 0:
        assert committed == ids, (
            f"seed={seed}: exit 0 with {len(committed)} of {len(ids)} entries\n{run.stderr}"
        )
    else:
        error = [line for line in run.stderr.splitlines() if "error:" in line]
        assert error, f"seed={seed}: {run.stderr}"
        assert repr(stream) in error[0] and "entry id '" in error[0], f"seed={seed}: {error[0]}"
        assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------- state changed in place

IN_PLACE_JOB = """
    import time
    from onceflow import FileSink, FileSource, Job


    def slow(word):
        time.sleep(0.0002)
        return word


    def remember(seen, word):
        seen = seen if seen is not None else []
        seen.append(word)  # the state object is changed in place, not replaced
        return seen, f"{word},{len(seen)}"


    def build(input, output):
        job = Job("holes-in-place")
        (
            job.source(FileSource(input, read_size=256), name="read", uid="read")
            .map(slow, name="slow")
            .key_by(lambda w: w)
            .stateful_map(remember, name="remember", uid="remember")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_state_changed_in_place_after_a_barrier_is_not_applied_twice_after_a_kill(
    tmp_path: Path, seed: int, incremental: bool
) -> None:
    """A list kept as state and appended to in place: the checkpoint holds it as it was at the barrier."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(20)}" for _ in range(8000)]
    inp, out, chk = tmp_path / "in", tmp_path / "out", tmp_path / "chk"
    inp.mkdir()
    (inp / "words.txt").write_text("\n".join(words) + "\n")
    job_file = tmp_path / "job.py"
    job_file.write_text(textwrap.dedent(IN_PLACE_JOB))
    params = (f"input={inp}", f"output={out}")
    extra = ("--incremental-checkpoints",) if incremental else ()

    for kills in range(1, 4):
        run = onceflow_run(
            job_file, chk, *params, kill_when=lambda n=kills: completed_checkpoints(chk) >= 2 * n, extra=extra
        )
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, f"seed={seed}: {run.stderr}"
    rerun = onceflow_run(job_file, chk, *params, extra=extra)

    assert rerun.returncode == 0, f"seed={seed}: {rerun.stderr}"
    assert Counter(read_committed_lines(str(out))) == running_counts(words), f"seed={seed}"
