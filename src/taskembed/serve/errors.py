"""Error answers: OpenAI's shape ({"error": {"message", "type", "param", "code"}}) plus Jina's "detail".

Every body is rendered ASCII-only and without NaN, so an answer is valid JSON whatever the request held
(a lone surrogate echoed in a message cannot break the UTF-8 encoding).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.responses import Response

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               408: "timeout_error", 413: "invalid_request_error", 415: "invalid_request_error",
               503: "server_overloaded"}

# For the OpenAPI docs: what every error body looks like.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}},
        "detail": {"type": "string"},
    },
}


class ApiError(Exception):
    """A refusal with its HTTP status; raised in handlers, answered by the app's exception handler."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def dumps(body: Any, ascii_only: bool = False) -> bytes:
    """Strict JSON bytes: non-finite floats become null, text that UTF-8 cannot hold is \\u-escaped."""
    try:
        text = json.dumps(body, ensure_ascii=ascii_only, allow_nan=False, separators=(",", ":"), default=str)
    except ValueError:  # NaN or infinity somewhere (e.g. a kept index column)
        text = json.dumps(_finite(body), ensure_ascii=ascii_only, allow_nan=False, separators=(",", ":"),
                          default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it rather than fail the answer
        return json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": error_type(status), "param": param, "code": code},
            "detail": message}
    return Response(dumps(body, ascii_only=True), status_code=status, headers=headers,
                    media_type="application/json")
