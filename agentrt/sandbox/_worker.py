"""The worker that runs one Python callable inside a sandbox and returns its result as JSON.

Protocol: the request is one JSON object on stdin; the worker keeps the original stdout (fd 1)
for its one-line JSON answer and points fd 1 at stderr, so whatever the tool prints goes to the
call's stderr instead of corrupting the answer. The request names the callable by module path
(``{"module", "qualname", "file"}``; ``file`` is loaded by path when the module cannot be
imported by name, e.g. ``__main__`` or a file loaded with importlib) or carries it as a
cloudpickle (``{"pickle": base64}``, for lambdas and closures); a module that sets
``__agentrt_standalone__ = True`` (it imports only the stdlib) is loaded from its file at once,
without importing its package; ``args`` are JSON keyword
arguments, re-validated when the name resolves to an `agentrt.tools.Tool`.

Answer: ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": "<last traceback line>",
"traceback": "..."}``.

Run as ``python -s .../agentrt/sandbox/_worker.py`` (by file, so that neither ``agentrt`` nor
``agentrt.sandbox`` is imported unless the tool needs them: Python starts in ~20 ms, agentrt's
imports would add ~0.4 s), and only inside a sandbox: it runs what it is sent.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from typing import Any


def _resolve(req: dict[str, Any]) -> Any:
    if "pickle" in req:
        import cloudpickle

        return cloudpickle.loads(base64.b64decode(req["pickle"]))
    module = None
    name = req.get("module")
    if name and name != "__main__" and not req.get("standalone"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = None
    if module is None:
        path = req.get("file")
        if not path:
            raise ImportError(f"cannot import {name!r} and no file to load it from")
        # a run name other than __main__, so the file's `if __name__ == "__main__":` stays idle
        spec = importlib.util.spec_from_file_location("agentrt_sandboxed_module", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in req["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value)


def main() -> None:
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # this file's directory: its private modules must not shadow the tool's
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        req = json.loads(sys.stdin.read())
        for p in reversed(req.get("sys_path", [])):
            if p not in sys.path:
                sys.path.insert(0, p)
        target = _resolve(req)
        args = req.get("args") or {}
        fn = target
        # agentrt.tools (pydantic, griffe) costs ~0.2 s to import: only when the target's module did
        tools = sys.modules.get("agentrt.tools")
        if tools is not None and isinstance(target, tools.Tool):
            args = target.validate_args(args)
            fn = target.fn
        value = fn(**args)
        if inspect.isawaitable(value):
            import anyio

            async def _await() -> Any:
                return await value

            value = anyio.run(_await)
        answer = {"ok": True, "value": _jsonable(value)}
    except BaseException as exc:  # the tool's failure is a value; report its last line
        tb = traceback.format_exc()
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]}
    sys.stdout.flush()
    out.write(json.dumps(answer, default=str))
    out.write("\n")
    out.flush()


if __name__ == "__main__":
    main()
