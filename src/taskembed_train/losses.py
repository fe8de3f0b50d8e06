"""Training losses of jina-embeddings-v3 (spec §2.3), on embeddings that are not yet normalised.

Every similarity is a cosine (the loss normalises), so a Matryoshka cut followed by any of these losses is
"cut, then normalise", the order the paper evaluates. All losses are means over the batch they are given;
in multi-process training the trainer hands them the embeddings gathered from every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def cos_sim(a: Tensor, b: Tensor) -> Tensor:
    """(n, d) x (m, d) -> (n, m) cosine similarities, in fp32 whatever the compute dtype."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def info_nce(q: Tensor, p: Tensor, tau: float = 0.05, bidirectional: bool = True) -> Tensor:
    """Pair loss with in-batch negatives: L_NCE(B) (+ L_NCE(B†) with every pair swapped when bidirectional)."""
    logits = cos_sim(q, p) / tau
    target = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, target)
    if bidirectional:
        loss = loss + F.cross_entropy(logits.T, target)
    return loss


def similarity_anchor(reps: Tensor, base: Tensor, tau: float = 0.05) -> Tensor:
    """KL(base || model) of each text's softmax over its cosines to every other text of the batch.

    reps, base: (..., d), the same texts embedded by the model in training and by the frozen base model.
    Zero while the model ranks the batch as the base does; a rotation of the whole space costs nothing, so
    shorter Matryoshka cuts can be reorganised while the full-size ranking is held.
    """
    x, y = reps.reshape(-1, reps.shape[-1]), base.reshape(-1, base.shape[-1]).detach()
    self_pair = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    log_model = F.log_softmax((cos_sim(x, x) / tau).masked_fill(self_pair, float("-inf")), dim=-1)
    log_base = F.log_softmax((cos_sim(y, y) / tau).masked_fill(self_pair, float("-inf")), dim=-1)
    p_base = log_base.exp()
    kl = p_base * (log_base - log_model)
    return kl.masked_fill(self_pair, 0.0).sum(-1).mean()


def info_nce_hard(q: Tensor, p: Tensor, negatives: Tensor, tau: float = 0.05) -> Tensor:
    """Eq. 3 (L_triplet): every positive and every hard negative of the batch sit in each query's denominator,
    plus the reverse term (positive -> its query among all queries).

    q, p: (B, d); negatives: (B, m, d) with m >= 0.
    """
    b = q.shape[0]
    docs = torch.cat([p, negatives.reshape(-1, negatives.shape[-1])], dim=0)  # positives first
    target = torch.arange(b, device=q.device)
    forward = F.cross_entropy(cos_sim(q, docs) / tau, target)
    reverse = F.cross_entropy(cos_sim(p, q) / tau, target)
    return forward + reverse


def _ranked_pairs_loss(sims: Tensor, gold: Tensor, tau: float) -> Tensor:
    """ln(1 + sum over (i, j) with gold_i > gold_j of exp((s_j - s_i) / tau)), via a stable logsumexp."""
    diff = (sims[None, :] - sims[:, None]) / tau  # [i, j] = (s_j - s_i) / tau
    ordered = gold[:, None] > gold[None, :]
    terms = diff[ordered]
    zero = torch.zeros(1, dtype=terms.dtype, device=terms.device)
    return torch.logsumexp(torch.cat([zero, terms]), dim=0)


def cosent(a: Tensor, b: Tensor, scores: Tensor, tau: float = 0.05) -> Tensor:
    """Eq. 4 (CoSENT): every pair of pairs whose gold scores are ordered is penalised when the cosines are not."""
    sims = F.cosine_similarity(a.float(), b.float(), dim=-1)
    return _ranked_pairs_loss(sims, scores.to(sims.device, torch.float32), tau)


def separation_loss(x: Tensor, labels: Tensor, tau: float = 0.05) -> Tensor:
    """Eq. 5 (L_sep): all pairs of texts in the batch, gold 1 when they share a label and 0 when not, ranked
    CoSENT-style, so every same-label pair must score above every different-label pair."""
    n = x.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    sims = cos_sim(x, x)[i, j]
    labels = labels.to(x.device)
    gold = (labels[i] == labels[j]).float()
    return _ranked_pairs_loss(sims, gold, tau)


# The contrastive losses a training config names (`loss = ["info_nce", ...]`), and the record kinds each
# trains on (a file's kind follows from its fields, taskembed_train/data.py; the config says which loss it
# feeds). info_nce: pairs -> in-batch InfoNCE both ways; tuples -> Eq. 3 with the hard negatives.
LOSSES: dict[str, tuple[str, ...]] = {"info_nce": ("pairs", "tuples"), "cosent": ("scored",),
                                      "separation": ("labelled",)}


def loss_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """A config's `loss` (one name or a list) as a tuple of known names, or a clear error."""
    names = (value,) if isinstance(value, str) else tuple(value)
    unknown = [n for n in names if n not in LOSSES]
    if not names or unknown:
        raise ValueError(f"unknown loss {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                         + ", ".join(f"{n} ({' or '.join(k)} records)" for n, k in LOSSES.items()))
    return names


class Matryoshka:
    """Sum of `loss` over Matryoshka prefixes: every positional tensor argument is cut to its first d dims.

    Keyword arguments (scores, labels, tau) pass through unchanged. weights default to 1 for every dim.
    """

    def __init__(self, loss: Callable[..., Tensor], dims: Sequence[int], weights: Sequence[float] | None = None):
        if not dims:
            raise ValueError("Matryoshka needs at least one dimension")
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"got {len(weights)} Matryoshka weights for {len(dims)} dims")
        self.loss = loss
        self.dims = [int(d) for d in dims]
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(self.dims)

    def __call__(self, *embeddings: Tensor, **kwargs) -> Tensor:
        total = None
        for d, w in zip(self.dims, self.weights, strict=True):
            term = w * self.loss(*(e[..., :d] for e in embeddings), **kwargs)
            total = term if total is None else total + term
        return total


def matryoshka_dims(configured: Sequence[int] | None, hidden: int) -> list[int]:
    """The dims a loss is summed over: the configured ones that fit the model, plus the full width."""
    dims = sorted({int(d) for d in (configured or []) if 0 < int(d) <= hidden} | {hidden})
    return dims


# --- MLM ---------------------------------------------------------------------------------------------


def word_starts(vocab: dict[str, int], size: int) -> Tensor:
    """Bool per token id: does the token begin a word (Metaspace "▁" prefix)?

    Special tokens (<s>, </s>, <pad>, <mask>) count as word starts so a word never spans one.
    """
    starts = torch.zeros(size, dtype=torch.bool)
    for tok, idx in vocab.items():
        if idx < size and (tok.startswith("\u2581") or (tok.startswith("<") and tok.endswith(">"))):
            starts[idx] = True
    return starts


def whole_word_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    is_word_start: Tensor,
    special_ids: Sequence[int],
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT-style masking applied to whole words: -> (masked input ids, labels with IGNORE elsewhere).

    A word is a word-start token and the continuation pieces after it. Each word is picked with `prob`;
    its tokens are then replaced by <mask> (80%), a random token (10%) or kept (10%), one draw per word
    so a word is never half masked.
    """
    ids = input_ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in special_ids:
        special |= ids == s
    special |= ~attention_mask.bool()
    start = is_word_start.to(ids.device)[ids] | special
    # Word number of every token: cumulative count of word starts along the row.
    word = torch.cumsum(start.long(), dim=1) - 1
    n_words = int(word.max()) + 1 if word.numel() else 0
    b = ids.shape[0]
    draw = torch.rand((b, max(n_words, 1)), generator=generator)
    how = torch.rand((b, max(n_words, 1)), generator=generator)
    random_tok = torch.randint(0, vocab_size, ids.shape, generator=generator)
    word = word.clamp(min=0).cpu()
    picked = torch.gather(draw, 1, word) < prob
    picked = picked.to(ids.device) & ~special
    kind = torch.gather(how, 1, word).to(ids.device)
    labels = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    ids = torch.where(picked & (kind < 0.8), torch.full_like(ids, mask_id), ids)
    ids = torch.where(picked & (kind >= 0.8) & (kind < 0.9), random_tok.to(ids.device), ids)
    return ids, labels


def mlm_loss(logits: Tensor, labels: Tensor, num_targets: float | None = None) -> Tensor:
    """Cross-entropy over masked positions; divided by `num_targets` when given (e.g. the global count
    across ranks and micro-batches, so accumulated gradients equal one big batch's mean), else their mean."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    n = num_targets if num_targets is not None else max(int((labels != IGNORE).sum()), 1)
    return flat / n
