"""GPU throughput and model FLOP utilisation, full-size (jina-v3) configuration, random weights, against
transformers' XLMRobertaModel in fp16 with SDPA, in one process. For a lent GPU machine: keep it short.

    python -m benchmarks.gpu_throughput --peak-tflops 989      # H100 SXM bf16 dense peak

Cases: packed 64 x 512, 256 x 128, 64 mixed lengths 16..1024 (the baseline pads
them), one 8192-token input. Prints tokens/s, ratio to the baseline, MFU and peak memory.
Runs on CPU too (`--device cpu --size small`) to check the script itself.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from benchmarks.encode_speed import SIZES, hf_model
from taskembed.config import EncoderConfig
from taskembed.embedder import Embedder, mean_pool
from taskembed.encoder import Encoder
from tests.support.tiny import make_tokenizer, randomize_lora


def cases(vocab: int, scale: int) -> dict[str, list[list[int]]]:
    rng = random.Random(0)

    def seq(n: int) -> list[int]:
        return [0] + [rng.randrange(5, vocab) for _ in range(n - 2)] + [2]

    return {
        "64 x 512": [seq(512) for _ in range(64 // scale)],
        "256 x 128": [seq(128) for _ in range(256 // scale)],
        "64 mixed 16..1024": [seq(rng.randint(16, 1024)) for _ in range(64 // scale)],
        "1 x 8192": [seq(8192 // scale)],
    }


def flops_per_token(cfg: EncoderConfig, seqlen: float) -> float:
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dense = 2 * n * (4 * h * h + 2 * h * f)  # QKV + out + MLP, multiply-add = 2 FLOPs
    attention = 2 * n * 2 * seqlen * h  # QK^T and AV
    return dense + attention


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(fn, device: torch.device, repeat: int) -> float:
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--scale", type=int, default=1, help="divide batch sizes and the long length (CPU check)")
    args = ap.parse_args()
    device = torch.device(args.device)
    size = SIZES[args.size]
    dims = [d for d in (32, 64, 128, 256, 512, 768, 1024) if d <= size["hidden_size"]]
    cfg = EncoderConfig(**size, matryoshka_dimensions=dims, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = Encoder(cfg, add_pooling_layer=False)
    randomize_lora(model, torch.Generator().manual_seed(0), std=0.02)
    ours = Embedder(model.to(device, dtype), make_tokenizer())
    ours.max_batch_tokens = 64 * 1024
    base = hf_model(cfg).to(device, torch.float16 if device.type == "cuda" else torch.float32)
    print(f"{args.size}: {cfg.num_hidden_layers} x {cfg.hidden_size} on {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), ours {dtype}, baseline fp16/sdpa")

    def run_ours(seqs):
        with torch.inference_mode():
            for batch in ours.batches([len(x) for x in seqs], 1024):
                ours.forward_pooled([seqs[i] for i in batch], [1] * len(batch))

    def run_base(seqs):
        n = max(map(len, seqs))
        ids = torch.full((len(seqs), n), 1, device=device)
        mask = torch.zeros((len(seqs), n), dtype=torch.long, device=device)
        for r, x in enumerate(seqs):
            ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x, device=device), 1
        with torch.inference_mode():
            mean_pool(base(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    print(f"{'case':<20}{'baseline tok/s':>16}{'ours tok/s':>12}{'ratio':>8}{'MFU':>8}{'peak GiB (base/ours)':>24}")
    for name, seqs in cases(cfg.vocab_size, args.scale).items():
        tokens = sum(map(len, seqs))
        mean_len = sum(len(x) ** 2 for x in seqs) / tokens
        mem = []
        times = []
        for fn in (run_base, run_ours):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times.append(bench(lambda fn=fn, seqs=seqs: fn(seqs), device, args.repeat))
            mem.append(torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"))
        tps_base, tps_ours = tokens / times[0], tokens / times[1]
        mfu = tps_ours * flops_per_token(cfg, mean_len) / (args.peak_tflops * 1e12)
        print(f"{name:<20}{tps_base:>16.0f}{tps_ours:>12.0f}{tps_ours / tps_base:>8.2f}{mfu:>8.1%}"
              f"{mem[0]:>12.2f} / {mem[1]:.2f}")


if __name__ == "__main__":
    main()
