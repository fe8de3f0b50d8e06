"""The task adapters of jina-embeddings-v3, one record per adapter kind.

Everything else that depends on a kind reads it from here: the model's adapter list and default prefixes
(`config`), which adapters the evaluation harness uses per task type (`eval.tasks`), and the development
checks (`taskembed_train.devtasks`). How a kind trains (its losses and Table A1 settings) is its config
file, taskembed_train/configs/adapters-KIND.toml. Adding a kind means one record here and that one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AdapterKind:
    name: str
    query: str  # the adapter of a record's first text (the query side)
    document: str  # the adapter of the other texts; the same as `query` for symmetric kinds
    serves: tuple[str, ...]  # evaluation task types scored with this kind's adapters
    instructions: dict[str, str] = field(default_factory=dict)  # the official prefixes, per adapter

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.query, self.document)))


KINDS: tuple[AdapterKind, ...] = (
    AdapterKind(
        "retrieval", "retrieval.query", "retrieval.passage", serves=("retrieval",),
        instructions={"retrieval.query": "Represent the query for retrieving evidence documents: ",
                      "retrieval.passage": "Represent the document for retrieval: "}),
    AdapterKind(
        "separation", "separation", "separation", serves=("clustering", "reranking")),
    # Labelled texts train it as tuples with same-class positives (Gecko). Pairs too: pair classification
    # goes through this adapter (spec), and labelled tuples alone pull same-topic texts together regardless of
    # meaning, so translation pairs keep it cross-lingual.
    AdapterKind(
        "classification", "classification", "classification", serves=("classification", "pair_classification")),
    # long retrieval uses text-matching, as the paper's LongEmbed run did
    AdapterKind(
        "text-matching", "text-matching", "text-matching", serves=("bitext_mining", "sts", "long_retrieval")),
)

# every adapter of every kind, in the official checkpoint's order
TASKS: tuple[str, ...] = tuple(dict.fromkeys(a for k in KINDS for a in k.adapters))
TASK_INSTRUCTIONS: dict[str, str] = {a: k.instructions.get(a, "") for k in KINDS for a in k.adapters}
# evaluation task type -> (query-side adapter, document-side adapter), as MTEB's jina-embeddings-v3 entry
# maps them (spec §2.5)
TASK_ADAPTERS: dict[str, tuple[str, str]] = {t: (k.query, k.document) for k in KINDS for t in k.serves}


def kind_of(task: str) -> AdapterKind | None:
    """The kind an adapter belongs to (None for an adapter no kind names, e.g. a user's new task)."""
    return next((k for k in KINDS if task in k.adapters), None)
