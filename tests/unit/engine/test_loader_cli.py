"""The ``onceflow`` command and the job-file loader: exit codes, one-line errors, no damage."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from onceflow import Job, JobLoadError, read_committed_lines
from onceflow.engine.cli import main
from onceflow.engine.loader import load_job, load_job_file, parse_params
from onceflow.operators.files import MARKER_NAME

TreeSnapshot = Callable[..., dict[str, tuple[int, bytes]]]

COUNT_JOB = """
    from onceflow import Job
    from onceflow import FileSink, FileSource


    def build(input, output, name="cli-count"):
        job = Job(name)
        (
            job.source(FileSource(input), name="read", uid="read")
            .flat_map(str.split, name="split")
            .map(lambda w: (w, 1), name="pair")
            .key_by(lambda kv: kv[0])
            .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
            .map(lambda kv: f"{kv[0]},{kv[1]}", name="format")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""

LIST_KEY_JOB = """
    from onceflow import Job
    from onceflow import FileSink, FileSource


    def build(input, output):
        job = Job("list-keys")
        (
            job.source(FileSource(input), name="read")
            .key_by(lambda line: line.split())
            .reduce(lambda a, b: a, name="first")
            .sink(FileSink(output), name="write")
        )
        return job
"""

EXPECTED = ["a,1", "b,1", "a,2", "c,1", "a,3"]


class Workspace:
    """An input folder, an output folder, a checkpoint folder, a job file and an executor."""

    def __init__(self, root: Path, job_file: Path, executor: str = "local") -> None:
        self.root = root
        self.job_file = job_file
        self.executor = executor
        self.input = root / "in"
        self.out = root / "out"
        self.chk = root / "chk"

    def run_args(self, *extra: str, job_file: Path | None = None) -> list[str]:
        return [
            "run",
            str(job_file or self.job_file),
            "-p",
            f"input={self.input}",
            "-p",
            f"output={self.out}",
            "--checkpoint-dir",
            str(self.chk),
            "--progress",
            "off",
            "--executor",
            self.executor,
            *extra,
        ]


@pytest.fixture
def ws(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    input_factory: Callable[..., Path],
    job_file_factory: Callable[[str, str], Path],
) -> Workspace:
    """A workspace whose runs use the test's ``executor`` if it takes one (else ``local``)."""
    input_factory({"words.txt": "a b\na c a\n"})
    executor = request.getfixturevalue("executor") if "executor" in request.fixturenames else "local"
    return Workspace(tmp_path, job_file_factory(COUNT_JOB, "count_job.py"), executor)


@pytest.fixture
def finished(ws: Workspace, executor: str, capsys: pytest.CaptureFixture[str]) -> Workspace:
    """The workspace after one successful run under ``executor``: output and a final checkpoint."""
    assert main(ws.run_args()) == 0
    capsys.readouterr()
    assert read_committed_lines(str(ws.out)) == EXPECTED
    return ws


def one_error_line(err: str) -> str:
    """Return the single ``onceflow: error:`` line of stderr; fail if there are more, or a traceback."""
    errors = [line for line in err.splitlines() if line.startswith("onceflow: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def unchanged_tree(snapshot: TreeSnapshot, root: Path) -> dict[str, tuple[int, bytes]]:
    return snapshot(root, skip=frozenset({"_lock"}))


# --------------------------------------------------------------------------- success


def test_run_prints_where_the_output_is(
    ws: Workspace, executor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(ws.run_args())

    out = capsys.readouterr().out
    assert code == 0
    assert f"onceflow: output in {ws.out}" in out.splitlines()
    assert "job 'cli-count' finished" in out
    assert "output committed at checkpoint 1" in out
    assert read_committed_lines(str(ws.out)) == EXPECTED


def test_rerun_says_already_finished_and_changes_nothing(
    finished: Workspace, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args())

    assert code == 0
    assert "already finished at checkpoint 1" in capsys.readouterr().out
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_fresh_run_replaces_the_output_with_the_same_lines(
    finished: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(finished.run_args("--fresh"))

    assert code == 0
    assert "finished" in capsys.readouterr().out
    assert read_committed_lines(str(finished.out)) == EXPECTED


def test_graph_prints_the_logical_graph_and_the_chains(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["graph", str(ws.job_file), "-p", f"input={ws.input}", "-p", f"output={ws.out}"])

    out = capsys.readouterr().out
    assert code == 0
    tasks = [line.strip() for line in out.splitlines() if line.strip().startswith("task ")]
    assert tasks == [
        "task 0 [x1]: read -> split -> pair",
        "task 1 [x1]: count -> format -> write",
    ]
    assert "<- task 0 (hash)" in out
    assert "job 'cli-count' (fingerprint " in out
    assert not ws.out.exists() and not ws.chk.exists()


def test_checkpoints_list_and_inspect_after_a_run(
    finished: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["checkpoints", "list", str(finished.chk)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1
    assert listed[0].startswith("cli-count  chk-1")
    assert "complete" in listed[0] and listed[0].endswith("final")

    assert main(["checkpoints", "inspect", str(finished.chk), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["job"] == "cli-count"
    assert meta["checkpoint_id"] == 1
    assert meta["final"] is True
    assert {h["uid"] for h in meta["handles"]} == {"read", "count", "write"}


def test_checkpoints_inspect_of_a_missing_id_is_a_usage_error(
    finished: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["checkpoints", "inspect", str(finished.chk), "--id", "9"])

    assert code == 2
    assert "no completed checkpoint 9" in one_error_line(capsys.readouterr().err)


def test_checkpoints_delete_removes_the_checkpoints_of_the_job(
    finished: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["checkpoints", "delete", str(finished.chk), "--all"]) == 0

    assert "deleted 1 checkpoint(s) of 'cli-count'" in capsys.readouterr().out
    assert not (finished.chk / "cli-count" / "chk-1").exists()
    assert read_committed_lines(str(finished.out)) == EXPECTED


# --------------------------------------------------------------------------- usage errors: exit 2


def test_missing_job_file_is_a_usage_error(
    finished: Workspace, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args(job_file=finished.root / "nope.py"))

    assert code == 2
    assert "nope.py' not found" in one_error_line(capsys.readouterr().err)
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_job_file_without_build_is_a_usage_error(
    finished: Workspace,
    capsys: pytest.CaptureFixture[str],
    tree_snapshot: TreeSnapshot,
    job_file_factory: Callable[[str, str], Path],
) -> None:
    no_build = job_file_factory("def make():\n    pass\n", "no_build.py")
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args(job_file=no_build))

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "defines no build() function" in line
    assert "def build(**params) -> Job" in line
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_build_raising_is_a_usage_error_naming_the_exception(
    finished: Workspace,
    capsys: pytest.CaptureFixture[str],
    tree_snapshot: TreeSnapshot,
    job_file_factory: Callable[[str, str], Path],
) -> None:
    raising = job_file_factory(
        "def build(input, output):\n    raise RuntimeError('no database configured')\n",
        "raising.py",
    )
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args(job_file=raising))

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "build() in" in line
    assert "raised RuntimeError: no database configured" in line
    assert "(at raising.py:2)" in line
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_unknown_parameter_is_a_usage_error_listing_the_accepted_names(
    finished: Workspace, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args("-p", "colour=red"))

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "unknown parameter 'colour'" in line
    assert "build() accepts: input, output, name" in line
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_process_executor_on_memory_storage_is_a_usage_error_without_restarts(
    ws: Workspace, capsys: pytest.CaptureFixture[str], memory_dir: str
) -> None:
    ws.executor = "process"  # the point of the test: memory:// is refused by this executor only

    code = main(ws.run_args("--checkpoint-dir", memory_dir))

    err = capsys.readouterr().err
    line = one_error_line(err)
    assert code == 2
    assert "process executor needs checkpoint storage that worker processes share" in line
    assert memory_dir in line
    assert "attempt 1 failed" not in err
    assert "failed after" not in line
    assert not ws.out.exists()


def test_unknown_executor_is_refused_by_the_argument_parser(
    finished: Workspace, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    before = unchanged_tree(tree_snapshot, finished.root)

    with pytest.raises(SystemExit) as info:
        main(finished.run_args("--executor", "spark"))

    assert info.value.code == 2
    assert "invalid choice: 'spark'" in one_error_line(capsys.readouterr().err)
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_unwritable_checkpoint_dir_is_a_usage_error(
    finished: Workspace, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    afile = finished.root / "afile"
    afile.write_text("not a directory")
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args("--checkpoint-dir", str(afile / "chk"), "--fresh"))

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "is not writable" in line
    assert "--checkpoint-dir" in line
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_output_directory_of_another_job_is_a_usage_error_and_left_alone(
    ws: Workspace, executor: str, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    ws.out.mkdir()
    (ws.out / MARKER_NAME).write_text(json.dumps({"job": "payroll", "sink": "write"}))
    (ws.out / "part-00000-0000000004").write_text("alice,100\n")
    (ws.out / ".part-00000-0000000005.abc.pending").write_text("bob,200\n")
    before = tree_snapshot(ws.out)

    code = main(ws.run_args())

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "'write'" in line
    assert "belongs to job 'payroll'" in line
    assert tree_snapshot(ws.out) == before


def test_other_parameters_on_the_same_checkpoints_are_a_usage_error(
    finished: Workspace, capsys: pytest.CaptureFixture[str], tree_snapshot: TreeSnapshot
) -> None:
    before = unchanged_tree(tree_snapshot, finished.root)

    code = main(finished.run_args("-p", "name=cli-count", "-p", f"input={finished.input}/words.txt"))

    assert code == 2
    assert "checkpoint 1" in one_error_line(capsys.readouterr().err)
    assert unchanged_tree(tree_snapshot, finished.root) == before


def test_parameter_without_equals_sign_is_a_usage_error(
    ws: Workspace, executor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(ws.run_args("-p", "verbose"))

    assert code == 2
    assert "parameter 'verbose' is not NAME=VALUE" in one_error_line(capsys.readouterr().err)
    assert not ws.out.exists() and not ws.chk.exists()


def test_bad_argument_value_exits_with_usage_code(
    ws: Workspace, executor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(ws.run_args("--parallelism", "0"))

    assert info.value.code == 2
    assert "must be >= 1" in one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- job failures: exit 1


def test_unsupported_key_type_fails_with_exit_1_naming_operator_and_type(
    ws: Workspace,
    executor: str,
    capsys: pytest.CaptureFixture[str],
    job_file_factory: Callable[[str, str], Path],
) -> None:
    job_file = job_file_factory(LIST_KEY_JOB, "list_keys.py")

    code = main(ws.run_args("--restart-delay", "0.01", job_file=job_file))

    err = capsys.readouterr().err
    line = one_error_line(err)
    assert code == 1
    assert "'first'" in line
    assert "list" in line
    assert "attempt 1 failed" not in err
    assert read_committed_lines(str(ws.out)) == []


def test_verbose_failure_prints_the_traceback(
    ws: Workspace,
    executor: str,
    capsys: pytest.CaptureFixture[str],
    job_file_factory: Callable[[str, str], Path],
) -> None:
    job_file = job_file_factory(LIST_KEY_JOB, "list_keys_verbose.py")

    code = main(ws.run_args("--verbose", job_file=job_file))

    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err
    assert "KeyEncodingError" in err


# --------------------------------------------------------------------------- loader


def test_parse_params_splits_on_the_first_equals_sign() -> None:
    assert parse_params(["a=1", " b =x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}


@pytest.mark.parametrize("pair", ["novalue", "=1", " =x"])
def test_parse_params_rejects_pairs_without_a_name(pair: str) -> None:
    with pytest.raises(JobLoadError, match="is not NAME=VALUE"):
        parse_params([pair])


def test_load_job_passes_parameters_as_strings(
    job_file_factory: Callable[[str, str], Path], tmp_path: Path
) -> None:
    path = job_file_factory(COUNT_JOB, "load_me.py")

    job = load_job(str(path), {"input": "in", "output": "out", "name": "renamed"})

    assert isinstance(job, Job)
    assert job.name == "renamed"
    assert [s.name for s in job.graph.specs()][0] == "read"


def test_load_job_reports_a_missing_required_parameter(
    job_file_factory: Callable[[str, str], Path],
) -> None:
    path = job_file_factory(COUNT_JOB, "needs_params.py")

    with pytest.raises(JobLoadError, match="needs parameter 'output': pass -p output=VALUE"):
        load_job(str(path), {"input": "in"})


def test_load_job_reports_an_import_error(job_file_factory: Callable[[str, str], Path]) -> None:
    path = job_file_factory("import not_a_module_anywhere\n", "broken_import.py")

    with pytest.raises(JobLoadError, match="importing job file .* raised ModuleNotFoundError"):
        load_job(str(path), {})


def test_load_job_refuses_a_build_that_returns_no_job(
    job_file_factory: Callable[[str, str], Path],
) -> None:
    path = job_file_factory("def build():\n    return 'job'\n", "returns_str.py")

    with pytest.raises(JobLoadError, match="returned str, not an engine.Job"):
        load_job(str(path), {})


def test_load_job_accepts_any_parameter_for_build_with_kwargs(
    job_file_factory: Callable[[str, str], Path],
) -> None:
    path = job_file_factory(
        """
        from onceflow import Job
        from onceflow import FileSink, FileSource


        def build(**params):
            job = Job(params["name"])
            job.source(FileSource("in")).sink(FileSink("out"))
            return job
        """,
        "kwargs_job.py",
    )

    assert load_job(str(path), {"name": "any", "extra": "1"}).name == "any"


def test_load_job_module_builds_the_same_job_twice(
    job_file_factory: Callable[[str, str], Path],
) -> None:
    path = job_file_factory(COUNT_JOB, "twice.py")
    params = {"input": "in", "output": "out"}

    first, second = load_job(str(path), params), load_job(str(path), params)

    assert first.graph.fingerprint() == second.graph.fingerprint()


# --------------------------------------------------------------------------- issue 11, item 8


def test_a_job_file_imports_a_module_next_to_it(tmp_path: Path, ws: Workspace, executor: str) -> None:
    helper = f"sibling_words_{uuid.uuid4().hex[:8]}"
    (ws.job_file.parent / f"{helper}.py").write_text("def split(line):\n    return line.split()\n")
    job_file = ws.job_file.parent / "imports_sibling.py"
    job_file.write_text(
        textwrap.dedent(COUNT_JOB)
        .replace("from onceflow import Job\n", f"from onceflow import Job\nimport {helper}\n")
        .replace("flat_map(str.split,", f"flat_map({helper}.split,")
    )

    assert main(ws.run_args(job_file=job_file)) == 0
    assert read_committed_lines(str(ws.out)) == EXPECTED


def test_spelling_out_a_default_parameter_or_reordering_is_the_same_run(
    finished: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    spelled = [
        "run",
        str(finished.job_file),
        "-p",
        "name=cli-count",
        "-p",
        f"output={finished.out}",
        "-p",
        f"input={finished.input}",
        "--checkpoint-dir",
        str(finished.chk),
        "--progress",
        "off",
        "--executor",
        finished.executor,
    ]

    code = main(spelled)

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "already finished" in captured.out
    assert read_committed_lines(str(finished.out)) == EXPECTED


def test_load_job_file_returns_the_parameters_after_defaults_as_strings(
    job_file_factory: Callable[[str, str], Path],
) -> None:
    path = job_file_factory(
        """
        from onceflow import Job, FileSink, FileSource


        def build(input, n=10, name=None, *, flag=True):
            job = Job("defaults")
            job.source(FileSource(input)).sink(FileSink("out"))
            return job
        """,
        "defaults_job.py",
    )

    loaded = load_job_file(str(path), {"input": "in"})

    assert loaded.params == {"input": "in", "n": "10", "name": "None", "flag": "True"}
    assert load_job_file(str(path), {"n": "10", "input": "in"}).params == loaded.params


def test_run_warns_once_about_stateful_operators_without_uid(
    ws: Workspace, job_file_factory: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    unnamed = job_file_factory(COUNT_JOB.replace(', uid="count"', ""), "unnamed_count.py")

    assert main(ws.run_args(job_file=unnamed)) == 0

    warnings = [line for line in capsys.readouterr().err.splitlines() if "without uid=" in line]
    assert len(warnings) == 1
    assert "'count'" in warnings[0] and "'read'" not in warnings[0]


def test_run_does_not_warn_when_every_stateful_operator_has_a_uid(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(ws.run_args()) == 0

    assert "without uid=" not in capsys.readouterr().err
