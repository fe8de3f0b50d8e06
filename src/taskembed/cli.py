"""The `taskembed` command line: encode, info (serve, train, eval, ... join as they land)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np


def _load(model: str | None, int8: bool = False, revision: str | None = None):
    from . import load

    return load(model, int8=int8, revision=revision)  # None: the bundled default model


def cmd_encode(args: argparse.Namespace) -> int:
    emb = _load(args.model, int8=args.int8, revision=args.revision)
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise SystemExit("error: no input: give TEXT arguments or lines on stdin")
    with warnings.catch_warnings():
        if args.task is None:
            warnings.simplefilter("ignore")
            print("note: no --task given; using the base weights (no adapter)", file=sys.stderr)
        vecs = emb.encode(
            texts, task=args.task, dimensions=args.dimensions, precision=args.precision,
            batch_size=args.batch_size, max_length=args.max_length, show_progress=args.progress,
        )
    if args.format == "npy":
        if args.output in (None, "-"):
            np.save(sys.stdout.buffer, vecs)
        else:
            np.save(args.output, vecs)
        return 0
    out = open(args.output, "w", encoding="utf-8") if args.output not in (None, "-") else sys.stdout
    try:
        for text, v in zip(texts, vecs, strict=True):
            out.write(json.dumps({"text": text, "embedding": v.tolist()}, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    emb = _load(args.model, revision=args.revision)
    cfg = emb.config
    counts = emb.model.num_parameters()
    print(f"model: {emb.path}")
    print(f"architecture: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
          + (f"rotary base {cfg.rotary_emb_base:g}, max positions {cfg.max_position_embeddings}"
             if cfg.position_embedding_type == "rotary" else
             f"learned positions, {cfg.max_tokens} tokens per pass (longer texts in windows)"))
    print(f"parameters: base {counts['base']:,}; per adapter {counts['per_adapter']:,} "
          f"(rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}); total {counts['total']:,}")
    print(f"dimensions: {emb.dimensions}")
    print("tasks:")
    for t in emb.tasks:
        prefix = cfg.task_instructions.get(t, "")
        print(f"  {t}" + (f"  (prefix: {prefix!r})" if prefix else ""))
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False))
    return 0


MODEL_HELP = ("model folder (official jina-embeddings-v3 layout) or Hugging Face hub id, e.g. "
              "jinaai/jina-embeddings-v3 (default: the bundled model)")
REVISION_HELP = "branch, tag or commit of a hub id (default: main)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskembed", description="Multilingual task-adapter text embeddings")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("encode", help="embed texts (arguments or stdin lines)")
    e.add_argument("text", nargs="*", help="texts to embed; read one per line from stdin when absent")
    e.add_argument("--model", help=MODEL_HELP)
    e.add_argument("--revision", help=REVISION_HELP)
    e.add_argument("--task", help="task adapter, e.g. retrieval.query")
    e.add_argument("--dimensions", type=int, help="Matryoshka output size")
    e.add_argument("--precision", default="float32",
                   choices=["float32", "float16", "int8", "uint8", "binary", "ubinary"])
    e.add_argument("--format", default="jsonl", choices=["jsonl", "npy"])
    e.add_argument("--output", help="output file (default stdout)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-length", type=int,
                   help="tokens per text (default: the tokenizer config's model_max_length, else 8192)")
    e.add_argument("--progress", action="store_true")
    e.add_argument("--int8", action="store_true", help="int8 Linear layers on CPU (faster, cosine ~0.998 to fp32)")
    e.set_defaults(func=cmd_encode)

    i = sub.add_parser("info", help="print a model's config, tasks, dims and parameter counts")
    i.add_argument("model", nargs="?", help=MODEL_HELP)
    i.add_argument("--revision", help=REVISION_HELP)
    i.add_argument("--json", action="store_true", help="also print the whole config")
    i.set_defaults(func=cmd_info)
    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


# Subcommands whose parsers live beside their code: "name": ("module", "function", "help").
DELEGATED = {
    "serve": ("taskembed.serve.cli", "main", "run the HTTP embedding server (extra [serve])"),
    "eval": ("taskembed.eval.cli", "eval_main", "evaluate models on the held-out suite (extra [eval])"),
    "train": ("taskembed_train.cli", "main", "train: mlm | pairs | adapters (extra [train])"),
    "convert": ("taskembed.convert", "main", "convert an absolute-position XLM-R/BERT checkpoint"),
    "export": ("taskembed.export", "main", "export a per-task merged ONNX graph (optionally int8)"),
    "embed-corpus": ("taskembed.corpus", "main", "embed a corpus into Parquet shards (resumable)"),
    "index": ("taskembed.index", "index_main", "build a vector index from embed-corpus output"),
    "search": ("taskembed.index", "search_main", "search a vector index with a text query"),
}


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module, func, _ = DELEGATED[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        print(f"error: `taskembed {name}` is not available: {e.name} is missing "
              "(install the matching extra, e.g. pip install 'taskembed[serve]')", file=sys.stderr)
        return 2
    return getattr(mod, func)(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # our errors say what is wrong; no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

