"""Executors run a physical plan: ``local`` (one process) and, later, ``process``."""

from onceflow.engine.executors.local import ExecutionSettings, LocalExecutor

__all__ = ["ExecutionSettings", "LocalExecutor"]
