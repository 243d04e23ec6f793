"""The ``onceflow`` command: run a job, show its plan, manage checkpoints.

Exit codes: 0 the job finished and everything is committed; 1 the job failed;
2 a usage error (bad arguments, job file, parameters, checkpoint directory,
or a connector set up wrongly); 130/143 a run stopped by SIGINT/SIGTERM at a
committed checkpoint (:mod:`onceflow.engine.stopping`; a second signal exits at
once with the same code). Errors print one line plus a hint; the
traceback only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

from onceflow.engine.api import Job
from onceflow.engine.checkpoint.inspect import format_sizes, keyed_state_table, state_sizes
from onceflow.engine.checkpoint.metadata import CheckpointMetadata
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.restore import load_operator_keyed_state
from onceflow.engine.checkpoint.retention import plan_deletions, surviving_references
from onceflow.engine.checkpoint.store import CheckpointStore, list_jobs
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.errors import (
    CheckpointStorageError,
    ConcurrentRunError,
    JobDefinitionError,
    OnceflowError,
    classify,
)
from onceflow.engine.executors.local import ExecutionSettings
from onceflow.engine.loader import load_job, load_job_file, parse_params
from onceflow.engine.metrics import MetricsReporter, chain_ticks
from onceflow.engine.plan import build_plan, describe_graph
from onceflow.engine.progress import ProgressDisplay
from onceflow.engine.runner import DEFAULT_CHECKPOINT_DIR, JobRunner, RestartStrategy, RunStatus
from onceflow.engine.stopping import StopRequest, handle_stop_signals
from onceflow.state_backends.config import STATE_BACKENDS, StateBackendConfig

METRICS_INTERVAL = 1.0
"""Seconds between two readings of ``--metrics-port`` / ``--metrics-file``."""

log = logging.getLogger("onceflow")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse hook
        self.print_usage(sys.stderr)
        sys.stderr.write(f"onceflow: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be >= 1, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        msg = f"must be > 0, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``onceflow`` command."""
    parser = _Parser(prog="onceflow", description="Run exactly-once dataflow jobs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("jobfile", help="a Python file defining build(**params) -> Job")
        p.add_argument(
            "-p",
            dest="params",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a parameter passed to build() as a string (repeatable)",
        )
        p.add_argument(
            "--parallelism",
            type=_positive_int,
            default=1,
            help="parallelism of every operator that sets none (default 1)",
        )
        p.add_argument(
            "--max-parallelism",
            type=_positive_int,
            default=128,
            help="number of key groups; fixed for the life of the job (default 128)",
        )
        p.add_argument("--verbose", "-v", action="store_true", help="debug logs and tracebacks")

    run = sub.add_parser("run", help="run a job (a rerun resumes from the latest checkpoint)")
    job_args(run)
    run.add_argument("--executor", choices=["local", "process", "ray"], default="local")
    run.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to run on with --executor ray (default: RAY_ADDRESS, else a local Ray)",
    )
    run.add_argument(
        "--checkpoint-dir",
        default=DEFAULT_CHECKPOINT_DIR,
        help=f"fsspec URL or path for checkpoints (default {DEFAULT_CHECKPOINT_DIR})",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=_positive_float,
        default=2.0,
        help="seconds between checkpoints (default 2)",
    )
    run.add_argument(
        "--checkpoint-timeout",
        type=_positive_float,
        default=60.0,
        help="abort a checkpoint not complete after this many seconds (default 60)",
    )
    run.add_argument(
        "--retain", type=_positive_int, default=3, help="completed checkpoints to keep (default 3)"
    )
    run.add_argument(
        "--incremental-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write only the keyed state changed since the previous checkpoint (files shared under "
        "<checkpoint-dir>/<job>/shared/, compacted in the background); for large keyed state "
        "(default: on with --state-backend disk, off with heap)",
    )
    run.add_argument(
        "--max-deltas",
        type=_positive_int,
        default=64,
        help="incremental checkpoints: most deltas a key-group segment holds; one segment is compacted "
        "into a new base every N/8 checkpoints, so each base is rewritten once per N checkpoints: fewer "
        "make restores read less, more make checkpoints write less (default 64)",
    )
    run.add_argument(
        "--fresh", action="store_true", help="discard this job's checkpoints and output, and start over"
    )
    run.add_argument(
        "--restart-attempts",
        type=int,
        default=RestartStrategy.attempts,
        help=f"restarts after a task failure before giving up (default {RestartStrategy.attempts})",
    )
    run.add_argument(
        "--restart-delay",
        type=float,
        default=RestartStrategy.initial_delay,
        help=f"first restart delay in seconds, doubled each time (default {RestartStrategy.initial_delay:g})",
    )
    run.add_argument("--batch-size", type=_positive_int, default=1024)
    run.add_argument(
        "--channel-capacity",
        type=_positive_int,
        default=8,
        help="batches a channel holds before its producer waits (default 8)",
    )
    run.add_argument("--progress", choices=["auto", "tty", "log", "off"], default="auto")
    run.add_argument(
        "--metrics-port",
        type=_positive_int,
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (needs onceflow[metrics])",
    )
    run.add_argument("--metrics-file", help="append the metrics as one JSON line every --metrics-interval")
    run.add_argument(
        "--metrics-interval",
        type=_positive_float,
        default=METRICS_INTERVAL,
        help=f"seconds between two metrics readings (default {METRICS_INTERVAL:g})",
    )
    run.add_argument(
        "--state-backend",
        choices=list(STATE_BACKENDS),
        default="heap",
        help="keyed state in memory (heap, default) or in a local database per subtask (disk: "
        "state larger than memory); checkpoints of either restore on the other",
    )
    run.add_argument(
        "--state-dir",
        default=None,
        help="local directory for the disk backend's databases (default: the system temp directory)",
    )
    run.add_argument(
        "--state-cache-entries",
        type=_positive_int,
        default=StateBackendConfig.cache_entries,
        help="disk backend: keys per state held in memory (default %(default)s)",
    )
    run.add_argument(
        "--allow-unmatched-state",
        action="store_true",
        help="drop checkpointed state that no operator matches by uid and kind (default: refuse the run)",
    )

    graph = sub.add_parser("graph", help="print the logical graph and the physical plan")
    job_args(graph)

    chk = sub.add_parser("checkpoints", help="list, inspect or delete checkpoints")
    actions = chk.add_subparsers(dest="action", required=True, parser_class=_Parser)

    def chk_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "url",
            nargs="?",
            default=DEFAULT_CHECKPOINT_DIR,
            help=f"checkpoint directory (default {DEFAULT_CHECKPOINT_DIR})",
        )
        p.add_argument("--job", help="job name (default: the only job in the directory)")
        p.add_argument("--verbose", "-v", action="store_true")

    chk_args(actions.add_parser("list", help="list every job's checkpoints"))
    inspect = actions.add_parser(
        "inspect",
        help="show a checkpoint's state size per operator, its metadata, or an operator's keyed state",
    )
    chk_args(inspect)
    inspect.add_argument("--id", type=int, help="checkpoint id (default: the latest completed)")
    shown = inspect.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the checkpoint's _metadata as JSON")
    shown.add_argument(
        "--state",
        metavar="UID",
        help="the keyed state of operator UID as a table (state, key_group, key, value)",
    )
    inspect.add_argument(
        "--out", metavar="FILE", help="with --state: write the table to FILE (.parquet or .arrow)"
    )
    inspect.add_argument(
        "--limit", type=_positive_int, default=20, help="with --state: rows to print (default 20)"
    )
    delete = actions.add_parser(
        "delete",
        help="delete one checkpoint (--id N) or all of a job's (--all); refused while a run holds URL",
    )
    chk_args(delete)
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, help="delete checkpoint N (files others reference stay)")
    which.add_argument("--all", action="store_true", help="delete every checkpoint of the job")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onceflow`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "graph":
            return _graph(args)
        return _checkpoints(args)
    except KeyboardInterrupt:
        sys.stderr.write("onceflow: interrupted; rerun the same command to resume\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        return _report(exc, args.verbose)


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onceflow: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _report(exc: BaseException, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    code = EXIT_USAGE if classify(exc).usage else EXIT_FAILED
    first = str(exc).strip() or type(exc).__name__
    notes = getattr(exc, "__notes__", [])
    prefix = "; ".join(notes) + ": " if notes else ""
    if not isinstance(exc, OnceflowError) and not verbose:
        first = f"{type(exc).__name__}: {first}"
    sys.stderr.write(f"onceflow: error: {prefix}{first}\n")
    if not verbose:
        sys.stderr.write("onceflow: (run with --verbose for the traceback)\n")
    return code


def _metrics_reporter(args: argparse.Namespace) -> MetricsReporter | None:
    """Serve ``--metrics-port`` and open ``--metrics-file`` if asked; a usage error if that fails."""
    if args.metrics_port is None and args.metrics_file is None:
        return None
    try:
        return MetricsReporter(port=args.metrics_port, file=args.metrics_file, interval=args.metrics_interval)
    except ImportError as exc:
        msg = "--metrics-port needs the prometheus-client package: pip install 'onceflow[metrics]'"
        raise JobDefinitionError(msg) from exc
    except OSError as exc:
        what = f"port {args.metrics_port}" if args.metrics_port else f"file {args.metrics_file!r}"
        msg = (
            f"cannot serve or write metrics ({what}): {exc}; choose another --metrics-port or --metrics-file"
        )
        raise JobDefinitionError(msg) from exc


def _run(args: argparse.Namespace) -> int:
    with handle_stop_signals(StopRequest()) as stop:
        return _run_until_done_or_stopped(args, stop)


def _run_until_done_or_stopped(args: argparse.Namespace, stop: StopRequest) -> int:
    loaded = load_job_file(args.jobfile, parse_params(args.params))
    job = loaded.job
    _warn_about_default_uids(job)
    settings = ExecutionSettings(
        batch_size=args.batch_size,
        channel_capacity=args.channel_capacity,
        checkpoint=CoordinatorSettings(
            interval=args.checkpoint_interval,
            timeout=args.checkpoint_timeout,
            retain=args.retain,
        ),
        incremental_checkpoints=args.incremental_checkpoints,
        max_deltas=args.max_deltas,
        ray_address=args.ray_address,
        state_backend=StateBackendConfig(
            args.state_backend, directory=args.state_dir, cache_entries=args.state_cache_entries
        ),
    )
    progress = None
    if args.progress != "off":
        interactive = None if args.progress == "auto" else args.progress == "tty"
        progress = ProgressDisplay(interactive=interactive)
    reporter = _metrics_reporter(args)
    runner = JobRunner(
        job,
        checkpoint_dir=args.checkpoint_dir,
        parallelism=args.parallelism,
        max_parallelism=args.max_parallelism,
        settings=settings,
        restart=RestartStrategy(attempts=args.restart_attempts, initial_delay=args.restart_delay),
        fresh=args.fresh,
        on_tick=chain_ticks(progress, reporter),
        params=loaded.params,
        executor=args.executor,
        stop=stop,
        allow_unmatched_state=args.allow_unmatched_state,
        job_file=args.jobfile,
    )
    started = time.monotonic()
    try:
        result = runner.run()
    finally:
        if progress is not None:
            progress.close()
        if reporter is not None:
            reporter.close()
    elapsed = time.monotonic() - started
    if result.status is RunStatus.STOPPED:
        print(
            f"onceflow: job {job.name!r} stopped at checkpoint {result.checkpoint_id} "
            f"({stop.signal_name}) after {elapsed:.1f} s: its output is committed; rerun the same "
            "command to resume from it"
        )
        return stop.exit_code
    if result.status is RunStatus.ALREADY_FINISHED and result.recommitted:
        print(
            f"onceflow: job {job.name!r} already finished at checkpoint {result.checkpoint_id}; "
            f"committed {result.recommitted} output file(s) a crash had left pending "
            "(pass --fresh to run it again)"
        )
    elif result.status is RunStatus.ALREADY_FINISHED:
        print(
            f"onceflow: job {job.name!r} already finished at checkpoint {result.checkpoint_id}; "
            "its output is committed and nothing changed (pass --fresh to run it again)"
        )
    else:
        resumed = f", resumed from checkpoint {result.restored_from}" if result.restored_from else ""
        restarts = f", {result.restarts} restart(s)" if result.restarts else ""
        print(
            f"onceflow: job {job.name!r} finished in {elapsed:.1f} s{resumed}{restarts}: "
            f"{result.records_read:,} records read, {result.checkpoints_completed} checkpoints, "
            f"output committed at checkpoint {result.checkpoint_id}"
        )
    for sink in result.sinks:
        where = getattr(sink, "directory", None)
        if where is not None:
            print(f"onceflow: output in {where}")
    return EXIT_OK


def _warn_about_default_uids(job: Job) -> None:
    unnamed = job.graph.stateful_without_uid()
    if unnamed:
        names = ", ".join(repr(spec.name) for spec in unnamed)
        log.warning(
            "stateful operators without uid=: %s; a default uid follows the operator's position in "
            "the job graph, so after any change of the graph's structure its checkpointed state "
            "is not restored (the run is refused). Give each a stable uid=, e.g. "
            '.reduce(fn, name="count", uid="count")',
            names,
        )


def _graph(args: argparse.Namespace) -> int:
    job = load_job(args.jobfile, parse_params(args.params))
    plan = build_plan(job.graph, default_parallelism=args.parallelism, max_parallelism=args.max_parallelism)
    print(describe_graph(job.graph))
    print()
    print(plan.describe())
    return EXIT_OK


def _checkpoints(args: argparse.Namespace) -> int:
    jobs = list_jobs(args.url)
    if args.job:
        jobs = [j for j in jobs if j == args.job] or [args.job]
    if args.action == "list":
        for name in jobs:
            store = CheckpointStore(args.url, name)
            for cid in store.checkpoint_ids():
                meta = store.read_metadata(cid)
                state = "complete" if meta else "incomplete"
                extra = ""
                if meta:
                    final = " final" if meta.final else ""
                    extra = f" {meta.size_bytes:>10,} bytes  {meta.timings.triggered_at}{final}"
                print(f"{name}  {CheckpointPaths.checkpoint_dir_name(cid):<10} {state:10}{extra}")
        return EXIT_OK
    if len(jobs) != 1:
        sys.stderr.write(f"onceflow: error: name the job with --job (found: {jobs or 'none'})\n")
        return EXIT_USAGE
    store = CheckpointStore(args.url, jobs[0])
    ids = store.checkpoint_ids()
    if args.action == "inspect":
        chosen: int | None = (
            args.id
            if args.id is not None
            else next((i for i in reversed(ids) if store.read_metadata(i)), None)
        )
        meta = store.read_metadata(chosen) if chosen is not None else None
        if meta is None:
            sys.stderr.write(f"onceflow: error: no completed checkpoint {chosen} for {jobs[0]!r}\n")
            return EXIT_USAGE
        if args.state is not None:
            return _inspect_state(store, meta, args.state, args.out, args.limit)
        if args.out is not None:
            sys.stderr.write("onceflow: error: --out needs --state UID\n")
            return EXIT_USAGE
        if args.json:
            print(json.dumps(meta.to_json(), indent=2, sort_keys=True))
        else:
            print(format_sizes(meta, state_sizes(meta)))
        return EXIT_OK
    return _delete_checkpoints(store, args.id, every=args.all)


def _inspect_state(
    store: CheckpointStore, meta: CheckpointMetadata, uid: str, out: str | None, limit: int
) -> int:
    """Print operator ``uid``'s keyed state in ``meta`` as a table, or write it to ``out``."""
    if out is not None and not out.endswith((".parquet", ".arrow")):
        sys.stderr.write(f"onceflow: error: --out {out!r}: name a .parquet or .arrow file\n")
        return EXIT_USAGE
    try:
        tables = load_operator_keyed_state(store, meta, uid)
    except KeyError:
        uids = ", ".join(sorted({h.uid for h in meta.handles})) or "none"
        sys.stderr.write(
            f"onceflow: error: checkpoint {meta.checkpoint_id} has no state of operator uid {uid!r} "
            f"(operators with state: {uids})\n"
        )
        return EXIT_USAGE
    table = keyed_state_table(tables, meta.max_parallelism)
    if out is None:
        print(f"operator {uid!r}, checkpoint {meta.checkpoint_id}: {table.num_rows:,} keyed entries")
        print(table.schema.to_string(show_schema_metadata=False))
        for row in table.slice(0, limit).to_pylist():
            print(f"{row['state']}\t{row['key_group']}\t{row['key']!r}\t{row['value']!r}")
        if table.num_rows > limit:
            print(f"... {table.num_rows - limit:,} more (--limit N, or --out FILE.parquet for all)")
        return EXIT_OK
    if out.endswith(".parquet"):
        import pyarrow.parquet as pq  # noqa: PLC0415 - only this option needs it

        pq.write_table(table, out)
    else:
        import pyarrow.ipc as ipc  # noqa: PLC0415

        with ipc.new_file(out, table.schema) as writer:
            writer.write_table(table)
    print(
        f"wrote {table.num_rows:,} keyed entries of operator {uid!r} "
        f"(checkpoint {meta.checkpoint_id}) to {out}"
    )
    return EXIT_OK


def _delete_checkpoints(store: CheckpointStore, checkpoint_id: int | None, *, every: bool) -> int:
    """Delete checkpoint ``checkpoint_id``, or all with ``every``, holding the run lock meanwhile.

    Taking the run's own lock (flock or lease) refuses the delete while a run
    holds the directory, and keeps a run from starting in the middle of it.
    Files that a checkpoint kept still references are kept (``plan_deletions``), shared
    files of incremental checkpoints included.
    """
    job = store.paths.job_name
    try:
        store.acquire_lock()
    except ConcurrentRunError as exc:
        exc.add_note(f"cannot delete checkpoints of {job!r} while a run holds the directory")
        raise
    try:
        ids = store.checkpoint_ids()
        if every:
            targets = ids
        elif checkpoint_id in ids:
            targets = [checkpoint_id]
        else:
            sys.stderr.write(f"onceflow: error: no checkpoint {checkpoint_id} for {job!r} (found: {ids})\n")
            return EXIT_USAGE
        completed: dict[int, CheckpointMetadata] = {}
        for cid in ids:
            try:
                meta = store.read_metadata(cid)
            except CheckpointStorageError:
                continue  # damaged: it cannot be restored, so nothing it references must stay
            if meta is not None:
                completed[cid] = meta
        deletions = plan_deletions(completed, unusable=targets)
        store.delete_checkpoints(deletions)
        store.collect_shared(surviving_references(completed, deletions))
    finally:
        store.release_lock()
    print(f"onceflow: deleted {len(targets)} checkpoint(s) of {job!r}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
