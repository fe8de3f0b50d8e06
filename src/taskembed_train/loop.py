"""The trainer: AdamW with linear warm-up and decay, bf16 autocast on CUDA, cached contrastive batches
(GradCache), exact checkpoint/resume, multi-process data parallelism, a progress line and an eval hook.

Data parallelism: every rank draws the same global batch from the same seeded stream and keeps its own
contiguous slice. Contrastive embeddings are gathered from all ranks (differentiably) so every rank
computes the loss of the global batch, and parameter gradients are averaged over ranks after backward.
With one process these steps are no-ops; the code path is the same.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from taskembed.embedder import mean_pool
from taskembed.lora import LORA_MODULES, NO_TASK

from . import dist
from .data import Batch, BatchStream
from .objectives import pad
from .settings import Phase


class BudgetFit:
    """Fits a schedule's length to a time budget while it runs.

    First from the speed of steps [first, second) (past the first CUDA kernels and allocator growth), then
    again after each further eighth of the budget until its last quarter, from the speed since the last fit:
    on a GPU the first steps of each new input shape are slow, so the first fit alone left a third of a
    budget unused.
    """

    def __init__(self, seconds: float, t0: float, first: int, second: int):
        self.seconds, self.t0, self.first, self.second = seconds, t0, first, second
        self.mark: tuple[float, int] | None = None

    def __call__(self, n: int, now: float) -> tuple[float, int] | None:
        """After n steps, at time `now`: (seconds per step, steps that fit in the budget) when a fit is due."""
        if n == self.first:
            self.mark = (now, n)
            return None
        if self.mark is None or n < self.second:
            return None
        spent = now - self.t0
        if n > self.second and not (now - self.mark[0] > self.seconds / 8 and spent < 0.75 * self.seconds):
            return None
        per_step = (now - self.mark[0]) / (n - self.mark[1])
        self.mark = (now, n)
        return per_step, n + int((self.seconds - spent) / per_step)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor at optimizer step s: linear ramp to 1 over `warmup` steps, then linear decay to 0 at total."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return factor


class AdapterMask:
    """Train only some task slices of the stacked LoRA factors.

    Gradients of the other slices are zeroed by a hook (so clipping sees only the trained slices), and the
    other slices are copied back after every optimizer step, since AdamW's decoupled weight decay would
    otherwise still move them. Untrained adapters stay bit-identical.
    """

    def __init__(self, model: nn.Module, tasks: list[int]) -> None:
        self.tasks = tasks
        self.params: list[nn.Parameter] = []
        self.frozen: list[Tensor] = []
        self.keep: list[Tensor] = []
        for m in model.modules():
            if isinstance(m, LORA_MODULES):
                for p in (m.lora_A, m.lora_B):
                    keep = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
                    keep[tasks] = True
                    self.params.append(p)
                    self.keep.append(keep)
                    self.frozen.append(p.detach().clone())
                    view = keep.view(-1, *([1] * (p.dim() - 1)))
                    p.register_hook(lambda g, v=view: g * v.to(g.dtype))

    def restore(self) -> None:
        with torch.no_grad():
            for p, keep, frozen in zip(self.params, self.keep, self.frozen, strict=True):
                p[~keep] = frozen[~keep]


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """model: the Encoder; objective: objectives.Contrastive, objectives.MLM or distill.Distill; stream: a
    BatchStream; cfg: the phase's settings (the optimiser, schedule, checkpoint and log ones apply here).
    checkpoint_dir: where checkpoints go (none: no checkpoints).

    trainable: the parameters to optimise (default: all that require grad). modules: extra modules whose
    state is checkpointed with the model (the MLM head). adapter_tasks: train only these LoRA task slices.
    eval_fn(step) -> {metric: value} runs every eval_every steps and at the end.
    """

    def __init__(self, model: nn.Module, objective, stream: BatchStream, cfg: Phase,
                 checkpoint_dir: str | Path | None = None, tokenizer=None, trainable: list[nn.Parameter] | None = None,
                 modules: dict[str, nn.Module] | None = None, adapter_tasks: list[int] | None = None,
                 eval_fn: Callable[[int], dict] | None = None, device: torch.device | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.model, self.objective, self.stream, self.cfg = model, objective, stream, cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.steps = cfg.steps  # a max_seconds cut lowers it; the phase's settings stay as given
        self.tokenizer = tokenizer
        self.device = device or next(model.parameters()).device
        self.rank, self.world = dist.world()
        self.modules = nn.ModuleDict({"model": model, **(modules or {})})
        seen: set[int] = set()
        params = trainable if trainable is not None else [p for p in self.modules.parameters() if p.requires_grad]
        # Tied weights (LM decoder = word embeddings) must be optimised once.
        self.params = [p for p in params if not (id(p) in seen or seen.add(id(p)))]
        if not self.params:
            raise ValueError("nothing to train: no parameter requires grad")
        self.mask = AdapterMask(model, adapter_tasks) if adapter_tasks is not None else None
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        # The schedule's length is fixed here; only a max_seconds cut changes it (cfg.steps alone just stops).
        self._schedule_steps = cfg.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: linear_schedule(cfg.warmup_steps, self._schedule_steps)(s))
        self.step = 0
        self.losses: list[float] = []
        self.evals: list[tuple[int, dict]] = []
        self.eval_fn = eval_fn
        self._best: tuple[int, float, list[Tensor]] | None = None
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self._tokens = 0
        model.gradient_checkpointing = cfg.gradient_checkpointing
        torch.manual_seed(cfg.seed + self.rank)

    # --- embedding ---------------------------------------------------------------------------------

    def _autocast(self):
        on = self.cfg.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=on)

    def embed(self, texts: list[str], task_ids: list[int], count: bool = True) -> Tensor:
        """Mean-pooled fp32 embeddings (N, H) of texts, one forward pass."""
        enc = self.tokenizer.encode(texts, max_length=self.cfg.max_length)
        ids, mask = pad(enc.ids, self.tokenizer.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        tids = torch.tensor(task_ids, dtype=torch.long, device=self.device)
        if count:
            self._tokens += int(mask.sum())
        with self._autocast():
            hidden = self.model(ids, mask, tids)
        return mean_pool(hidden, mask)

    def _chunks(self, n: int) -> list[slice]:
        size = self.cfg.grad_cache_rows or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    # --- one step ----------------------------------------------------------------------------------

    def _local(self, records: list[dict], exact: bool) -> tuple[list[dict], int]:
        n = len(records)
        if exact and n % self.world:
            raise ValueError(f"global batch of {n} does not split over {self.world} processes; "
                             "pick a batch size divisible by the world size")
        lo, hi = (self.rank * n) // self.world, ((self.rank + 1) * n) // self.world
        return records[lo:hi], lo

    def _contrastive_backward(self, batch: Batch) -> float:
        local, _ = self._local(batch.records, exact=True)
        texts, tasks, k = self.objective.texts(batch.kind, local)
        chunks = self._chunks(len(texts))
        base = None
        if getattr(self.objective, "needs_base", False):  # the same texts through the frozen base weights
            training = self.model.training
            self.model.eval()  # the reference is the base as it serves: no dropout, no RNG drawn
            with torch.no_grad():
                parts = [self.embed(texts[c], [NO_TASK] * (c.stop - c.start), count=False) for c in chunks]
            self.model.train(training)
            base = dist.gather(torch.cat(parts)).view(len(batch.records), k, -1)
        if len(chunks) == 1:
            reps = self.embed(texts, tasks)
            full = dist.gather(reps).view(len(batch.records), k, -1)
            loss = self.objective.loss(full, batch.kind, batch.records, base=base)
            loss.backward()
            return float(loss.detach())
        # GradCache: 1) embed every chunk without a graph, remembering the RNG state (dropout) of each;
        states, parts = [], []
        with torch.no_grad():
            for c in chunks:
                states.append(_rng_state())
                parts.append(self.embed(texts[c], tasks[c]))
        after = _rng_state()
        # 2) the loss and its gradient w.r.t. the embeddings on the full (gathered) batch;
        reps = torch.cat(parts).detach().requires_grad_(True)
        full = dist.gather(reps).view(len(batch.records), k, -1)
        loss = self.objective.loss(full, batch.kind, batch.records, base=base)
        loss.backward()
        cached = reps.grad
        # 3) re-run each chunk with a graph, replaying its RNG state, and push the cached gradient through.
        for c, st in zip(chunks, states, strict=True):
            _set_rng_state(st)
            out = self.embed(texts[c], tasks[c], count=False)  # tokens were counted in pass 1
            out.backward(cached[c])
        _set_rng_state(after)
        return float(loss.detach())

    def _plain_backward(self, batch: Batch) -> float:
        local, offset = self._local(batch.records, exact=False)
        micros, counts, n_tokens = self.objective.prepare(local, offset)
        self._tokens += n_tokens
        # the global counts each loss term is divided by (MLM: masked tokens; distillation: several)
        total = (tuple(dist.all_sum(c, self.device) for c in counts) if isinstance(counts, tuple)
                 else dist.all_sum(counts, self.device))
        value = 0.0
        if not micros:
            # A rank with no rows this step (a small bucketed batch) still contributes zero gradients, so
            # every rank all-reduces the same parameters.
            (sum(p.sum() for p in self.params) * 0.0).backward()
        for micro in micros:
            with self._autocast():
                # x world: the gradient average over ranks then gives the global-batch mean.
                loss = self.objective.micro_loss(self.model, micro, total) * self.world
            loss.backward()
            value += float(loss.detach()) / self.world
        return dist.all_sum(value, self.device)

    def train_step(self, batch: Batch) -> float:
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective.contrastive:
            loss = self._contrastive_backward(batch)
        else:
            loss = self._plain_backward(batch)
        dist.average_gradients(self.params)
        if self.cfg.max_grad_norm:  # 0: no clipping
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.mask is not None:
            self.mask.restore()
        self.step += 1
        self.losses.append(loss)
        return loss

    # --- the loop ----------------------------------------------------------------------------------

    def train(self) -> list[float]:
        cfg = self.cfg
        t0, tok0, step0 = time.perf_counter(), self._tokens, self.step
        window: list[float] = []
        name, configured, budget = cfg.name or "train", cfg.steps, BudgetFit(cfg.max_seconds, t0, 5, 15)
        if cfg.keep_best and self.eval_fn and self._best is None:
            self.run_eval()  # the starting point is a candidate too
        while self.step < self.steps:
            loss = self.train_step(next(self.stream))
            window.append(loss)
            if cfg.max_seconds and self.world == 1 and (due := budget(self.step - step0, time.perf_counter())):
                per_step, n_fit = due
                fit = min(configured, max(self.step + 1, step0 + n_fit))
                if fit != self.steps:
                    self.log(f"[{name}] {per_step:.3f} s/step: {fit} of {configured} steps fit in "
                             f"{cfg.max_seconds:.0f} s")
                    self.steps = self._schedule_steps = fit
            if self.rank == 0 and cfg.log_every and (self.step % cfg.log_every == 0 or self.step == self.steps):
                dt = max(time.perf_counter() - t0, 1e-9)
                tok = self._tokens - tok0  # this rank's; ranks see equal shares of the batch
                self.log(f"[{name}] step {self.step}/{self.steps} loss {sum(window) / len(window):.4f} "
                         f"lr {self.scheduler.get_last_lr()[0]:.2e} {(self.step - step0) / dt:.2f} step/s "
                         f"{tok * self.world / dt:.0f} tok/s")
                window = []
            if cfg.eval_every and self.eval_fn and self.step % cfg.eval_every == 0:
                self.run_eval()
            if cfg.checkpoint_every and self.checkpoint_dir and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        if self.eval_fn and not (cfg.eval_every and self.step % cfg.eval_every == 0):
            self.run_eval()
        if self._best is not None and self._best[0] != self.step:
            step, value, state = self._best
            with torch.no_grad():
                for p, v in zip(self.params, state, strict=True):
                    p.copy_(v)
            self.log(f"[{name}] keeping step {step}'s weights: {cfg.keep_best} {value:.4f} is the best "
                     f"of {len(self.evals)} evaluations")
        return self.losses

    def run_eval(self) -> dict:
        self.modules.eval()
        with torch.no_grad():
            result = self.eval_fn(self.step) or {}
        self.modules.train()
        self.evals.append((self.step, result))
        key = self.cfg.keep_best
        if key and key not in result:
            raise ValueError(f"keep_best metric {key!r} is not among the evaluation's: {', '.join(result) or 'none'}")
        if key and (self._best is None or result[key] > self._best[1]):
            self._best = (self.step, float(result[key]), [p.detach().clone() for p in self.params])
        if self.rank == 0 and result:
            self.log(f"[{self.cfg.name or 'train'}] eval step {self.step}: "
                     + " ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    # --- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Write step-N/ under checkpoint_dir: state (rank 0) and one RNG file per rank; keeps the last few."""
        root = Path(directory or self.checkpoint_dir)
        final = root / f"step-{self.step:08d}"
        tmp = root / f".tmp-step-{self.step:08d}"
        if self.rank == 0:
            tmp.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        torch.save(_rng_state(), tmp / f"rng-{self.rank}.pt")
        if self.rank == 0:
            state = {
                "step": self.step,
                "world": self.world,
                "modules": self.modules.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "stream": self.stream.state_dict(),
                "objective": self.objective.state_dict(),
                "losses": self.losses,
            }
            torch.save(state, tmp / "state.pt")
        dist.barrier()
        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            old = sorted(root.glob("step-*"))[: -self.cfg.keep_checkpoints or None]
            for d in old:
                shutil.rmtree(d, ignore_errors=True)
        dist.barrier()
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        state = torch.load(path / "state.pt", map_location=self.device, weights_only=False)
        if state["world"] != self.world:
            self.log(f"note: checkpoint was written by {state['world']} processes, resuming on {self.world}; "
                     "the data order stays the same, dropout streams differ")
        self.modules.load_state_dict(state["modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])
        self.objective.load_state_dict(state["objective"])
        self.step, self.losses = state["step"], list(state["losses"])
        if self.mask is not None:
            # The frozen slices to restore are the checkpoint's (they equal the start's by construction).
            self.mask.frozen = [p.detach().clone() for p in self.mask.params]
        rng = path / f"rng-{self.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=False))

    @staticmethod
    def latest_checkpoint(directory: str | Path | None) -> Path | None:
        if not directory or not Path(directory).is_dir():
            return None
        found = sorted(Path(directory).glob("step-*"))
        return found[-1] if found else None

