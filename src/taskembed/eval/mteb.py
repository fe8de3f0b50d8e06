"""A wrapper that lets the ``mteb`` package (optional, never imported unless needed) evaluate a taskembed
model, choosing the LoRA adapter per task the way MTEB's own jina-embeddings-v3 entry does.

Checked against mteb 2.26 (``mteb/models/model_implementations/jina_models.py``, ``abs_encoder.get_prompt_name``
and ``models_protocols.EncoderProtocol``)::

    import mteb
    from taskembed.eval.mteb import TaskembedMTEBWrapper
    model = TaskembedMTEBWrapper.load("runs/final", dimensions=1024)
    mteb.evaluate(model, mteb.get_tasks(tasks=["STS12"]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from taskembed.eval import metrics

# The ``model_prompts`` of mteb's jinaai/jina-embeddings-v3 ModelMeta (revision 215a6e12...): keys are
# "<task type>-<prompt type>" or "<task type>", values our adapter names.
MTEB_ADAPTERS: dict[str, str] = {
    "Retrieval-query": "retrieval.query",
    "Retrieval-document": "retrieval.passage",
    "Clustering": "separation",
    "Classification": "classification",
    "STS": "text-matching",
    "PairClassification": "classification",
    "BitextMining": "text-matching",
    "MultilabelClassification": "classification",
    "Reranking": "separation",
    "Summarization": "text-matching",
}

# Paper §5.2: these retrieval tasks were run with text-matching (symmetric duplicate-question / argument
# retrieval). Not in mteb's entry; add them with ``paper_overrides=True``.
PAPER_TASK_ADAPTERS: dict[str, str] = {
    "ArguAna": "text-matching",
    "QuoraRetrieval": "text-matching",
    **{
        f"CQADupstack{s}Retrieval": "text-matching"
        for s in (
            "Android",
            "English",
            "Gaming",
            "Gis",
            "Mathematica",
            "Physics",
            "Programmers",
            "Stats",
            "Tex",
            "Unix",
            "Webmasters",
            "Wordpress",
        )  # fmt: skip
    },
}


def _value(prompt_type: Any) -> str | None:
    if prompt_type is None:
        return None
    return str(getattr(prompt_type, "value", prompt_type))


def adapter_for(
    task_type: str | None,
    prompt_type: Any = None,
    task_name: str | None = None,
    table: Mapping[str, str] = MTEB_ADAPTERS,
) -> str | None:
    """mteb's prompt lookup order: task name + prompt type, task name, task type + prompt type, task type,
    prompt type; None when nothing matches (the model then runs without an adapter, as mteb's wrapper)."""
    pt = _value(prompt_type)
    for key in (
        f"{task_name}-{pt}" if task_name and pt else None,
        task_name,
        f"{task_type}-{pt}" if task_type and pt else None,
        task_type,
        pt,
    ):
        if key and key in table:
            return table[key]
    return None


def _task_type_from_name(task_name: str) -> str | None:
    try:
        import mteb
    except ImportError:
        return None
    try:
        return str(mteb.get_task(task_name).metadata.type)
    except Exception:  # unknown task name: fall back to no adapter rather than fail the run
        return None


class TaskembedMTEBWrapper:
    """mteb encoder protocol (v2 ``encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type)``
    and v1 ``encode(sentences, task_name=..., prompt_type=...)``) around a taskembed Embedder."""

    def __init__(
        self,
        model: Any,
        dimensions: int | None = None,
        *,
        name: str = "taskembed/model",
        batch_size: int = 32,
        adapters: Mapping[str, str] | None = None,
        paper_overrides: bool = False,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self.name = name if "/" in name else f"taskembed/{name}"
        self.batch_size = batch_size
        table = dict(MTEB_ADAPTERS)
        if paper_overrides:
            table.update(PAPER_TASK_ADAPTERS)
        table.update(adapters or {})
        self.adapters = table

    @classmethod
    def load(cls, path: str, dimensions: int | None = None, **kwargs: Any) -> TaskembedMTEBWrapper:
        import taskembed

        return cls(taskembed.load(path), dimensions, name=kwargs.pop("name", str(path).rstrip("/")), **kwargs)

    def _texts(self, inputs: Any) -> list[str]:
        if isinstance(inputs, str):
            return [inputs]
        items = list(inputs)
        if items and isinstance(items[0], Mapping):
            # a DataLoader of BatchedInput dicts, as mteb v2 passes
            return [str(t) for batch in items for t in batch["text"]]
        return [str(t) for t in items]

    def encode(
        self,
        inputs: Iterable[Any],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        task_name: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        if task_metadata is not None:
            ttype, tname = getattr(task_metadata, "type", None), getattr(task_metadata, "name", None)
        else:
            tname = task_name
            ttype = None
            if tname and tname not in self.adapters and not any(k.startswith(f"{tname}-") for k in self.adapters):
                ttype = _task_type_from_name(tname)
        adapter = adapter_for(ttype, prompt_type, tname, self.adapters)
        texts = self._texts(inputs)
        batch_size = int(kwargs.get("batch_size", self.batch_size))
        if not texts:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        emb = self.model.encode(texts, task=adapter, dimensions=self.dimensions, batch_size=batch_size)
        return np.asarray(emb, dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        a = np.atleast_2d(np.asarray(embeddings1, dtype=np.float32))
        b = np.atleast_2d(np.asarray(embeddings2, dtype=np.float32))
        return metrics.cosine_matrix(a, b)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        a = np.atleast_2d(np.asarray(embeddings1, dtype=np.float32))
        b = np.atleast_2d(np.asarray(embeddings2, dtype=np.float32))
        return metrics.paired_cosine(a, b).astype(np.float32)

    @property
    def mteb_model_meta(self) -> Any:
        from mteb.models.model_meta import ModelMeta

        return ModelMeta.create_empty(
            {
                "name": self.name,
                "revision": "local",
                "embed_dim": self.dimensions,
                "similarity_fn_name": "cosine",
                "framework": ["PyTorch"],
                "use_instructions": True,
                "open_weights": True,
            }
        )
