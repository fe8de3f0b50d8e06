"""Checks that run before tokenising, so oversized or broken input costs neither time nor memory.

Character bounds. A token covers at most `max_piece_chars` characters of the input, the longest piece
in the vocabulary (16 for XLM-R's). So a text with more than `max_tokens x max_piece_chars` characters
has more than `max_tokens` tokens, except where the tokenizer's normaliser drops or merges characters
(runs of spaces collapse to one, control characters vanish, NFKC composes some sequences): no
characters-per-token ratio bounds those, so no character bound is exact. The server therefore treats
`max_tokens x max_piece_chars` as its own limit, named in the error, which refuses nothing but such
padding. With truncation on, a longer text is cut to that many characters first (at a whitespace near
the end when there is one, so every kept word tokenises as in the full text).
"""

from __future__ import annotations

import re

from .errors import ApiError

_SURROGATE = re.compile("[\ud800-\udfff]")
# A cut lands on whitespace in the last 1/CUT_SLACK of the allowed characters when it can.
CUT_SLACK = 8
WHITESPACE = " \n\t\r\u3000"  # where the pre-tokenizer splits words (after normalisation)


def check_unicode(texts: list[str], param: str) -> None:
    """Refuse lone surrogates (JSON's "\\ud800" without its pair): not text, and the tokenizer cannot take them."""
    for i, t in enumerate(texts):
        m = _SURROGATE.search(t)
        if m is not None:
            where = f"{param}[{i}]" if len(texts) > 1 else param
            raise ApiError(400, f"{where} holds a lone UTF-16 surrogate (\\u{ord(m.group()):04x} at character "
                                f"{m.start()}): not valid Unicode text", param, "invalid_unicode")


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at the last whitespace in the final stretch if any."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    tail_start = limit - max(1, limit // CUT_SLACK)
    last = max(head.rfind(c, tail_start) for c in WHITESPACE)
    return head[:last] if last > 0 else head


def check_chars(texts: list[str], per_text: int, per_request: int, truncate: bool, param: str = "input",
                per_text_what: str = "per text", request_what: str = "max-request-tokens") -> list[str]:
    """Texts within the character bounds (cut when `truncate`), or an ApiError naming the bound."""
    if truncate:
        texts = [cut(t, per_text) for t in texts]
    else:
        for i, t in enumerate(texts):
            if len(t) > per_text:
                raise ApiError(400, f"{param}[{i}] has {len(t)} characters, more than the {per_text} allowed "
                                    f"{per_text_what} (send truncate=true to cut)", param, "too_long")
    total = sum(len(t) for t in texts)
    if total > per_request:
        raise ApiError(413, f"the request has {total} characters of text, more than the {per_request} allowed "
                            f"per request ({request_what} x the longest token's characters)", param,
                       "request_too_large")
    return texts
