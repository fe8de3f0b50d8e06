#!/usr/bin/env python3
"""A compact, fixed subset of the training data (build_train_data.py's output) for a short GPU run.

The full data is about 750 MB; a lent GPU machine takes at most 64 MB of files, and the default model's
recipe reads far fewer records than that anyway. Every output file is a prefix of its (already shuffled)
source file, capped per kind, with long texts cut to --max-chars; a few records per raw-text file are set
aside, unread by training, for the distillation fidelity check, and the next records of the labelled and
paired files go to OUT_DIR/dev/ for the adapters' held-out checks (train/devtasks.py).

    python data/train/sample_subset.py /tmp/taskembed-train OUT_DIR [--scale 1.0] [--dev 600]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from taskembed.io import iter_jsonl

# records kept per file, by file-name prefix
CAPS = {
    "lohelp-text-": 3000, "manpage-retrieval-": 1200, "manpage-section-": 1200, "gettext-": 700,
    "lohelp-bitext-": 800, "lohelp-index-": 350, "lohelp-title-": 350, "lohelp-module-": 1500,
    "cldr-annotations-": 300, "freedict-": 400, "wordnet-gloss-": 12000,
}
HELD_OUT = 16  # raw-text records per file kept for the fidelity check
# files whose records after the cap make the adapters' dev tasks (classification, pair classification,
# clustering, reranking, retrieval); outside dev/, so no training glob reads them
DEV_PREFIXES = ("lohelp-module-", "lohelp-bitext-", "lohelp-index-")


def cut(record: dict, max_chars: int) -> dict:
    return {k: (v[:max_chars] if isinstance(v, str) else v) for k, v in record.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every cap")
    p.add_argument("--max-chars", type=int, default=2500)
    p.add_argument("--dev", type=int, default=600, help="records per file for OUT/dev/ (0: none)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    held, total = [], 0
    for f in sorted(args.src.glob("*.jsonl")):
        cap = next((c for pre, c in CAPS.items() if f.name.startswith(pre)), 0)
        if not cap:
            continue
        cap = max(1, int(cap * args.scale))
        extra = HELD_OUT if f.name.startswith("lohelp-text-") else 0
        dev = args.dev if f.name.startswith(DEV_PREFIXES) else 0
        rows = []
        for r in iter_jsonl(f):
            rows.append(cut(r, args.max_chars))
            if len(rows) >= cap + extra + dev:
                break
        if dev and len(rows) > cap:
            (args.out / "dev").mkdir(exist_ok=True)
            with (args.out / "dev" / f.name).open("w", encoding="utf-8") as out:
                out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[cap:])
            rows = rows[:cap]
        if f.name.startswith("lohelp-text-"):
            held += rows[cap:]
            rows = rows[:cap]
        with (args.out / f.name).open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        total += len(rows)
    with (args.out / "heldout-text.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in held)
    print(f"{total} records, {len(held)} held out, in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
