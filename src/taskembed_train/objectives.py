"""What a training step computes: contrastive objectives over embeddings (pairs, tuples, scored pairs,
labelled texts) and masked language modelling with an XLM-R LM head.

A contrastive batch record always yields the same number k of texts (query, positive, negatives... /
text1, text2 / text), embedded record-major; the trainer gathers the embeddings of every rank into a
(B, k, D) tensor, and the loss for the batch's data kind runs on that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taskembed.batching import plan_batches
from taskembed.config import EncoderConfig
from taskembed.tokenizer import Tokenizer

from . import losses
from .data import record_texts


class Contrastive:
    """The losses named in `loss` (losses.LOSSES), each on the record kinds it trains on: info_nce -> bidirectional
    InfoNCE on pairs, Eq. 3 with hard negatives on tuples; cosent -> CoSENT on scored pairs; separation ->
    Eq. 5 on labelled texts. Each wrapped in Matryoshka over `dims`. A batch of a kind no named loss trains
    on is an error.

    query_task / doc_task: the adapter index of a record's first text and of the others (-1 = base
    weights). Texts get their task's instruction prefix. anchor > 0 adds that weight times
    `losses.similarity_anchor` at full size against the base weights' embeddings of the same texts (the
    trainer computes them when `needs_base`).
    """

    contrastive = True

    def __init__(self, config: EncoderConfig, query_task: int = -1, doc_task: int = -1, tau: float = 0.05,
                 dims: Sequence[int] | None = None, weights: Sequence[float] | None = None,
                 anchor: float = 0.0, loss: str | Sequence[str] = tuple(losses.LOSSES)) -> None:
        self.query_task, self.doc_task = query_task, doc_task
        self.tau, self.anchor = tau, float(anchor)
        if self.anchor < 0:
            raise ValueError(f"anchor must be >= 0, got {anchor}")
        names = config.lora_adaptations
        instr = config.task_instructions
        self.prefix = {t: (instr.get(names[t], "") if t >= 0 else "") for t in {query_task, doc_task}}
        dims = losses.matryoshka_dims(dims, config.hidden_size)
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"matryoshka_weights has {len(weights)} values for dims {dims}")
        self.names = losses.loss_names(loss)
        by_kind = {
            "pairs": losses.Matryoshka(losses.info_nce, dims, weights),
            "tuples": losses.Matryoshka(losses.info_nce_hard, dims, weights),
            "scored": losses.Matryoshka(losses.cosent, dims, weights),
            "labelled": losses.Matryoshka(losses.separation_loss, dims, weights),
        }
        self.losses = {k: by_kind[k] for n in self.names for k in losses.LOSSES[n]}

    def texts(self, kind: str, records: list[dict]) -> tuple[list[str], list[int], int]:
        if kind not in self.losses:
            hint = " (raw text is for `train mlm`)" if kind == "raw" else ""
            raise ValueError(f"the loss {' + '.join(self.names)} does not train on {kind!r} records{hint}")
        texts, tasks = [], []
        k = None
        for r in records:
            ts = record_texts(r)
            if k is None:
                k = len(ts)
            elif len(ts) != k:
                raise ValueError("records in one batch have different numbers of texts (set num_negatives)")
            for i, t in enumerate(ts):
                task = self.query_task if i == 0 else self.doc_task
                texts.append(self.prefix[task] + t)
                tasks.append(task)
        return texts, tasks, k or 0

    @property
    def needs_base(self) -> bool:
        return self.anchor > 0

    def loss(self, reps: Tensor, kind: str, records: list[dict], base: Tensor | None = None) -> Tensor:
        main = self._loss(reps, kind, records)
        if not self.needs_base:
            return main
        if base is None:
            raise ValueError("anchor > 0 needs the base model's embeddings of the batch")
        return main + self.anchor * losses.similarity_anchor(reps, base, tau=self.tau)

    def _loss(self, reps: Tensor, kind: str, records: list[dict]) -> Tensor:
        tau = self.tau
        fn = self.losses[kind]
        if kind == "pairs":
            return fn(reps[:, 0], reps[:, 1], tau=tau)
        if kind == "tuples":
            return fn(reps[:, 0], reps[:, 1], reps[:, 2:], tau=tau)
        if kind == "scored":
            scores = torch.tensor([r["score"] for r in records], dtype=torch.float32)
            return fn(reps[:, 0], reps[:, 1], scores=scores, tau=tau)
        ids: dict[str, int] = {}
        labels = torch.tensor([ids.setdefault(str(r["label"]), len(ids)) for r in records])
        return fn(reps[:, 0], labels=labels, tau=tau)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LMHead(nn.Module):
    """XLM-R's LM head: dense -> gelu -> LayerNorm -> decoder tied to the word embeddings (+ bias)."""

    def __init__(self, config: EncoderConfig, word_embeddings: nn.Parameter) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder_weight = word_embeddings  # tied: the same Parameter object, not a copy

    def forward(self, hidden: Tensor) -> Tensor:
        x = self.layer_norm(F.gelu(self.dense(hidden)))
        return F.linear(x, self.decoder_weight, self.bias)

    def own_state(self) -> dict[str, Tensor]:
        """The head's own tensors (the tied decoder lives in the encoder), HF names under `lm_head.`."""
        return {f"lm_head.{k}": v for k, v in self.state_dict().items() if k != "decoder_weight"}

    def load_own_state(self, state: dict[str, Tensor]) -> None:
        own = {k.removeprefix("lm_head."): v for k, v in state.items() if k.startswith("lm_head.")}
        own["decoder_weight"] = self.decoder_weight.data
        self.load_state_dict(own)


class MLM:
    """Masked language modelling with whole-word masking on raw text.

    prepare() tokenises a rank's records, cuts them into micro-batches of at most micro_tokens padded
    tokens (sorted by length) and masks them; the trainer sums the masked-token count over ranks so every
    micro-batch loss is divided by the global count, which makes accumulation exact.
    """

    contrastive = False

    def __init__(self, tokenizer: Tokenizer, head: LMHead, max_length: int = 512, prob: float = 0.15,
                 seed: int = 0, micro_tokens: int | None = None) -> None:
        self.tokenizer, self.head = tokenizer, head
        self.max_length, self.prob = max_length, prob
        self.micro_tokens = micro_tokens
        self.vocab_size = head.bias.shape[0]
        self.starts = losses.word_starts(tokenizer.backend.get_vocab(), self.vocab_size)
        self.special = [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]
        if tokenizer.mask_id is None:
            raise ValueError("the tokenizer has no <mask> token; MLM needs one")
        self.seed, self.calls = seed, 0

    def prepare(self, records: list[dict], offset: int = 0) -> tuple[list[tuple[Tensor, Tensor, Tensor]], int, int]:
        """-> (micro-batches of (ids, mask, labels), masked tokens here, real tokens here).

        offset: the global index of records[0] in the step's batch. Each row is masked with its own seed
        (seed, call, global row), so the masks do not depend on how the batch is split over processes or
        micro-batches.
        """
        self.calls += 1
        if not records:
            return [], 0, 0
        enc = self.tokenizer.encode([r["text"] for r in records], max_length=self.max_length)
        masked = []
        for i, row in enumerate(enc.ids):
            row_seed = ((self.seed * 1_000_003 + self.calls) * 1_000_003 + offset + i) % (1 << 62)
            g = torch.Generator().manual_seed(row_seed)
            ids = torch.tensor([row], dtype=torch.long)
            ids_m, labels = losses.whole_word_mask(ids, torch.ones_like(ids), self.starts, self.special,
                                                   self.tokenizer.mask_id, self.vocab_size, self.prob, g)
            masked.append((ids_m[0].tolist(), labels[0].tolist()))
        groups = plan_batches([len(m[0]) for m in masked], self.micro_tokens or None)
        micros, n_masked, n_tokens = [], 0, 0
        for grp in groups:
            ids, mask = pad([masked[i][0] for i in grp], self.tokenizer.pad_id)
            labels, _ = pad([masked[i][1] for i in grp], losses.IGNORE)
            micros.append((ids, mask, labels))
            n_masked += int((labels != losses.IGNORE).sum())
            n_tokens += int(mask.sum())
        return micros, n_masked, n_tokens

    def micro_loss(self, model: nn.Module, micro: tuple[Tensor, Tensor, Tensor], num_targets: float) -> Tensor:
        device = next(model.parameters()).device
        ids, mask, labels = (t.to(device) for t in micro)
        hidden = model(ids, mask, None)
        picked = labels != losses.IGNORE
        # Only masked positions go through the head: the vocab projection is the expensive part.
        logits = self.head(hidden[picked])
        return losses.mlm_loss(logits, labels[picked], num_targets=max(num_targets, 1.0))

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])


def pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    n = max(len(x) for x in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for r, x in enumerate(rows):
        ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
    return ids, mask
