"""Run llama.cpp's real HTTP server (via the ``xllamacpp`` wheel) for tests.

xllamacpp embeds llama.cpp's C++ server in-process but has no command line, so this
launcher fills its ``CommonParams``, starts the server, waits for ``GET /health`` (and
``GET /slots``) to answer 200, prints exactly one line ``READY http://HOST:PORT`` to
stdout and serves until SIGTERM or SIGINT (or until its parent process dies), then
shuts down: exit code 0 when llama.cpp stopped cleanly, 1 when requests still in
flight kept it from stopping within ``--shutdown-timeout`` (their clients then see the
connection close).

    python -m tests.fakes.llama_server --model tiny.gguf --port 0 --parallel 4

Everything llama.cpp logs goes to stderr: stdout carries only the READY line.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

import xllamacpp

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_READY_DEADLINE_S = 30.0
_PORT_ATTEMPTS = 5


def _free_port(host: str) -> int:
    # llama.cpp binds the exact port it is given (0 is not resolved back to the caller),
    # so ask the kernel for a free one; the tiny bind race is covered by retrying.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def build_params(args: argparse.Namespace, port: int) -> Any:
    """Return xllamacpp ``CommonParams`` for the parsed command line."""
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = port
    params.model_alias = {args.alias}  # a set: llama.cpp allows several aliases
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx  # total context, split evenly across the parallel slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_threads_http = args.http_threads
    params.ui = False
    params.endpoint_metrics = args.metrics  # GET /metrics, Prometheus text (llamacpp:…)
    if args.embedding:
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    return params


def _start(args: argparse.Namespace) -> tuple[Any, str]:
    """Start the server (blocks until the model is loaded); return it and its URL."""
    for attempt in range(_PORT_ATTEMPTS):
        port = args.port or _free_port(args.host)
        try:
            server = xllamacpp.Server(build_params(args, port))
        except RuntimeError:
            # A fixed port that fails to bind is the caller's problem; a port we picked
            # ourselves may have been taken in the meantime, so pick another.
            if args.port or attempt == _PORT_ATTEMPTS - 1:
                raise
            continue
        return server, f"http://{args.host}:{port}"
    raise AssertionError("unreachable")


def _answers_200(url: str) -> bool:
    try:
        # url is the http:// address this launcher just bound
        with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        # 503 while the model is loading, or refused before the listener is up
        return False


def _wait_ready(url: str, deadline_s: float) -> None:
    """Wait for /health, then for /slots, which only llama.cpp's task loop answers.

    Server() returns before its thread has entered the task loop, and the loop's start
    clears an earlier stop request: a server stopped in that window never stops. Seen
    under load; an answer from /slots proves the loop runs.
    """
    deadline = time.monotonic() + deadline_s
    for path in ("/health", "/slots"):
        while not _answers_200(url + path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}{path} did not answer 200 within {deadline_s} s")
            time.sleep(0.02)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help="path of a GGUF model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--parallel", type=int, default=4, help="slots (concurrent requests)")
    parser.add_argument("--ctx", type=int, default=2048, help="total context, all slots")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for inference")
    parser.add_argument(
        "--http-threads", type=int, default=-1, help="HTTP worker threads (-1: llama.cpp's)"
    )
    parser.add_argument("--alias", default="tiny", help="model name the server reports")
    parser.add_argument("--embedding", action="store_true", help="serve /v1/embeddings")
    parser.add_argument("--metrics", action="store_true", help="serve GET /metrics")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=2.0,
        help="seconds to wait for llama.cpp to stop before exiting hard (code 1)",
    )
    return parser.parse_args(argv)


def _claim_stdout() -> TextIO:
    """Return a private stream for the READY line; point fd 1 at stderr.

    Native code may print to fd 1; redirecting it keeps stdout down to the one line
    the parent process parses.
    """
    sys.stdout.flush()
    ready_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return ready_out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    ready_out = _claim_stdout()
    # Block the stop signals before llama.cpp starts its threads (they inherit the
    # mask): llama.cpp installs its own SIGINT/SIGTERM handlers, which would stop its
    # loop behind our back and exit(1) on a second signal. With the signals blocked
    # everywhere, this thread alone receives them, via sigtimedwait, and shuts down.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    parent = os.getppid()
    server, url = _start(args)
    try:
        _wait_ready(url, _READY_DEADLINE_S)
        ready_out.write(f"READY {url}\n")
        ready_out.flush()
        print(f"llama_server: serving {args.model} at {url}", file=sys.stderr, flush=True)
        while signal.sigtimedwait(_STOP_SIGNALS, 1.0) is None:
            # A killed test run must not leave servers behind: exit once orphaned.
            if os.getppid() != parent:
                print("llama_server: parent exited, stopping", file=sys.stderr, flush=True)
                break
    finally:
        # llama.cpp abandons in-flight requests on shutdown, but their HTTP handlers keep
        # waiting for results while the client stays connected, so the join below can
        # hang (real llama-server hangs the same way). faulthandler's watchdog is a C
        # thread, so it fires even though ~Server blocks while holding the GIL: it dumps
        # the stack to stderr and exits with code 1, closing those connections.
        faulthandler.dump_traceback_later(args.shutdown_timeout, exit=True)
        # Dropping the last reference runs ~Server: it terminates llama.cpp's main
        # loop, stops the HTTP listener and joins the server thread.
        del server
        faulthandler.cancel_dump_traceback_later()
    print("llama_server: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
