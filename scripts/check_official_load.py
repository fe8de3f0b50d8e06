"""Load a folder that taskembed saved in the *official* jina-embeddings-v3 code and compare the numbers.

The official remote code (``jinaai/xlm-roberta-flash-implementation``) is not part of this repository and
is never imported by the package. This script imports it from a directory the user gives
(``--official-code DIR``: the directory that *contains* the package folder, default package name
``jina_official``; see ``tests/fixtures/official_tiny/README.md``), loads ``--model`` with the official
``XLMRobertaLoRA.from_pretrained`` and compares its ``encode`` with ``taskembed.load(...).encode`` in fp32
for every task and for no task: short multilingual texts, texts with ``<mask>``, and one text longer than
8192 tokens (both sides truncate it to the tokenizer's ``model_max_length``). Token ids are compared too.

``--make-tiny DIR`` first saves a tiny random taskembed model there (``--rotary-dim``, ``--interleaved``
for the rotary variants) and checks that. Needs torch, transformers 4.x, einops (the official code)::

    python -m scripts.check_official_load --official-code /tmp/official --model path/to/saved
    python -m scripts.check_official_load --official-code /tmp/official --make-tiny /tmp/tiny --interleaved
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "Hello",
]
MASK_TEXTS = [
    "Paris is the <mask> of France.",
    "a  <mask>",
    "<mask> at the start, <mask><mask> twice, and one at the end <mask>",
    "Ça va? <mask> 素早い狐",
]
LONG_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Search engines rank documents by how relevant they are to a query.",
    "敏捷的棕色狐狸跳过了懒狗。",
]


def long_text(count_tokens, min_tokens: int) -> str:
    parts, i = [], 0
    while True:
        parts.extend(LONG_SENTENCES)
        i += 1
        text = " ".join(parts)
        if i % 20 == 0 and count_tokens(text) >= min_tokens:
            return text


def make_tiny(out: Path, rotary_dim: int | None, interleaved: bool) -> None:
    from tests.support.tiny import make_tiny_embedder

    overrides = {"rotary_emb_interleaved": interleaved}
    if rotary_dim is not None:
        overrides["rotary_emb_dim"] = rotary_dim
    make_tiny_embedder(seed=3, **overrides).save(out)


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    p.add_argument("--official-code", required=True, help="directory containing the official package")
    p.add_argument("--package", default="jina_official", help="package name of the official code")
    p.add_argument("--model", help="a folder saved by taskembed")
    p.add_argument("--make-tiny", metavar="DIR", help="save a tiny random taskembed model to DIR and check it")
    p.add_argument("--rotary-dim", type=int, help="with --make-tiny: rotary_emb_dim")
    p.add_argument("--interleaved", action="store_true", help="with --make-tiny: rotary_emb_interleaved")
    p.add_argument("--long-tokens", type=int, default=10800, help="token count of the long text")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    if bool(args.model) == bool(args.make_tiny):
        p.error("give exactly one of --model and --make-tiny")

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    import taskembed

    torch.set_num_threads(int(os.environ.get("CHECK_THREADS", "1")))  # a shared machine: stay modest

    model_dir = Path(args.make_tiny or args.model).resolve()
    if args.make_tiny:
        make_tiny(model_dir, args.rotary_dim, args.interleaved)

    sys.path.insert(0, str(Path(args.official_code).resolve()))
    conf_mod = importlib.import_module(f"{args.package}.configuration_xlm_roberta")
    lora_mod = importlib.import_module(f"{args.package}.modeling_lora")
    config = conf_mod.XLMRobertaFlashConfig.from_pretrained(str(model_dir))
    official = lora_mod.XLMRobertaLoRA.from_pretrained(str(model_dir), config=config)
    file_dtype = str(next(official.parameters()).dtype)
    official = official.float().eval()
    ours = taskembed.load(model_dir, dtype=torch.float32)

    hf_tok = official.roberta.tokenizer
    # The official code reads one pass of at most model_max_length tokens; a model with a learned position
    # table reads longer texts here in windows, which the official code has no counterpart of: compare the
    # official truncation with ours at the same length.
    max_length = min(ours.default_max_length, hf_tok.model_max_length)
    long = long_text(lambda t: len(hf_tok(t)["input_ids"]), args.long_tokens)
    groups = {"short": TEXTS, "mask": MASK_TEXTS, "long": [long]}
    ids_equal = {name: [hf_tok(t, truncation=True, max_length=hf_tok.model_max_length)["input_ids"]
                        == ours.tokenizer.encode([t], max_length).ids[0] for t in texts]
                 for name, texts in groups.items()}

    results: dict[str, float] = {}
    for task in [None, *ours.tasks]:
        for name, texts in groups.items():
            if name == "long" and task not in (None, "retrieval.passage", "text-matching"):
                continue  # the long text costs minutes on CPU: three cases are enough
            want = np.asarray(official.encode(texts, task=task), dtype=np.float32).reshape(len(texts), -1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = ours.encode(texts, task=task, max_length=max_length)
            # NaN (the official loader dropping the adapters gives NaN) must not read as a match
            results[f"{task or 'none'}|{name}"] = float(np.abs(got - want).max()) if np.isfinite(want).all() \
                else float("nan")

    report = {
        "model": str(model_dir),
        "official_file_dtype": file_dtype,
        "long_text_tokens": len(hf_tok(long)["input_ids"]),
        "truncation": {"official": hf_tok.model_max_length, "taskembed": max_length,
                       "taskembed_default": ours.default_max_length},
        "token_ids_equal": ids_equal,
        "max_abs_diff": results,
        "overall_max_abs_diff": float("nan") if any(np.isnan(v) for v in results.values())
        else max(results.values()),
    }
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    ok = all(all(v) for v in ids_equal.values()) and report["overall_max_abs_diff"] <= 1e-5
    print("OK: within 1e-5 in fp32, same token ids" if ok else "MISMATCH", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
