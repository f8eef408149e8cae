"""Turn a Python callable (or `Tool`) and its arguments into a request for the sandbox worker."""

from __future__ import annotations

import base64
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from agentrt.errors import InvalidArguments, SandboxError
from agentrt.tools import Tool

__all__ = ["WORKER_FILE", "needed_paths", "worker_request"]

#: The worker script, run by path (see `agentrt.sandbox._worker`).
WORKER_FILE = str(Path(__file__).with_name("_worker.py"))


def _module_file(fn: Callable[..., Any]) -> str | None:
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        try:
            path = inspect.getsourcefile(fn)
        except TypeError:
            path = None
    return os.path.abspath(path) if path else None


def worker_request(target: Tool | Callable[..., Any], args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The worker's request: how to find ``target`` and its JSON ``args``.

    A function reachable by ``module.qualname`` is sent by name (the worker imports it, or loads
    its file by path); a lambda, closure or other local function is sent as a cloudpickle.

    Raises:
        InvalidArguments: ``target`` is a `Tool` and ``args`` do not validate.
        SandboxError: the callable has no importable name and cloudpickle is not installed, or
            the arguments are not JSON-serialisable.
    """
    args = dict(args or {})
    fn: Callable[..., Any]
    if isinstance(target, Tool):
        target.validate_args(args)  # fail here, with the schema's message, before any spawn
        if target.fn is None:
            raise InvalidArguments(f"tool {target.name!r} has no function to run")
        fn = target.fn
    else:
        fn = target
    try:
        json_args = to_jsonable_python(args)
    except Exception as exc:
        raise SandboxError(f"arguments of a sandboxed call must be JSON-serialisable: {exc}") from exc
    req: dict[str, Any] = {"args": json_args,
                           "sys_path": [p for p in sys.path if p and os.path.isdir(p)]}
    qual = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if qual and "<" not in qual and module:
        req.update(module=module, qualname=qual, file=_module_file(fn))
        if getattr(sys.modules.get(module), "__agentrt_standalone__", False):
            # the module imports only the stdlib: load its file, skipping its package's imports
            req["standalone"] = True
        if module != "__main__" or req["file"]:
            return req
    try:
        import cloudpickle
    except ImportError:
        raise SandboxError(
            f"{qual or fn!r} is a local function or lambda: sending it to a sandbox needs cloudpickle "
            "(pip install 'agentrt[sandbox]'), or define it at module level") from None
    return {"args": json_args, "sys_path": req["sys_path"],
            "pickle": base64.b64encode(cloudpickle.dumps(fn)).decode()}


def needed_paths(req: Mapping[str, Any]) -> list[Path]:
    """Host paths the worker must see: the module's file and this Python's sys.path."""
    paths = [Path(p) for p in req.get("sys_path", [])]
    if req.get("file"):
        paths.append(Path(req["file"]).parent)
    return paths
