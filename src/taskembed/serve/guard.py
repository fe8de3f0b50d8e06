"""ASGI middleware in front of every route: the checks that must come before the body is read or parsed.

In order: the API key (401 before a byte of the body is read), the content type (415), the body size
(413, from Content-Length or while reading) and the body read time (408), then per-route metrics. Any
exception that escapes a handler becomes a 500 JSON error, never a plain-text page.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from .errors import error_response
from .metrics import Metrics

OPEN_PATHS = ("/health",)  # liveness and readiness need no key
METRIC_ROUTES = ("/v1/embeddings", "/v1/late_chunking", "/v1/search", "/v1/models", "/health", "/metrics")
JSON_TYPES = ("application/json",)
log = logging.getLogger("taskembed.serve")


def key_ok(authorization: str, keys: list[bytes]) -> bool:
    """Bearer token check: every key compared in constant time, so timing reveals nothing."""
    scheme, _, token = authorization.partition(" ")
    token_b = token.strip().encode("utf-8", "replace")
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(token_b, k)
    return scheme.lower() == "bearer" and ok


def _json_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or media.endswith("+json")


class Guard:
    def __init__(self, app, keys: list[bytes], max_body_bytes: int, read_timeout_s: float, metrics: Metrics) -> None:
        self.app, self.keys, self.max_body_bytes = app, keys, max_body_bytes
        self.read_timeout_s, self.metrics = read_timeout_s, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in METRIC_ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
        start = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        async def answer(resp) -> None:
            await resp(scope, receive, send_wrapped)

        try:
            headers = {k.lower(): v for k, v in scope.get("headers") or []}
            if self.keys and path not in OPEN_PATHS:
                auth = headers.get(b"authorization", b"").decode("latin-1")
                if not key_ok(auth, self.keys):
                    return await answer(error_response(
                        401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                        code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
            if scope.get("method") not in ("POST", "PUT", "PATCH"):
                return await self.app(scope, receive, send_wrapped)
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if ctype and not _json_content_type(ctype):
                return await answer(error_response(
                    415, f"unsupported content type {ctype[:100]!r}: send a JSON body with "
                         "`Content-Type: application/json`", code="unsupported_media_type"))
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                return await answer(self._too_large())
            chunks, size = [], 0
            deadline = time.monotonic() + self.read_timeout_s
            while True:
                try:
                    msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    return await answer(error_response(
                        408, f"the request body did not arrive within {self.read_timeout_s:g} s",
                        code="timeout", headers={"Connection": "close"}))
                if msg["type"] == "http.disconnect":
                    return
                chunks.append(msg.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body_bytes:
                    return await answer(self._too_large())
                if not msg.get("more_body", False):
                    break
            body, replayed = b"".join(chunks), False
            del chunks

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send_wrapped)
        except Exception as e:  # a bug, not bad input: still a JSON answer
            log.exception("unhandled error on %s", path)
            if not status["sent"]:
                await answer(error_response(500, f"internal error: {type(e).__name__}", code="internal_error"))
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _too_large(self):
        return error_response(413, f"request body too large: the limit is {self.max_body_bytes} bytes",
                              code="body_too_large")
