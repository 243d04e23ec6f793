"""``DeltaSink``: append to a Delta Lake table, one table version per completed checkpoint.

How a checkpoint's records reach the table (the two-phase commit of
:class:`~onceflow.operators.base.TwoPhaseCommitWriter`, on the ``deltalake``
package):

1. ``write``: every subtask streams its records into a Parquet file in the
   sink's staging folder, ``<table>/_onceflow/<sink>/`` (Delta readers skip
   folders starting with ``_``).
2. ``pre_commit(n)`` (at the barrier): the file is renamed to its final name
   in the table folder, ``part-<sink>-<subtask>-<n>-<attempt>.parquet``, and a
   *manifest* ``<n>-<subtask>-<attempt>.json`` listing it is written to the
   staging folder. The file is in place but no table version references it, so
   no reader sees it.
3. ``notify_checkpoint_complete(n)``: subtask 0 alone commits every manifest
   up to ``n`` as one table version that also records the Delta transaction
   identifier ``(app id, n)``, the app id naming job and sink uid. Before it
   commits it reads the identifier's version from the table: a manifest at or
   below it was committed already (a commit retried after a crash, or a
   notification repeated), so it is only deleted, never added twice.

A restore commits what the restored checkpoint still owes the same way, then
deletes what attempts that did not reach a completed checkpoint left (their
manifests, renamed and in-progress files), and refuses, as every sink that
cannot take committed rows back, a checkpoint older than the table's
transaction version (:class:`~onceflow.operators.errors.SinkAheadOfCheckpointError`).
``--fresh`` removes this sink's earlier files from the table in one version
(they stay in the table's history) and resets the transaction version.

Requires the optional ``deltalake`` package (``pip install 'onceflow[delta]'``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from onceflow.operators._file_paths import safe_name
from onceflow.operators.base import (
    Capability,
    RestoredState,
    RuntimeContext,
    Sink,
    TwoPhaseCommitWriter,
)
from onceflow.operators.errors import SinkCommitError, SinkError, SinkOutputExistsError
from onceflow.state_backends._durable import fsync_dir, fsync_file

if TYPE_CHECKING:
    import pyarrow.parquet as pq

__all__ = ["DeltaSink", "DeltaSinkWriter"]

log = logging.getLogger("onceflow")

STAGING = "_onceflow"
"""Folder of the table holding each sink's in-progress files and manifests."""
_MANIFEST = re.compile(r"^(?P<checkpoint>\d{10})-(?P<subtask>\d{5})-(?P<attempt>.+)\.json$")
_PART = re.compile(r"^part-(?P<sink>[0-9a-f]{12})-\d{5}-(?P<checkpoint>\d{10})-(?P<attempt>.+)\.parquet$")
_INPROGRESS = re.compile(r"^\.\d{5}-(?P<attempt>.+)-\d+\.inprogress$")


def _import_deltalake() -> Any:
    try:
        import deltalake
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        msg = "DeltaSink needs the deltalake package: pip install 'onceflow[delta]'"
        raise SinkError(msg) from exc
    return deltalake


class DeltaSink(Sink):
    """Append records to a Delta Lake table, exactly once, one table version per checkpoint.

    A record is a dict of column -> value, or the sink receives Arrow record
    batches as they are (``map_batches`` output). Columns come from
    ``schema``, else from the existing table, else from the first batch; a
    record with other keys or a value of another type fails the run with an
    error naming the sink and the record.

    Args:
        uri: the table folder (created with the first commit if missing).
        schema: the Arrow schema of new tables; must match an existing table.
        storage_options: passed to ``deltalake`` and fsspec for object stores.
    """

    def __init__(
        self,
        uri: str,
        *,
        schema: pa.Schema | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(uri, str) or not uri:
            msg = f"DeltaSink: uri must be a table folder or URL, got {uri!r}"
            raise SinkError(msg)
        self.uri = uri.rstrip("/") or "/"
        self.schema = schema
        self.storage_options = storage_options

    @property
    def shared_across_processes(self) -> bool:
        """False for ``memory://``, which every process has its own of."""
        protocol, _ = fsspec.core.split_protocol(self.uri)
        return protocol != "memory"

    def create_writer(self, subtask_index: int, parallelism: int) -> DeltaSinkWriter:
        """Return the writer of one subtask."""
        return DeltaSinkWriter(self)

    def __repr__(self) -> str:
        return f"DeltaSink({self.uri!r})"


class DeltaSinkWriter(TwoPhaseCommitWriter):
    """One subtask's writer of a :class:`DeltaSink`; subtask 0 also commits table versions.

    Cost: per batch one Arrow conversion (a key check per dict record) and one
    Parquet ``write_batch``; per checkpoint one rename and one small manifest
    per subtask, and on subtask 0 one table commit.
    """

    capabilities = Capability.TWO_PHASE_COMMIT | Capability.ARROW_INPUT

    def __init__(self, sink: DeltaSink) -> None:
        super().__init__()
        self._sink = sink
        self._fs: AbstractFileSystem = LocalFileSystem()
        self._root = ""
        self._local = False
        self._digest = ""
        self._app_id = ""
        self._where = repr(sink)
        self._schema: pa.Schema | None = sink.schema
        self._names: set[str] = set(sink.schema.names) if sink.schema is not None else set()
        self._parquet: pq.ParquetWriter | None = None
        self._inprogress = ""
        self._rows = 0
        self._seq = 0

    # ------------------------------------------------------------ life cycle

    def open(self, ctx: RuntimeContext) -> None:
        """Find the table and its schema; on a fresh start refuse or (``--fresh``) reset earlier output.

        Raises:
            SinkOutputExistsError: a fresh start found versions this job and sink
                committed, without ``ctx.overwrite_output``.
        """
        super().open(ctx)
        sink = self._sink
        self._fs, root = fsspec.core.url_to_fs(sink.uri, **(sink.storage_options or {}))
        self._root = root.rstrip("/") or "/"
        self._local = isinstance(self._fs, LocalFileSystem)
        self._digest = hashlib.sha256(f"{ctx.job_name}\x00{ctx.uid}".encode()).hexdigest()[:12]
        self._app_id = f"onceflow:{ctx.job_name}:{ctx.uid}"
        self._where = f"DeltaSink({sink.uri!r}, uid {ctx.uid!r}, subtask {ctx.subtask_index})"
        self._fs.makedirs(self._staging, exist_ok=True)
        table = self._table()
        if table is not None and self._schema is None:
            self._schema = pa.schema(table.schema().to_arrow())
            self._names = set(self._schema.names)
        if ctx.restored_checkpoint_id is None:
            self._start_fresh(table)

    def _start_fresh(self, table: Any) -> None:
        committed = self.last_committed_checkpoint()
        if committed is not None and not self.ctx.overwrite_output:
            msg = (
                f"{self._where}: an earlier run of job {self.ctx.job_name!r} committed into this "
                f"table (up to checkpoint {committed}) and there is no checkpoint to resume from; "
                f"rerun with --fresh to remove that run's files from the table and start over"
            )
            raise SinkOutputExistsError(msg)
        if self.ctx.subtask_index != 0:
            return
        keep = set(self._table_files())
        if table is not None and committed is not None:
            self._remove_own_files(table)
        self._delete_leftovers(restored=0, keep=keep)

    def _remove_own_files(self, table: Any) -> None:
        """``--fresh``: one version removing every file this sink added, transaction version back to 0."""
        deltalake = _import_deltalake()
        from deltalake.transaction import RemoveAction

        actions = table.get_add_actions(flatten=True)
        paths = [str(p) for p in actions.column("path").to_pylist()]
        sizes = actions.column("size_bytes").to_pylist()
        now = int(time.time() * 1000)
        removes = [
            RemoveAction(path, True, now, size, {})
            for path, size in zip(paths, sizes)
            if path.startswith(f"part-{self._digest}-")
        ]
        log.info("%s: --fresh removes %d files of an earlier run from the table", self._where, len(removes))
        table.create_write_transaction(
            removes,
            mode="append",
            schema=table.schema(),
            commit_properties=deltalake.CommitProperties(
                app_transactions=[deltalake.Transaction(self._app_id, 0)]
            ),
        )

    def write(self, records: Any) -> None:
        """Append a batch (dicts, or an Arrow batch or table) to this checkpoint's Parquet file.

        Raises:
            SinkError: a record is not a dict, has other keys than the columns,
                or holds a value of another type; an Arrow batch has another schema.
        """
        if isinstance(records, pa.Table):
            batches = [self._check_arrow(b) for b in records.to_batches()]
        elif isinstance(records, pa.RecordBatch):
            batches = [self._check_arrow(records)]
        else:
            batches = [self._from_rows(records)]
        for batch in batches:
            if batch.num_rows:
                writer = self._parquet if self._parquet is not None else self._open_inprogress(batch.schema)
                writer.write_batch(batch)
                self._rows += batch.num_rows

    def _from_rows(self, records: list) -> pa.RecordBatch:
        names = self._names
        if not names and records and type(records[0]) is dict:
            # the table's first batch: its first record's fields (pyarrow would silently drop others)
            names = self._names = set(records[0])
        for record in records:
            if type(record) is not dict or (names and record.keys() != names):
                self._refuse_record(record)
        try:
            batch = pa.RecordBatch.from_pylist(records, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise self._bad_value(records, exc) from exc
        if self._schema is None:
            self._schema = batch.schema
            self._names = set(batch.schema.names)
        return batch

    def _check_arrow(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self._schema is None:
            self._schema = batch.schema
            self._names = set(batch.schema.names)
        elif not batch.schema.equals(self._schema):
            msg = (
                f"{self._where}: an Arrow batch has schema {batch.schema.to_string()!r}, the table "
                f"{self._schema.to_string()!r}; cast the batch (e.g. batch.cast(schema)) before the sink"
            )
            raise SinkError(msg)
        return batch

    def _refuse_record(self, record: Any) -> None:
        if type(record) is not dict:
            msg = f"{self._where}: record {record!r:.300} is a {type(record).__name__}, not a dict of columns"
        else:
            missing = sorted(self._names - record.keys())
            extra = sorted(record.keys() - self._names)
            msg = (
                f"{self._where}: record {record!r:.300} does not match the table's columns "
                f"{sorted(self._names)} (missing {missing}, unknown {extra})"
            )
        raise SinkError(msg)

    def _bad_value(self, records: list, exc: Exception) -> SinkError:
        """Error path: name the first record (and column) Arrow cannot convert."""
        schema = self._schema
        for record in records:
            for name, value in record.items():
                field = schema.field(name) if schema is not None else None
                try:
                    pa.array([value], type=field.type if field is not None else None)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    expected = f" (column type {field.type})" if field is not None else ""
                    return SinkError(
                        f"{self._where}: record {record!r:.300} has {name!r} = {value!r:.80}, which "
                        f"cannot be stored{expected}: {exc}"
                    )
        return SinkError(f"{self._where}: a batch cannot be stored as Arrow columns: {exc}")

    def _open_inprogress(self, schema: pa.Schema) -> pq.ParquetWriter:
        import pyarrow.parquet as pq  # only when a job writes: keeps `import onceflow` light

        name = f".{self.ctx.subtask_index:05d}-{safe_name(self.ctx.attempt_id)}-{self._seq}.inprogress"
        self._seq += 1
        self._inprogress = posixpath.join(self._staging, name)
        self._parquet = pq.ParquetWriter(self._inprogress, schema, filesystem=self._fs)
        return self._parquet

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any] | None:
        """Close this checkpoint's file, move it into the table folder and write its manifest.

        Steps:
            1. Close (and locally fsync) the Parquet file.
            2. Rename it to its final name in the table folder (no version references it yet).
            3. Write the manifest naming it: from now on a restore can commit it.

        Returns:
            ``{"checkpoint_id", "subtask", "manifest", "rows"}``, or None when the
            subtask wrote nothing since the last barrier (no file, no manifest).
        """
        writer, self._parquet = self._parquet, None
        if writer is None:
            return None
        ctx = self.ctx
        # Step 1
        writer.close()
        if self._local:
            with open(self._inprogress, "rb") as handle:
                fsync_file(handle)
        # Step 2
        attempt = safe_name(ctx.attempt_id)
        name = f"part-{self._digest}-{ctx.subtask_index:05d}-{checkpoint_id:010d}-{attempt}.parquet"
        final = posixpath.join(self._root, name)
        if self._local:
            os.replace(self._inprogress, final)
            fsync_dir(self._root)
        else:
            self._fs.mv(self._inprogress, final)
        ctx.crash_point("after_pending_rename_before_commit_rename")
        # Step 3
        info = self._fs.info(final)
        files = [{"path": name, "size": int(info["size"]), "rows": self._rows}]
        manifest = f"{checkpoint_id:010d}-{ctx.subtask_index:05d}-{attempt}.json"
        self._write_atomically(manifest, json.dumps({"files": files}).encode())
        rows, self._rows = self._rows, 0
        return {
            "checkpoint_id": checkpoint_id,
            "subtask": ctx.subtask_index,
            "manifest": manifest,
            "rows": rows,
        }

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Forget committables up to ``checkpoint_id``; subtask 0 commits them all as one table version."""
        for n in [n for n in self._pending if n <= checkpoint_id]:
            del self._pending[n]
        if self.ctx.subtask_index == 0:
            self.commit({"checkpoint_id": checkpoint_id})

    def commit(self, committable: dict[str, Any]) -> bool:
        """Commit every staged manifest up to the committable's checkpoint as one table version.

        The cases, by the table's transaction version ``v`` for this sink:
            1. A manifest at or below ``v``: committed before (a retried commit);
               only deleted.
            2. Manifests above ``v``: their files are added in one version that
               sets the transaction version to the checkpoint id, then deleted.
            3. None above ``v``: nothing to commit; no empty version.

        Returns:
            True when this call made a table version.
        """
        checkpoint_id = int(committable["checkpoint_id"])
        committed = self.last_committed_checkpoint() or 0
        owed = {name: n for name, n in self._manifests().items() if n <= checkpoint_id}
        new = sorted((n, name) for name, n in owed.items() if n > committed)
        made = False
        if new and checkpoint_id > committed:
            # Case 2
            files = [f for _, name in new for f in self._read_manifest(name)["files"]]
            self.ctx.crash_point("mid_commit")
            self._commit_version(files, checkpoint_id)
            made = True
            self.ctx.crash_point("after_commit_before_bookkeeping")
        # Case 1 (and the manifests case 2 just committed)
        limit = checkpoint_id if made else committed
        done = [name for name, n in owed.items() if n <= limit]
        if done:
            self._fs.rm([posixpath.join(self._staging, name) for name in done])
        return made

    def _commit_version(self, files: list[dict[str, Any]], checkpoint_id: int) -> None:
        deltalake = _import_deltalake()
        from deltalake.transaction import AddAction, create_table_with_add_actions

        now = int(time.time() * 1000)
        adds = [
            AddAction(f["path"], f["size"], {}, now, True, json.dumps({"numRecords": f["rows"]}))
            for f in files
        ]
        properties = deltalake.CommitProperties(
            app_transactions=[deltalake.Transaction(self._app_id, checkpoint_id)]
        )
        table = self._table()
        schema = self._files_schema(files, table)
        if table is None:
            create_table_with_add_actions(
                self._sink.uri,
                deltalake.Schema.from_arrow(schema),
                adds,
                mode="append",
                storage_options=self._sink.storage_options,
                commit_properties=properties,
            )
        else:
            table.create_write_transaction(
                adds, mode="append", schema=table.schema(), commit_properties=properties
            )

    def _files_schema(self, files: list[dict[str, Any]], table: Any) -> pa.Schema:
        """Return the schema all files share (the table's if it exists); refuse a file that differs."""
        import pyarrow.parquet as pq

        deltalake = _import_deltalake()
        expected = table.schema().to_json() if table is not None else None
        schema = None
        for f in files:
            path = posixpath.join(self._root, f["path"])
            try:
                found = pq.read_schema(path, filesystem=self._fs)
            except FileNotFoundError as exc:
                msg = (
                    f"{self._where}: staged file {path!r} of a completed checkpoint is gone, so its "
                    f"{f['rows']} rows are lost; check for cleanup (vacuum, lifecycle rules) of the table"
                )
                raise SinkCommitError(msg) from exc
            as_delta = deltalake.Schema.from_arrow(found).to_json()
            if expected is None:
                expected, schema = as_delta, found
            elif as_delta != expected:
                msg = (
                    f"{self._where}: staged file {path!r} has schema {found.to_string()!r}, which "
                    f"differs from the table's; give DeltaSink(schema=...) so every subtask writes the same"
                )
                raise SinkError(msg)
        return schema if schema is not None else pa.schema(table.schema().to_arrow())

    def last_committed_checkpoint(self) -> int | None:
        """Return the table's transaction version for this job and sink (None if it never committed)."""
        table = self._table()
        version = table.transaction_version(self._app_id) if table is not None else None
        return version if version else None

    def restore_state(self, restored: RestoredState) -> None:
        """Refuse a restore behind the table; subtask 0 commits what is owed and deletes the rest.

        Raises:
            SinkAheadOfCheckpointError: the table holds a newer checkpoint's version.
            SinkCommitError: a committable the checkpoint owes has lost its manifest.
        """
        self._refuse_restore_behind(restored.checkpoint_id)
        if self.ctx.subtask_index != 0:
            return
        committed = self.last_committed_checkpoint() or 0
        manifests = self._manifests()
        for _, state in restored.operator_states:
            for n, committable in state or []:
                if n > committed and committable["manifest"] not in manifests:
                    msg = (
                        f"{self._where}: checkpoint {n} completed, but its manifest "
                        f"{committable['manifest']!r} ({committable['rows']} rows) is gone from "
                        f"{self._staging!r}, so its output is lost; rerun with --fresh"
                    )
                    raise SinkCommitError(msg)
        self.ctx.crash_point("during_commit_on_restore")
        if self.commit({"checkpoint_id": restored.checkpoint_id}):
            self.recommitted += 1
        self._delete_leftovers(restored=restored.checkpoint_id, keep=set(self._table_files()))

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        """Unused: ``restore_state`` deletes leftovers itself (see ``_delete_leftovers``)."""

    def _delete_leftovers(self, *, restored: int, keep: set[str]) -> None:
        """Delete what attempts other than this one left after checkpoint ``restored``.

        Deleted: 1. in-progress files; 2. manifests of later checkpoints and
        3. part files of later checkpoints that the table does not reference.
        """
        attempt = safe_name(self.ctx.attempt_id)
        doomed = []
        for name in self._list(self._staging):
            manifest = name[1:-4] if name.startswith(".") and name.endswith(".json.tmp") else name
            match = _INPROGRESS.match(name) or _MANIFEST.match(manifest)
            if match is None or match["attempt"] == attempt:
                continue
            if "checkpoint" not in match.groupdict() or int(match["checkpoint"]) > restored:
                doomed.append(posixpath.join(self._staging, name))
        for name in self._list(self._root):
            match = _PART.match(name)
            if (
                match is not None
                and match["sink"] == self._digest
                and match["attempt"] != attempt
                and int(match["checkpoint"]) > restored
                and name not in keep
            ):
                doomed.append(posixpath.join(self._root, name))
        if doomed:
            log.info("%s: deleting %d files of attempts that did not complete", self._where, len(doomed))
            self._fs.rm(doomed)

    def close(self) -> None:
        """Close the in-progress file without committing it; a later restore deletes it."""
        writer, self._parquet = self._parquet, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # close must not raise; the file is uncommitted anyway
                log.debug("closing %s failed", self._inprogress, exc_info=True)

    # ------------------------------------------------------------ helpers

    @property
    def _staging(self) -> str:
        return posixpath.join(self._root, STAGING, self._digest)

    def _table(self) -> Any:
        deltalake = _import_deltalake()
        try:
            return deltalake.DeltaTable(self._sink.uri, storage_options=self._sink.storage_options)
        except deltalake.exceptions.TableNotFoundError:
            return None

    def _table_files(self) -> list[str]:
        table = self._table()
        return [] if table is None else [posixpath.basename(p) for p in table.file_uris()]

    def _manifests(self) -> dict[str, int]:
        found = {}
        for name in self._list(self._staging):
            match = _MANIFEST.match(name)
            if match is not None:
                found[name] = int(match["checkpoint"])
        return found

    def _read_manifest(self, name: str) -> dict[str, Any]:
        return json.loads(self._fs.cat_file(posixpath.join(self._staging, name)))

    def _list(self, folder: str) -> list[str]:
        self._fs.invalidate_cache(folder)
        try:
            paths = self._fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return [posixpath.basename(p.rstrip("/")) for p in paths]

    def _write_atomically(self, name: str, data: bytes) -> None:
        """Write a manifest so that a reader sees all of it or nothing."""
        path = posixpath.join(self._staging, name)
        if not self._local:
            self._fs.pipe_file(path, data)
            return
        temp = posixpath.join(self._staging, f".{name}.tmp")
        with open(temp, "wb") as handle:
            handle.write(data)
            fsync_file(handle)
        os.replace(temp, path)
        fsync_dir(self._staging)
