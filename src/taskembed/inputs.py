"""What an embedding request may hold, checked in one place for every way in: `Embedder.encode`, the
server's /v1/embeddings and /v1/late_chunking, and /v1/search.

A bad request raises InputError, a ValueError that names the field (`param`, the server's error field) and
says what is allowed; the server answers it with a 400, `encode` lets it through.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class InputError(ValueError):
    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


def check_texts(texts: object, param: str = "texts", *, one_string: bool = False, empty_strings: bool = True,
                max_inputs: int | None = None) -> list[str]:
    """The texts as a list. one_string: a single string stands for a list of one (the HTTP APIs' rule);
    empty_strings: whether "" may be embedded; max_inputs: the most texts one request may hold."""
    if isinstance(texts, str):
        if not one_string:
            raise InputError(f"{param} must be a list of strings, not one string (wrap it: [text])", param)
        texts = [texts]
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise InputError(f"{param} must be a list of strings, got {type(texts).__name__}", param)
    texts = list(texts)
    if not texts:
        raise InputError(f"{param} is empty: give at least one string", param)
    if max_inputs is not None and len(texts) > max_inputs:
        raise InputError(f"too many inputs: {len(texts)} > {max_inputs} per request", param)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"{param} must all be strings; item {bad} is {type(texts[bad]).__name__}", param)
    if not empty_strings:
        empty = next((i for i, t in enumerate(texts) if not t), None)
        if empty is not None:
            raise InputError(f"{param}[{empty}] is an empty string", param)
    return texts


def check_tasks(task: str | Sequence[str | None] | None, n: int, known: Sequence[str], param: str = "task",
                per: str = "text") -> list[str | None]:
    """One task (or None: the base weights) per text: a single task applies to all n."""
    tasks = [task] * n if task is None or isinstance(task, str) else list(task)
    if len(tasks) != n:
        raise InputError(f"got {len(tasks)} tasks for {n} {per}s; give one task per {per}", param)
    bad = next((t for t in tasks if t is not None and (not isinstance(t, str) or t not in known)), None)
    if bad is not None:
        raise InputError(f"unknown task {bad!r}; allowed tasks: {', '.join(known)}", param, "invalid_task")
    return tasks


def check_dimensions(dimensions: object, allowed: Sequence[int], default: int, param: str = "dimensions") -> int:
    """A Matryoshka size: one of `allowed`; None means `default`."""
    if dimensions is None:
        return default
    if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer):
        raise InputError(f"{param} must be an int, got {type(dimensions).__name__}", param)
    if int(dimensions) not in allowed:
        raise InputError(f"{param}={dimensions} not allowed; allowed: {list(allowed)}", param)
    return int(dimensions)
