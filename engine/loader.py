"""Load a job file and call its ``build(**params)``, with errors that say what to fix."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from onceflow.engine.api import Job
from onceflow.engine.errors import JobLoadError


def parse_params(pairs: list[str]) -> dict[str, str]:
    """Turn ``["a=1", "b=x"]`` into ``{"a": "1", "b": "x"}``."""
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            msg = f"parameter {pair!r} is not NAME=VALUE"
            raise JobLoadError(msg)
        params[name.strip()] = value
    return params


@dataclass(frozen=True)
class LoadedJob:
    """A built job and the parameters that identify its run."""

    job: Job
    params: dict[str, str]
    """Every parameter of ``build()`` after its defaults were applied, as strings: the
    run's identity, so spelling a default out or reordering ``-p`` is the same run."""


def load_job(path: str, params: dict[str, str]) -> Job:
    """Import ``path`` and return ``build(**params)``; see :func:`load_job_file`."""
    return load_job_file(path, params).job


def load_job_file(path: str, params: dict[str, str]) -> LoadedJob:
    """Import ``path``, call ``build(**params)`` and return the job with its effective parameters.

    The module gets a name derived from the file so a worker process that
    loads the same file builds the same job (user functions never need
    pickling). The job file's folder goes first on ``sys.path`` (as for
    ``python job.py``) and stays there, so the job imports its sibling modules
    while loading and while running, also in forked workers.
    """
    if not os.path.isfile(path):
        msg = f"job file {path!r} not found"
        raise JobLoadError(msg)
    module_name = "onceflow_job_" + "".join(
        c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0]
    )
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        msg = f"job file {path!r} is not a Python file"
        raise JobLoadError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        msg = f"importing job file {path!r} raised {type(exc).__name__}: {exc}"
        raise JobLoadError(msg) from exc
    build = getattr(module, "build", None)
    if not callable(build):
        msg = f"job file {path!r} defines no build() function; add `def build(**params) -> Job`"
        raise JobLoadError(msg)
    _check_params(path, build, params)
    try:
        job = build(**params)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        msg = (
            f"build() in {path!r} raised {type(exc).__name__}: {exc} "
            f"(at {os.path.basename(where.filename)}:{where.lineno})"
        )
        raise JobLoadError(msg) from exc
    if not isinstance(job, Job):
        msg = f"build() in {path!r} returned {type(job).__name__}, not an engine.Job"
        raise JobLoadError(msg)
    return LoadedJob(job, _effective_params(build, params))


def _effective_params(build: Any, params: dict[str, str]) -> dict[str, str]:
    """Return ``params`` with ``build()``'s defaults applied, every value as ``str`` (as ``-p`` gives it)."""
    signature = inspect.signature(build)
    bound = signature.bind_partial(**params)
    bound.apply_defaults()
    effective: dict[str, str] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            effective.update({k: v if isinstance(v, str) else str(v) for k, v in value.items()})
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            effective[name] = value if isinstance(value, str) else str(value)
    return effective


def _check_params(path: str, build: Any, params: dict[str, str]) -> None:
    sig = inspect.signature(build)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [
        name for name, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        msg = f"unknown parameter {unknown[0]!r} for {path!r}; build() accepts: " + (
            ", ".join(accepted) or "no parameters"
        )
        raise JobLoadError(msg)
    missing = [
        name
        for name, p in sig.parameters.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in params
    ]
    if missing:
        msg = f"job file {path!r} needs parameter {missing[0]!r}: pass -p {missing[0]}=VALUE"
        raise JobLoadError(msg)
