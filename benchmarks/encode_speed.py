"""Encode throughput of taskembed against Hugging Face transformers' XLMRobertaModel (SDPA, mean pooling:
what sentence-transformers runs), same size, random weights, on CPU. All numbers come from one process, and
the variants are interleaved round by round so machine load hits them alike.

    python -m benchmarks.encode_speed --size full --lengths short medium long --rounds 2

Rows: tokens/s per variant and its ratio to the transformers baseline; single-query latency (batch 1, ~20
tokens); LoRA cost (mixed tasks in one batch vs one merged task); peak RSS growth per variant.
`--system-malloc` leaves glibc's malloc thresholds alone (taskembed raises them on CPU: taskembed/allocator.py);
either way the setting is process-wide, so the baseline runs under the same allocator as every other row.
Needs `pip install transformers psutil` (the [bench] extra).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

import torch

from taskembed.allocator import DISABLE_ENV, tune_cpu_allocator
from taskembed.config import EncoderConfig
from taskembed.embedder import Embedder, mean_pool
from taskembed.encoder import Encoder
from taskembed.lora import merge_task
from tests.support.tiny import make_tokenizer, randomize_lora

SIZES = {
    "full": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
}
LENGTHS = {"short": (20, 40, 64), "medium": (300, 700, 16), "long": (8000, 8000, 1)}


def make_inputs(kind: str, vocab: int, seed: int = 0) -> list[list[int]]:
    lo, hi, n = LENGTHS[kind]
    rng = random.Random(seed)
    return [[0] + [rng.randrange(5, vocab) for _ in range(rng.randint(lo, hi) - 2)] + [2] for _ in range(n)]


def hf_model(cfg: EncoderConfig):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hcfg = XLMRobertaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=8194 + 2, type_vocab_size=1, pad_token_id=1,
    )
    model = XLMRobertaModel._from_config(hcfg, attn_implementation="sdpa", add_pooling_layer=False)
    assert model.config._attn_implementation == "sdpa"
    return model.eval()


def hf_encode(model, seqs: list[list[int]], batch_size: int = 32) -> None:
    """sentence-transformers' order: sort by length, pad each batch to its longest, mean-pool."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = [seqs[i] for i in order[s: s + batch_size]]
            n = max(map(len, batch))
            ids = torch.full((len(batch), n), 1)
            mask = torch.zeros((len(batch), n), dtype=torch.long)
            for r, x in enumerate(batch):
                ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
            mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def ours_encode(emb: Embedder, seqs: list[list[int]], tasks: list[int], batch_size: int = 32) -> None:
    with torch.inference_mode():
        for batch in emb.batches([len(x) for x in seqs], batch_size):
            emb.forward_pooled([seqs[i] for i in batch], [tasks[i] for i in batch])


def ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_encode(sess, seqs: list[list[int]], batch_size: int = 32) -> None:
    """ONNX Runtime on padded, length-sorted batches (what an ONNX user runs)."""
    import numpy as np

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for s in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[s: s + batch_size]]
        n = max(map(len, batch))
        ids = np.full((len(batch), n), 1, dtype=np.int64)
        mask = np.zeros((len(batch), n), dtype=np.int64)
        for r, x in enumerate(batch):
            ids[r, : len(x)], mask[r, : len(x)] = x, 1
        sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def timed(fn) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--lengths", nargs="+", choices=LENGTHS, default=["short", "medium"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--onnx", action="store_true", help="also ONNX Runtime fp32 and int8 (pip install onnxruntime)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc malloc as it is (taskembed raises its thresholds on CPU, for every row alike)")
    args = ap.parse_args()
    if args.system_malloc:
        os.environ[DISABLE_ENV] = "0"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = SIZES[args.size]
    dims = [d for d in (32, 64, 128, 256, 512, 768, 1024) if d <= size["hidden_size"]]
    cfg = EncoderConfig(**size, matryoshka_dimensions=dims, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    print(f"config {args.size}: {cfg.num_hidden_layers} layers x {cfg.hidden_size}, vocab {cfg.vocab_size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU {torch.backends.cpu.get_cpu_capability()}")

    base_rss = rss_mib()
    model = Encoder(cfg, add_pooling_layer=False)
    randomize_lora(model, torch.Generator().manual_seed(0), std=0.02)
    ours = Embedder(model, make_tokenizer())
    ours_padded = Embedder(model, ours.tokenizer)
    ours_padded.packed = False
    ours_padded.merge_cache_size = 0
    ours.merge_cache_size = 0  # the LoRA side path; the merged variant below is the cached one
    merged = Encoder(cfg, add_pooling_layer=False)
    merged.load_state_dict(model.state_dict())
    merge_task(merged, 1)
    ours_merged = Embedder(merged, ours.tokenizer)
    variants = {
        "transformers XLMRobertaModel (sdpa)": lambda seqs: hf_encode(baseline, seqs),
        "taskembed fp32 packed, LoRA path": lambda seqs: ours_encode(ours, seqs, [1] * len(seqs)),
        "taskembed fp32 padded, LoRA path": lambda seqs: ours_encode(ours_padded, seqs, [1] * len(seqs)),
        "taskembed fp32 packed, mixed tasks": lambda seqs: ours_encode(ours, seqs, [i % 5 for i in range(len(seqs))]),
        "taskembed fp32 packed, merged (default)": lambda seqs: ours_encode(ours_merged, seqs, [-1] * len(seqs)),
    }
    baseline = hf_model(cfg)
    if not args.no_int8:
        q = Encoder(cfg, add_pooling_layer=False)
        q.load_state_dict(model.state_dict())
        ours_int8 = Embedder(q, ours.tokenizer).to_int8()  # one task: runs the cached merged int8 copy
        variants["taskembed int8 packed, merged"] = lambda seqs: ours_encode(ours_int8, seqs, [1] * len(seqs))
    if args.onnx:
        import tempfile

        from taskembed.export import export_onnx

        tmp = tempfile.mkdtemp()
        for name, int8 in (("onnxruntime fp32 merged task", False), ("onnxruntime int8 merged task", True)):
            sess = ort_session(export_onnx(ours, "retrieval.passage", f"{tmp}/{int(int8)}.onnx", int8=int8))
            variants[name] = lambda seqs, sess=sess: ort_encode(sess, seqs)
    # The process-wide malloc setting applies to the baseline's allocations as much as to ours.
    print(f"models built; RSS grew {rss_mib() - base_rss:.0f} MiB; malloc thresholds raised: {tune_cpu_allocator()}")

    for kind in args.lengths:
        seqs = make_inputs(kind, cfg.vocab_size)
        tokens = sum(map(len, seqs))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():  # warm-up
            fn(seqs[: max(1, len(seqs) // 8)])
        for _ in range(args.rounds):
            for k, fn in variants.items():
                times[k].append(timed(lambda fn=fn, seqs=seqs: fn(seqs)))
        ref = statistics.median(times["transformers XLMRobertaModel (sdpa)"])
        print(f"\n{kind}: {len(seqs)} texts, {tokens} tokens; median of {args.rounds} rounds")
        print(f"{'variant':<44}{'tokens/s':>10}{'x baseline':>12}")
        for k, ts in times.items():
            t = statistics.median(ts)
            print(f"{k:<44}{tokens / t:>10.0f}{ref / t:>12.2f}")

    # Single-query latency: batch of one ~20-token query.
    q1 = make_inputs("short", cfg.vocab_size, seed=1)[:1]
    q1 = [q1[0][:20]]
    lat = {k: [] for k in variants}
    for _ in range(max(5, args.rounds * 5)):
        for k, fn in variants.items():
            lat[k].append(timed(lambda fn=fn: fn(q1)))
    ref = statistics.median(lat["transformers XLMRobertaModel (sdpa)"])
    print(f"\nsingle query (batch 1, 20 tokens): median latency over {len(lat[next(iter(lat))])} calls")
    for k, ts in lat.items():
        t = statistics.median(ts)
        print(f"{k:<44}{t * 1000:>9.1f} ms{ref / t:>10.2f}x")


if __name__ == "__main__":
    main()
