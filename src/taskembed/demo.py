"""`make run`: the bundled default model, offline. Embeds a small multilingual sample corpus with the
resumable corpus job, indexes it, and answers queries in other languages than the documents' (cross-lingual
retrieval), then shows the other adapters and Matryoshka sizes on a few texts.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import default_model_dir, load
from .embedder import SAMPLE_CORPUS

QUERIES = [
    "How long should bread dough rise?",
    "Wie schläft man besser?",
    "¿Quién fue el primero en caminar sobre la Luna?",
    "火山はどうやってできるの？",
    "Comment réparer un pneu de vélo crevé ?",
    "Как придумать надёжный пароль?",
    "绿茶应该用多少度的水泡？",
]

PAIRS = [  # text-matching: a paraphrase across languages vs an unrelated sentence
    ("The train leaves at eight in the morning.", "Der Zug fährt um acht Uhr morgens ab."),
    ("The train leaves at eight in the morning.", "Le chat dort sur le canapé."),
]


def main(argv: list[str] | None = None) -> int:
    from .corpus import CorpusJob, run
    from .index import VectorIndex, build_index

    t0 = time.perf_counter()
    model_dir = default_model_dir()
    emb = load()
    print(f"model: {model_dir.name} (bundled, {emb.model.num_parameters()['total'] / 1e6:.0f}M parameters), "
          f"tasks: {', '.join(emb.tasks)}; dims: {emb.dimensions}")
    with tempfile.TemporaryDirectory() as d:
        job = CorpusJob(input=SAMPLE_CORPUS, output=Path(d) / "vectors", model=str(model_dir),
                  task="retrieval.passage", keep=("lang", "title"))
        run(job, emb, progress=False)
        build_index(job.output, Path(d) / "index")
        index = VectorIndex.open(Path(d) / "index")
        print(f"indexed {index.size} passages in 14 languages from {SAMPLE_CORPUS.name}\n")
        for query, hits in zip(QUERIES, index.search_text(emb, QUERIES, k=3), strict=True):
            print(f"query: {query}")
            for h in hits:
                print(f"  {h.rank}. {h.score:.3f}  [{h.fields.get('lang')}] {h.fields.get('title')}")
    print("\ntext-matching (cosine), full size and 64 dimensions:")
    for a, b in PAIRS:
        sims = [float(np.dot(*emb.encode([a, b], task="text-matching", dimensions=dim))) for dim in (None, 64)]
        print(f"  {sims[0]:.3f} / {sims[1]:.3f}  {a!r} ~ {b!r}")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
