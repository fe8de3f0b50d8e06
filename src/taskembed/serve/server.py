"""Running the app under uvicorn: connection limits, header deadline, draining shutdown, no secrets in logs.

uvicorn alone has no deadline for request headers (a client sending one byte every few seconds holds
its connection forever), answers SIGTERM by cancelling whatever is still running at the grace timeout
(a plain-text 500), and logs query strings. Here: a connection whose next request's headers do not
arrive within `read_timeout_s` is closed; on SIGTERM the app refuses new work and reports draining on
/health, running requests finish, and those still unfinished shortly before `shutdown_timeout_s` get a
503 JSON answer; the access log drops query strings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn

# Time kept between failing unfinished requests and uvicorn's hard cut, for the answers to go out.
ABORT_MARGIN_S = 1.0


class RedactQuery(logging.Filter):
    """uvicorn's access log records (client, method, path?query, version, status): keep the path only.

    None of the routes take query parameters, but clients do put keys there (`?api_key=...`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<redacted>", *args[3:])
        return True


def redact_access_log() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuery) for f in logger.filters):
        logger.addFilter(RedactQuery())


def header_deadline(base: type, timeout_s: float) -> type:
    """`base` (a uvicorn HTTP protocol class) closing connections whose request headers come too slowly."""

    class Protocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self.loop.call_later(timeout_s, self._expire, self.cycle)

        def _expire(self, cycle: Any) -> None:
            # A new request's headers make a new cycle; the same one, finished (or none), means none came.
            if self.transport.is_closing() or self.cycle is not cycle:
                return
            if cycle is None or cycle.response_complete:
                self.transport.close()

    Protocol.__name__ = f"HeaderDeadline{base.__name__}"
    return Protocol


class Server(uvicorn.Server):
    """uvicorn.Server that drains the app's batcher on shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, shutdown_timeout_s: float) -> None:
        super().__init__(config)
        self.shutdown_timeout_s = shutdown_timeout_s

    async def shutdown(self, sockets=None) -> None:
        batcher = getattr(getattr(self.config.loaded_app, "state", None), "batcher", None)
        if batcher is None:  # the app is wrapped (proxy headers, ...): find it through the chain
            app = self.config.loaded_app
            while batcher is None and hasattr(app, "app"):
                app = app.app
                batcher = getattr(getattr(app, "state", None), "batcher", None)
        if batcher is not None:
            batcher.drain()
            wait = max(0.0, self.shutdown_timeout_s - ABORT_MARGIN_S)
            asyncio.get_running_loop().call_later(
                wait, batcher.abort, f"the server is shutting down (after {self.shutdown_timeout_s:g} s)")
        await super().shutdown(sockets)


def config(app, host: str, port: int, *, log_level: str = "info", shutdown_timeout_s: float = 30.0,
           read_timeout_s: float = 30.0, max_connections: int = 1024, keep_alive_s: int = 5,
           max_header_bytes: int = 65536) -> uvicorn.Config:
    """uvicorn settings for `app` with the limits set (see the README's server section)."""
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, limit_concurrency=max_connections,
                         timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=int(shutdown_timeout_s) + 1,
                         h11_max_incomplete_event_size=max_header_bytes)
    cfg.load()
    cfg.http = header_deadline(cfg.http_protocol_class, read_timeout_s)
    cfg.http_protocol_class = cfg.http
    redact_access_log()
    return cfg


def serve(app, host: str, port: int, shutdown_timeout_s: float = 30.0, **kw: Any) -> None:
    """Run `app` until SIGTERM/SIGINT, then drain (blocking)."""
    cfg = config(app, host, port, shutdown_timeout_s=shutdown_timeout_s, **kw)
    Server(cfg, shutdown_timeout_s).run()
