"""int8 against float32 for the bundled model on real text: cosine of each text's two vectors per task, and
encode speed, in one process (issue 7: cosine to fp32 >= 0.99 on real text). Rounds alternate the two so
machine load hits them alike.

    python benchmarks/int8_quality.py [--texts 300] [--rounds 3] [--threads 2] [--no-calibration]

Texts: passages and queries of the evaluation suite (data/eval); int8 calibrates on the package's own sample
passages, not on these. --no-calibration quantises every channel (plain dynamic int8) for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import taskembed

sys.path.insert(0, str(Path(__file__).parent))
from default_model_speed import real_texts  # noqa: E402

TASKS = ["retrieval.passage", "retrieval.query", "classification", "separation"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-calibration", action="store_true")
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

    times: dict[str, list[float]] = {"float32": [], "int8": []}
    for _ in range(args.rounds):
        for name, emb in (("float32", fp32), ("int8", int8)):
            t = time.perf_counter()
            emb.encode(texts, task="retrieval.passage")
            times[name].append(time.perf_counter() - t)
    tokens = sum(fp32.count_tokens(texts, task="retrieval.passage"))
    ref = statistics.median(times["float32"])
    print(f"\nencode speed, median of {args.rounds} rounds ({tokens} tokens)")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<20}{tokens / t:>10.0f} tok/s{ref / t:>8.2f}x")


if __name__ == "__main__":
    main()
