"""int8 against float32 for the bundled model on real text: cosine of each text's two vectors per task, and
encode speed, in one process (target: cosine to fp32 >= 0.99 on real text). Rounds alternate the two so
machine load hits them alike.

    python benchmarks/int8_quality.py [--texts 300] [--rounds 3] [--threads 2] [--no-calibration] [--onnx]

Texts: passages and queries of the evaluation suite (data/eval); int8 calibrates on the package's own sample
passages, not on these. --no-calibration quantises every channel (plain dynamic int8) for comparison.
--onnx adds ONNX Runtime's int8 graph of retrieval.passage (`taskembed export --int8`), fed padded,
length-sorted batches of 32 as an ONNX user would.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

import taskembed
from benchmarks.default_model_speed import alternating_rounds, real_texts

TASKS = ["retrieval.passage", "retrieval.query", "classification", "separation"]


def onnx_runner(emb: taskembed.Embedder, texts: list[str]):
    """A function that embeds `texts` (tokenisation included) through the int8 ONNX graph."""
    import tempfile

    import onnxruntime as ort

    from taskembed.export import export_onnx

    path = export_onnx(emb, "retrieval.passage", Path(tempfile.mkdtemp()) / "q.onnx", int8=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run() -> np.ndarray:
        prefixed, _ = emb.prepare(texts, "retrieval.passage")
        ids = emb.tokenizer.encode(prefixed, max_length=512).ids
        out = np.empty((len(ids), emb.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for s in range(0, len(order), 32):
            rows = order[s: s + 32]
            n = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), n), emb.config.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(rows), n), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])], mask[r, : len(ids[i])] = ids[i], 1
            out[rows] = sess.run(["sentence_embedding"], {"input_ids": input_ids, "attention_mask": mask})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-calibration", action="store_true")
    ap.add_argument("--onnx", action="store_true", help="also ONNX Runtime int8 (pip install onnx onnxruntime)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = real_texts(args.texts)
    fp32 = taskembed.load()
    int8 = taskembed.load()
    int8.to_int8(calibration_texts=[] if args.no_calibration else None)
    kept = sum(getattr(m, "int8", None) is not None and m.int8.outliers is not None for m in int8.model.modules())
    print(f"{len(texts)} real texts (eval suite), {torch.get_num_threads()} threads; "
          f"{kept} Linear layers keep outlier input channels in float")
    print(f"{'task':<20}{'mean cos':>10}{'5th pct':>10}{'min':>10}")
    for task in TASKS:
        cos = (fp32.encode(texts, task=task) * int8.encode(texts, task=task)).sum(1)
        print(f"{task:<20}{cos.mean():>10.4f}{np.percentile(cos, 5):>10.4f}{cos.min():>10.4f}")

    runs = {"float32": lambda: fp32.encode(texts, task="retrieval.passage"),
            "int8": lambda: int8.encode(texts, task="retrieval.passage")}
    if args.onnx:
        runs["onnxruntime int8"] = onnx_runner(fp32, texts)
        cos = (runs["float32"]() * runs["onnxruntime int8"]()).sum(1)
        print(f"{'onnxruntime int8':<20}{cos.mean():>10.4f}{np.percentile(cos, 5):>10.4f}{cos.min():>10.4f}"
              "  (retrieval.passage)")
    times = alternating_rounds(runs, args.rounds)
    tokens = sum(fp32.count_tokens(texts, task="retrieval.passage"))
    ref = statistics.median(times["float32"])
    print(f"\nencode speed, median of {args.rounds} rounds ({tokens} tokens)")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<20}{tokens / t:>10.0f} tok/s{ref / t:>8.2f}x")


if __name__ == "__main__":
    main()
