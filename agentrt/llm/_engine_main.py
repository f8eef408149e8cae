"""The local engine's child process: llama.cpp's HTTP server (through xllamacpp) on loopback.

Run by `agentrt.llm._engine.LocalEngine` as ``python -I <this file> --model ...`` (by path, so it
imports only the stdlib and xllamacpp, never the agentrt package); not meant to be started by
hand. ``xllamacpp.Server`` runs llama.cpp's own C++ HTTP server
(OpenAI-compatible ``/v1/chat/completions`` with SSE streaming, ``/health``, ``/v1/models``,
``/metrics``) on its own threads; this process only configures it, reports where it listens and
waits to be told to stop.

Protocol with the parent:

* stdout: exactly one JSON line once the model is loaded and the server answers, e.g.
  ``{"event": "ready", "base_url": "http://127.0.0.1:40861", "pid": 1234}``; nothing else is
  ever written there (a detached parent closes its end after reading it).
* stderr: llama.cpp's log and this module's (the parent points it at a file).
* SIGTERM or SIGINT: stop the server and exit 0.
* ``--watch-stdin``: stdin is a pipe whose write end only the parent holds; EOF on it means
  the parent died (even by SIGKILL), and the engine exits so that no orphan keeps 2 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time

log = logging.getLogger("agentrt.llm.engine_main")



def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="_engine_main.py")
    p.add_argument("--model", required=True, help="path of the GGUF file")
    p.add_argument("--alias", required=True, help="model name served (OpenAI 'model' field)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--ctx", type=int, default=8192, help="total context, tokens, shared by slots")
    p.add_argument("--parallel", type=int, default=4, help="parallel slots")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    return p.parse_args(argv)


def _configure(args: argparse.Namespace):  # -> xllamacpp.CommonParams
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    # One KV pool shared by all slots: a long planner prompt may use more than ctx/parallel
    # while the other slots are idle, instead of failing at a fixed per-slot share.
    params.kv_unified = True
    params.cont_batching = True
    params.cache_prompt = True  # reuse a slot's KV for a common prompt prefix
    # No RAM-backed cross-slot prompt cache: under concurrent requests it can restore an
    # unrelated finished conversation into a fresh slot, and the model then answers that one
    # (llama.cpp issue #27148; seen here as answers about the weather to a question about
    # arithmetic while other clients shared the engine). A slot's own prefix cache stays on.
    params.cache_ram_mib = 0
    params.cache_idle_slots = False
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    return params


def main(argv: list[str] | None = None) -> int:
    """Start the server, print the ready line, wait for a stop signal or parent death."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    try:
        import xllamacpp
    except ImportError as exc:
        log.error("xllamacpp is not importable (%s); fix: pip install 'agentrt[llm]'", exc)
        return 3

    try:
        server = xllamacpp.Server(_configure(args))  # returns once the model is loaded
    except Exception as exc:  # the C++ side raises RuntimeError with no detail; the log has it
        log.error("the llama.cpp server failed to start: %s (see the log lines above)", exc)
        return 2

    # llama.cpp installed its own SIGTERM/SIGINT handlers while starting; replace them so the
    # signal wakes this thread (through the wakeup fd) and shutdown happens in one place.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    base_url = server.listening_address
    log.info("serving %s as %r on %s (load %.2f s)", args.model, args.alias, base_url,
             time.perf_counter() - t0)
    sys.stdout.write(json.dumps({"event": "ready", "base_url": base_url, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    # A detached parent closes the read end after the ready line; never write there again.
    os.close(sys.stdout.fileno())

    watched = [wake_r]
    if args.watch_stdin:
        watched.append(sys.stdin.fileno())
    reason = "?"
    while reason == "?":
        ready, _, _ = select.select(watched, [], [])
        if wake_r in ready:
            signum = os.read(wake_r, 1)
            reason = f"signal {signum[0] if signum else '?'}"
        elif ready:
            if os.read(sys.stdin.fileno(), 4096) == b"":
                reason = "parent exited (stdin closed)"
    log.info("stopping: %s", reason)
    logging.shutdown()
    # Exit without llama.cpp's orderly shutdown: it holds the GIL while it waits for in-flight
    # generations and HTTP connections (seconds under load), and it persists nothing. The
    # kernel frees the memory and closes the listening socket at once; clients of in-flight
    # requests see the connection close, as they would anyway. (`server` stays referenced until
    # here: freeing it would run that orderly shutdown.)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
