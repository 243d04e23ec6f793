"""Every name under a job's checkpoint directory, and nothing else.

``CheckpointPaths`` is the only code that formats ``chk-<n>``, ``_metadata``
and ``<uid>-<subtask>.arrow``. Two kinds of path come out of it:

- absolute paths (``<root>/<job>/chk-<n>/...``), for fsspec calls;
- relative paths (``chk-<n>/<uid>-<subtask>.arrow``), relative to the job
  directory, as ``_metadata`` records them. A checkpoint may reference another
  checkpoint's file (and, with incremental checkpoints, files under
  ``<job>/shared/``), so relative paths say which directory a file lives in.

Layout::

    <checkpoint-dir>/<job>/chk-<n>/_metadata             written last, atomically
    <checkpoint-dir>/<job>/chk-<n>/<uid>-<subtask>.arrow
    <checkpoint-dir>/<job>/shared/<uid>-<subtask>-<n>-kg<start>-<base|delta>.arrow
                                                         incremental checkpoints: written by
                                                         checkpoint n, referenced by n and later ones
    <checkpoint-dir>/<job>/_lock                         held while a runner runs (local)
    <checkpoint-dir>/<job>/_lease                        held while a runner runs (object stores)
    <checkpoint-dir>/<job>/_checkpoint_ids               the highest checkpoint id ever started
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CheckpointPaths"]

_CHK_PREFIX = "chk-"
_CHK = re.compile(rf"^{_CHK_PREFIX}(\d+)$")
_METADATA = "_metadata"
_SHARED = "shared"
_SHARED_FILE = re.compile(r"^.+-\d+-(\d+)-kg\d+-(?:base|delta)\.arrow$")
_ID_MARK = "_checkpoint_ids"


@dataclass(frozen=True)
class CheckpointPaths:
    """Formats every path under ``<root>/<job>``; pure, no I/O."""

    SHARED = _SHARED
    """The name of the directory of shared files, relative to the job directory."""

    root: str
    job_name: str

    @property
    def job_dir(self) -> str:
        """The directory holding this job's checkpoints."""
        return f"{self.root.rstrip('/')}/{self.job_name}"

    # -- checkpoint directories ----------------------------------------------

    @staticmethod
    def checkpoint_dir_name(checkpoint_id: int) -> str:
        """``chk-<n>``: the name of checkpoint n's directory."""
        return f"{_CHK_PREFIX}{checkpoint_id}"

    def checkpoint_dir(self, checkpoint_id: int) -> str:
        """Absolute path of ``chk-<n>``."""
        return f"{self.job_dir}/{self.checkpoint_dir_name(checkpoint_id)}"

    @staticmethod
    def parse_checkpoint_id(name: str) -> int | None:
        """Return n for a ``chk-<n>`` directory name or path, else None."""
        m = _CHK.match(name.rstrip("/").rsplit("/", 1)[-1])
        return int(m.group(1)) if m else None

    # -- metadata ------------------------------------------------------------

    def metadata(self, checkpoint_id: int) -> str:
        """Absolute path of ``chk-<n>/_metadata``: the file whose presence makes n exist."""
        return f"{self.checkpoint_dir(checkpoint_id)}/{_METADATA}"

    def metadata_temp(self, checkpoint_id: int) -> str:
        """Where ``_metadata`` is written before the atomic rename on a local disk.

        Hidden (a leading dot), so it is never mistaken for ``_metadata`` itself.
        """
        return f"{self.checkpoint_dir(checkpoint_id)}/.{_METADATA}.tmp"

    # -- state files ---------------------------------------------------------

    @staticmethod
    def state_file_name(uid: str, subtask_index: int) -> str:
        """``<uid>-<subtask>.arrow``."""
        return f"{uid}-{subtask_index}.arrow"

    @classmethod
    def relative_state_file(cls, checkpoint_id: int, uid: str, subtask_index: int) -> str:
        """``chk-<n>/<uid>-<subtask>.arrow``: a state file as ``_metadata`` records it."""
        return f"{cls.checkpoint_dir_name(checkpoint_id)}/{cls.state_file_name(uid, subtask_index)}"

    def state_file(self, checkpoint_id: int, uid: str, subtask_index: int) -> str:
        """Absolute path of a state file."""
        return self.resolve(self.relative_state_file(checkpoint_id, uid, subtask_index))

    def resolve(self, relative: str) -> str:
        """Absolute path of a path relative to the job directory (as handles record them)."""
        return f"{self.job_dir}/{relative}"

    # -- shared files (incremental checkpoints) ---------------------------------

    @property
    def shared_dir(self) -> str:
        """Absolute path of ``shared/``, the files incremental checkpoints share."""
        return f"{self.job_dir}/{_SHARED}"

    @staticmethod
    def relative_shared_file(
        uid: str, subtask_index: int, checkpoint_id: int, key_group_start: int, kind: str
    ) -> str:
        """``shared/<uid>-<subtask>-<n>-kg<start>-<kind>.arrow``: a segment's base or delta, written by n."""
        return f"{_SHARED}/{uid}-{subtask_index}-{checkpoint_id}-kg{key_group_start}-{kind}.arrow"

    @staticmethod
    def shared_file_checkpoint(relative: str) -> int | None:
        """Return the id of the checkpoint that wrote a shared file (``shared/...``), else None."""
        if not relative.startswith(f"{_SHARED}/"):
            return None
        m = _SHARED_FILE.match(relative[len(_SHARED) + 1 :])
        return int(m.group(1)) if m else None

    @classmethod
    def names_in_checkpoint_dir(
        cls, checkpoint_id: int, relative: set[str] | frozenset[str]
    ) -> frozenset[str]:
        """Return the file names of those ``relative`` paths that lie in ``chk-<n>``.

        Deleting a checkpoint directory while keeping the files that other
        checkpoints reference needs their names within that directory.
        """
        prefix = f"{cls.checkpoint_dir_name(checkpoint_id)}/"
        return frozenset(p[len(prefix) :] for p in relative if p.startswith(prefix))

    # -- checkpoint id high-water mark ----------------------------------------

    @property
    def checkpoint_id_mark(self) -> str:
        """``_checkpoint_ids``: the highest checkpoint id this run ever started.

        Written when a checkpoint is triggered, so an id is never reused, even
        after its ``chk-<n>`` was aborted, damaged or deleted.
        """
        return f"{self.job_dir}/{_ID_MARK}"

    @property
    def checkpoint_id_mark_temp(self) -> str:
        """Where ``_checkpoint_ids`` is written before the atomic rename on a local disk (hidden)."""
        return f"{self.job_dir}/.{_ID_MARK}.tmp"

    # -- run lock ------------------------------------------------------------

    @property
    def lock(self) -> str:
        """The run lock file."""
        return f"{self.job_dir}/_lock"

    @property
    def lease(self) -> str:
        """The run lease object on object stores: owner token, host, pid and expiry."""
        return f"{self.job_dir}/_lease"
