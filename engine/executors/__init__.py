"""Executors run a physical plan: ``local`` (one process) and, later, ``process``."""

from engine.executors.local import ExecutionSettings, LocalExecutor

__all__ = ["ExecutionSettings", "LocalExecutor"]
