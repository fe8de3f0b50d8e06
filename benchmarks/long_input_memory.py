"""Full-size (jina-v3: 24 layers, 1024 wide, 250002 vocab) checkpoint: load it in the official layout and
encode one 8192-token input on CPU; report peak memory above the loaded weights.

    python -m benchmarks.long_input_memory [--tokens 8192] [--dir /tmp/jina-v3-random]

The checkpoint is random (bf16, official key names) and written once to --dir.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import psutil
import torch

import taskembed
from taskembed.config import EncoderConfig
from taskembed.embedder import Embedder
from taskembed.encoder import Encoder
from tests.support.tiny import make_tokenizer, randomize_lora


def rss_gib() -> float:
    return psutil.Process().memory_info().rss / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_checkpoint(path: Path) -> None:
    tok = make_tokenizer()
    model = Encoder(EncoderConfig())
    randomize_lora(model, torch.Generator().manual_seed(0), std=0.02)
    Embedder(model, tok).save(path, dtype=torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--dir", default="/tmp/jina-v3-random")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.dir)
    if not (path / "model.safetensors").exists():
        t = time.perf_counter()
        make_checkpoint(path)
        print(f"wrote random full-size checkpoint to {path} in {time.perf_counter() - t:.0f} s")
        raise SystemExit("checkpoint written; run again in a fresh process to measure memory")
    t = time.perf_counter()
    emb = taskembed.load(path)
    counts = emb.model.num_parameters()
    weights = rss_gib()
    print(f"loaded {counts['total']:,} parameters in {time.perf_counter() - t:.1f} s; RSS {weights:.2f} GiB")
    # One token per word in the tiny tokenizer is not guaranteed; grow the text until it fills the budget.
    text = "cat " * args.tokens
    n = emb.count_tokens([text], task="text-matching")[0]
    print(f"input: {min(n, args.tokens)} tokens (text has {n}, cut to max_length={args.tokens})")
    t = time.perf_counter()
    v = emb.encode([text], task="text-matching", max_length=args.tokens)
    dt = time.perf_counter() - t
    norm = float((v**2).sum())
    print(f"encoded in {dt:.1f} s ({args.tokens / dt:.0f} tokens/s); vector {v.shape}, norm {norm:.4f}")
    print(f"peak RSS {peak_gib():.2f} GiB; above the loaded weights: {peak_gib() - weights:.2f} GiB")


if __name__ == "__main__":
    main()
