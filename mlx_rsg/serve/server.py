"""`serve`: load the runs, open the port, answer until SIGTERM or Ctrl-C.

uvicorn runs the HTTP side on a thread of its own; the main thread is the scoring thread, the
only one that ever calls MLX. (With the OpenBLAS that mlx-rsg loads, MLX work on a second Python
thread can abort the process at exit.) On SIGTERM or Ctrl-C the server stops accepting, the
requests in flight are scored and answered, then it exits 0; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mlx_rsg.errors import UserError
from mlx_rsg.options import check_bounds
from mlx_rsg.serve.app import make_app
from mlx_rsg.serve.batcher import MicroBatcher
from mlx_rsg.serve.config import ServeConfig
from mlx_rsg.serve.examples import examples
from mlx_rsg.serve.runs import ServedRun, load_runs
from mlx_rsg.serve.scoring import score_batch
from mlx_rsg.tasks import parse_record


def serve(paths: list[str], cfg: ServeConfig, log=print) -> None:
    check(cfg)
    sock = bind(cfg.host, cfg.port)  # first: a busy port fails before minutes of loading
    runs = load_runs(paths, log)
    pages = examples(cfg.data)
    batcher = MicroBatcher(cfg.batch_window_ms / 1000, cfg.max_batch)
    for run in runs.values():
        run.predictor.batch_size = cfg.max_batch
        warm_up(run, pages)
    app = make_app(runs, batcher, cfg, pages)
    server = uvicorn.Server(uvicorn.Config(app, http=JsonErrorsH11, log_level="warning",
                                           access_log=False))  # fmt: skip
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http",
                            daemon=True)  # fmt: skip

    def stop(signum, frame) -> None:
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: do not wait for the requests in flight
        server.should_exit = True

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        while not server.started and http.is_alive():
            time.sleep(0.01)
        host, port = sock.getsockname()[:2]
        log(f"serving {', '.join(runs)} at http://{host}:{port}/  (API: /v1/predict, "
            "/v1/models, /docs; Ctrl-C stops)", flush=True)  # fmt: skip
        while http.is_alive():
            batch = batcher.next_batch(timeout=0.05)
            if batch:
                score_batch(runs[batch[0].run].predictor, batch)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    log("stopped", flush=True)


def check(cfg: ServeConfig) -> None:
    """The bounds ServeConfig declares (the CLI checked them as it parsed; a config made in
    Python is checked here)."""
    check_bounds(cfg)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise UserError(f"--host {host} --port {port}: cannot listen ({why})") from None


def warm_up(run: ServedRun, pages: dict) -> None:
    """Score each task's example once, so the first request does not pay for MLX's first-call
    work (compiling, allocating)."""
    for task in run.predictor.tasks:
        run.predictor.predictions(task, [parse_record(task, pages[task])])


class JsonErrorsH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), answering a request it cannot parse (a malformed
    request line or header, such as `Content-Length: -1`) with the API's one-line JSON error
    instead of uvicorn's plain text. One protocol wherever the server runs: uvicorn would pick
    httptools where it is installed, which answers such requests its own way."""

    def send_400_response(self, msg: str) -> None:
        error = ("request: not valid HTTP/1.1 (its request line or a header such as "
                 "Content-Length could not be parsed)")  # fmt: skip
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):  # fmt: skip
            self.transport.write(self.conn.send(event))
        self.transport.close()
