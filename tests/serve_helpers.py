"""Shared by the server tests: a gate that holds the batcher's worker inside a forward pass, and one real
uvicorn (taskembed.serve.server) on a free 127.0.0.1 port in a thread."""

from __future__ import annotations

import socket
import threading
import time

from taskembed.serve import server as srv_mod


class Gate:
    """Holds the batcher's worker thread inside its next forward pass until opened; records rows per pass."""

    def __init__(self, batcher) -> None:
        self.open, self.entered, self.rows = threading.Event(), threading.Event(), []
        original = batcher._forward

        def gated(ids, task_ids):
            self.entered.set()
            self.open.wait(10)
            self.rows.append(len(ids))
            return original(ids, task_ids)

        batcher._forward = gated


def start_server(app, shutdown_timeout_s: float = 10, read_timeout_s: float = 30, wait_s: float = 30):
    """(server, thread, port), once uvicorn is accepting connections; stop with server.should_exit = True."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = srv_mod.config(app, "127.0.0.1", port, log_level="warning", shutdown_timeout_s=shutdown_timeout_s,
                         read_timeout_s=read_timeout_s)
    srv = srv_mod.Server(cfg, shutdown_timeout_s)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + wait_s
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return srv, thread, port
