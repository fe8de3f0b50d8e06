"""The encoder of jina-embeddings-v3, top to bottom as the paper describes it.

XLM-RoBERTa with its learned absolute positions removed and rotary positions added to every attention
layer (NeoX "rotate half" layout, full head dim). Post-LayerNorm blocks, fused QKV, exact GELU MLP.
Every Linear and Embedding carries stacked task LoRA factors; each input row picks its adapter through
`task_ids` (-1 = base weights). Module names follow the official checkpoint, so the state dict maps onto
it one to one (see checkpoint.py).

With `position_embedding_type = "absolute"` the same encoder keeps XLM-R's learned position table instead
of rotary positions (as the official code allows), so XLM-R / BERT checkpoints such as multilingual-e5 run
unchanged; texts longer than the table are read in windows by the Embedder.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import EncoderConfig
from .lora import LORA_MODULES, NO_TASK, LoRAEmbedding, LoRALinear, Spans, add_slot, merge_task, quantize_int8


@dataclass
class Packed:
    """Sequences laid end to end on one token axis, with no padding anywhere.

    Linear layers then see only real tokens, and attention runs per sequence without a mask (so PyTorch
    can pick its flash / memory-efficient kernels and never builds an L x L mask).
    """

    seqlens: list[int]
    offsets: Tensor  # (N + 1,) start of each sequence, then the total
    positions: Tensor  # (T,) rotary position of each token, restarting at 0 per sequence
    spans: Spans  # (task, start, end): token ranges that share one adapter
    rotary_tables: dict = field(default_factory=dict, repr=False, compare=False)  # Rotary.packed_tables

    @classmethod
    def build(cls, seqlens: list[int], tasks: list[int], device: torch.device) -> Packed:
        offsets = [0]
        for n in seqlens:
            offsets.append(offsets[-1] + n)
        positions = torch.cat([torch.arange(n, device=device) for n in seqlens])
        spans: Spans = []
        for i, t in enumerate(tasks):
            s, e = offsets[i], offsets[i + 1]
            if spans and spans[-1][0] == t and spans[-1][2] == s:
                spans[-1] = (t, spans[-1][1], e)
            else:
                spans.append((t, s, e))
        return cls(list(seqlens), torch.tensor(offsets, device=device), positions, spans)


def _act(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


# --- 1. Embeddings: word + token type (+ learned positions when absolute; rotary lives in attention) --


def position_ids(input_ids: Tensor, pad_id: int, seqlens: list[int] | None = None) -> Tensor:
    """XLM-R position ids: real tokens count from pad_id + 1, pad tokens get pad_id (the official
    create_position_ids_from_input_ids). input_ids is (B, L), or (T,) packed with `seqlens`."""
    real = input_ids.ne(pad_id).long()
    if seqlens is None:
        return torch.cumsum(real, dim=1) * real + pad_id
    lens = torch.tensor(seqlens, device=input_ids.device)
    counts = torch.cumsum(real, dim=0)
    ends = counts[lens.cumsum(0) - 1]
    before = torch.cat([ends.new_zeros(1), ends[:-1]])  # real tokens of the sequences in front
    return (counts - torch.repeat_interleave(before, lens)) * real + pad_id


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        n_tasks, r, a = len(cfg.lora_adaptations), cfg.lora_rank, cfg.lora_alpha
        self.pad_id = cfg.pad_token_id
        self.word_embeddings = LoRAEmbedding(cfg.vocab_size, cfg.hidden_size, n_tasks, r, a, cfg.pad_token_id)
        # The official code wraps every Embedding in LoRA, the position table too, but looks positions up
        # without a task: its factors are kept for the checkpoint and never applied (nor merged).
        self.position_embeddings = (
            LoRAEmbedding(cfg.max_position_embeddings, cfg.hidden_size, n_tasks, r, a)
            if cfg.position_embedding_type == "absolute" else None
        )
        self.token_type_embeddings = LoRAEmbedding(cfg.type_vocab_size, cfg.hidden_size, n_tasks, r, a)

    def forward(self, input_ids: Tensor, task_ids: Tensor | Spans | None, seqlens: list[int] | None = None) -> Tensor:
        if self.position_embeddings is not None:
            longest = max(seqlens) if seqlens is not None else input_ids.shape[-1]
            reach = self.position_embeddings.num_embeddings - self.pad_id - 1
            if longest > reach:
                raise ValueError(
                    f"a sequence of {longest} tokens is longer than the learned position table ({reach} "
                    "tokens); Embedder.encode reads longer texts in windows"
                )
        token_type = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids, task_ids) + self.token_type_embeddings(token_type, task_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids(input_ids, self.pad_id, seqlens))
        return x

    def tables(self) -> list[LoRAEmbedding]:
        tables = (self.word_embeddings, self.position_embeddings, self.token_type_embeddings)
        return [t for t in tables if t is not None]


# --- 2. Rotary position embedding ----------------------------------------------------------------


class Rotary(nn.Module):
    """cos/sin tables for positions 0..L-1, computed in fp32 and cached per (length, device, dtype).

    Kept out of the state dict on purpose: the official checkpoint has no rotary buffers, and the base
    is a run-time choice (10000 for training, 20000 for inference).
    """

    def __init__(self, head_dim: int, base: float, rotary_dim: int | None = None, interleaved: bool = False) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        # Partial rotary: only the first rotary_dim dims of a head turn; the frequencies are spread over
        # rotary_dim (as in the official code), not over the head dim.
        self.rotary_dim = head_dim if rotary_dim is None else rotary_dim
        self.interleaved = interleaved
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def set_base(self, base: float) -> None:
        self.base = base
        self._cache.clear()

    def tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(cos, sin) for positions 0..length-1: cos over the rotated dims (L, R), sin over half (L, R/2)."""
        key = (device, dtype)
        hit = self._cache.get(key)
        # Tables made under inference_mode (an encode() between training steps) cannot enter autograd;
        # rebuilt ones serve both modes.
        stale = hit is not None and hit[0].is_inference() and not torch.is_inference_mode_enabled()
        if hit is None or hit[0].shape[0] < length or stale:
            n = max(length, 512)
            dim = self.rotary_dim
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
            t = torch.arange(n, device=device, dtype=torch.float32)
            freqs = torch.outer(t, inv_freq)
            cos = torch.cos(freqs)
            hit = (torch.cat((cos, cos), dim=-1).to(dtype), torch.sin(freqs).to(dtype))
            self._cache[key] = hit
        return hit[0][:length], hit[1][:length]

    def packed_tables(self, packed: Packed, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Per-token (cos, sin) of a packed batch: gathered once per forward pass, shared by every layer."""
        key = (device, dtype, self.base)
        hit = packed.rotary_tables.get(key)
        if hit is None:
            cos, sin = self.tables(max(packed.seqlens), device, dtype)
            hit = packed.rotary_tables[key] = (cos[packed.positions], sin[packed.positions])
        return hit

    def forward(self, x: Tensor, packed: Packed | None = None) -> Tensor:
        """x*cos + rotate_half(x)*sin on the first rotary_dim dims of each head (NeoX halves, or GPT-J
        interleaved pairs); the other dims pass through.

        x is (..., L, D) with positions 0..L-1 (Q and K may be stacked in the leading dims), or with
        `packed`, (T, ..., D) with the batch's per-token positions.
        """
        if self.rotary_dim == 0:  # the official code then builds no rotary at all
            return x
        if packed is None:
            cos, sin = self.tables(x.shape[-2], x.device, x.dtype)
        else:
            cos, sin = self.packed_tables(packed, x.device, x.dtype)
            shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (-1,)
            cos, sin = cos.view(shape), sin.view(shape)
        if self.interleaved or self.rotary_dim != self.head_dim:
            return self._rotate_general(x, cos, sin)
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return x * cos + torch.cat((-x2 * sin, x1 * sin), dim=-1)
        # Same arithmetic as the line above (each product rounded, then added), without its three
        # full-size temporaries: this runs on Q and K of every layer.
        out = x * cos
        out[..., :h].addcmul_(x2, sin, value=-1)
        out[..., h:].addcmul_(x1, sin)
        return out

    def _rotate_general(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Partial and/or interleaved rotation; the same products and sums as the NeoX path."""
        r = self.rotary_dim
        rot, rest = x[..., :r], x[..., r:]
        if self.interleaved:
            c = cos[..., : r // 2]  # cos is stored twice over (NeoX layout); one copy per pair here
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack((x1 * c - x2 * sin, x2 * c + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
            rot = rot * cos + torch.cat((-x2 * sin, x1 * sin), dim=-1)
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


# --- 3. Attention: fused QKV, rotary on Q and K, SDPA with a key-padding mask ---------------------


class Attention(nn.Module):
    # Packed attention through jagged nested tensors: None = on CUDA only (a per-sequence loop on CPU).
    nested_attention: bool | None = None

    def __init__(self, cfg: EncoderConfig, rotary: Rotary | None) -> None:
        super().__init__()
        n_tasks, r, a = len(cfg.lora_adaptations), cfg.lora_rank, cfg.lora_alpha
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.Wqkv = LoRALinear(cfg.hidden_size, 3 * cfg.hidden_size, n_tasks, r, a, dropout=cfg.lora_dropout_p)
        self.out_proj = LoRALinear(cfg.hidden_size, cfg.hidden_size, n_tasks, r, a, dropout=cfg.lora_dropout_p)
        self.dropout_p = cfg.attention_probs_dropout_prob
        self.rotary = rotary

    def forward(self, x: Tensor, key_mask: Tensor | Packed | None, task_ids: Tensor | Spans | None) -> Tensor:
        if isinstance(key_mask, Packed):
            return self._forward_packed(x, key_mask)
        b, n, _ = x.shape
        # Output rows are laid out (3, heads, head_dim): Q block, then K, then V.
        qkv = self.Wqkv(x, task_ids).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        qk = self.rotary(qkv[:2]) if self.rotary is not None else qkv[:2]  # Q and K in one pass
        q, k, v = qk[0], qk[1], qkv[2]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.out_proj(out, task_ids)

    def _forward_packed(self, x: Tensor, packed: Packed) -> Tensor:
        t = x.shape[0]
        qkv = self.Wqkv(x, packed.spans).view(t, 3, self.num_heads, self.head_dim)
        qk = self.rotary(qkv[:, :2], packed) if self.rotary is not None else qkv[:, :2]
        q, k, v = qk[:, 0], qk[:, 1], qkv[:, 2]
        dropout = self.dropout_p if self.training else 0.0
        if self.nested_attention if self.nested_attention is not None else x.is_cuda:
            # Jagged nested tensors reach the varlen flash / memory-efficient kernels in one call.
            def jag(z: Tensor) -> Tensor:
                return torch.nested.nested_tensor_from_jagged(z.contiguous(), packed.offsets).transpose(1, 2)

            out = F.scaled_dot_product_attention(jag(q), jag(k), jag(v), dropout_p=dropout)
            out = out.transpose(1, 2).values()
        else:
            # On CPU one unmasked call per sequence takes the flash kernel; its cost is per token anyway.
            outs, start = [], 0
            for n in packed.seqlens:
                sl = slice(start, start + n)
                # 4-D (1, H, L, D): the CPU flash kernel takes only 4-D input; 3-D falls back to the math path.
                qs, ks, vs = (z[sl].transpose(0, 1).unsqueeze(0) for z in (q, k, v))
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout)[0].transpose(0, 1))
                start += n
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return self.out_proj(out.reshape(t, self.num_heads * self.head_dim), packed.spans)


# --- 4. MLP and the post-LN block ------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        n_tasks, r, a = len(cfg.lora_adaptations), cfg.lora_rank, cfg.lora_alpha
        self.fc1 = LoRALinear(cfg.hidden_size, cfg.intermediate_size, n_tasks, r, a, dropout=cfg.lora_dropout_p)
        self.fc2 = LoRALinear(cfg.intermediate_size, cfg.hidden_size, n_tasks, r, a, dropout=cfg.lora_dropout_p)
        self.act = _act(cfg.hidden_act)

    def forward(self, x: Tensor, task_ids: Tensor | Spans | None) -> Tensor:
        return self.fc2(self.act(self.fc1(x, task_ids)), task_ids)


class Block(nn.Module):
    """h = LN(x + Attn(x)); y = LN(h + MLP(h)): BERT's post-LN order."""

    def __init__(self, cfg: EncoderConfig, rotary: Rotary | None) -> None:
        super().__init__()
        self.mixer = Attention(cfg, rotary)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, key_mask: Tensor | Packed | None, task_ids: Tensor | Spans | None) -> Tensor:
        x = self.norm1(x + self.dropout(self.mixer(x, key_mask, task_ids)))
        return self.norm2(x + self.dropout(self.mlp(x, task_ids)))


class Layers(nn.Module):
    def __init__(self, cfg: EncoderConfig, rotary: Rotary | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg, rotary) for _ in range(cfg.num_hidden_layers))


class Pooler(nn.Module):
    """tanh(dense(first token)): in the official checkpoint and LoRA-wrapped, unused for embeddings."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        n_tasks, r, a = len(cfg.lora_adaptations), cfg.lora_rank, cfg.lora_alpha
        self.dense = LoRALinear(cfg.hidden_size, cfg.hidden_size, n_tasks, r, a)

    def forward(self, hidden: Tensor, task_ids: Tensor | None) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0], task_ids))


# --- 5. The encoder --------------------------------------------------------------------------------


class Encoder(nn.Module):
    """input ids (B, L) + attention mask (B, L) + task ids (B,) -> last hidden states (B, L, H)."""

    def __init__(self, cfg: EncoderConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = cfg
        self.rotary = Rotary(cfg.head_dim, cfg.rotary_emb_base, cfg.rotary_dim, cfg.rotary_emb_interleaved)
        self.embeddings = Embeddings(cfg)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.emb_drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.encoder = Layers(cfg, self.rotary if cfg.position_embedding_type == "rotary" else None)
        self.pooler = Pooler(cfg) if add_pooling_layer else None
        self.gradient_checkpointing = False
        # Set on merged copies (see merged()): the task whose embedding adapter runs as a side path.
        self.embedding_task: int | None = None

    @property
    def rotary_emb_base(self) -> float:
        return self.rotary.base

    @rotary_emb_base.setter
    def rotary_emb_base(self, base: float) -> None:
        self.rotary.set_base(base)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        task_ids: Tensor | None = None,
    ) -> Tensor:
        if task_ids is not None:
            task_ids = task_ids.to(device=input_ids.device, dtype=torch.long)
        x = self.embed(input_ids, task_ids)
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Boolean (B, 1, 1, L): padded keys are never attended to. Padded query rows still get
            # finite values, and pooling ignores them.
            key_mask = attention_mask.bool()[:, None, None, :]
        return self._blocks(x, key_mask, task_ids)

    def forward_packed(self, input_ids: Tensor, seqlens: list[int], tasks: list[int],
                       between: Callable[[], None] | None = None) -> Tensor:
        """Unpadded forward: input_ids (T,) holds the sequences end to end; tasks has one id per sequence.

        Returns hidden states (T, H) on the same token axis. Same numbers as the padded forward on each
        sequence's real tokens, without computing anything for padding. `between` is called after every
        layer but the last (a server runs other requests' passes there, so a long pass cannot hold them up).
        """
        if sum(seqlens) != input_ids.shape[0] or len(tasks) != len(seqlens):
            raise ValueError("forward_packed: seqlens must sum to the token count, with one task per sequence")
        packed = Packed.build(seqlens, [int(t) if t >= 0 else NO_TASK for t in tasks], input_ids.device)
        x = self.embed(input_ids, packed.spans, seqlens)
        return self._blocks(x, packed, packed.spans, between)

    def _blocks(self, x: Tensor, layout: Tensor | Packed | None, task_ids: Tensor | Spans | None,
                between: Callable[[], None] | None = None) -> Tensor:
        last = len(self.encoder.layers) - 1
        for i, block in enumerate(self.encoder.layers):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, layout, task_ids, use_reentrant=False)
            else:
                x = block(x, layout, task_ids)
            if between is not None and i < last:
                between()
        return x

    def merged(self, task: int) -> Encoder:
        """A copy with adapter `task` folded into the Linear weights; run it with task_ids=None.

        The embeddings (half the parameters at full size) and the rotary tables are shared with this model,
        not copied: the copy costs the transformer layers only, and the embedding adapter (a lookup, cheap)
        keeps running as a side path for `task`.
        """
        memo = {id(self.embeddings): self.embeddings, id(self.rotary): self.rotary}
        clone = copy.deepcopy(self, memo)
        clone.embedding_task = task
        body = [clone.encoder] + ([clone.pooler] if clone.pooler is not None else [])
        for part in body:
            quantized = [m for m in part.modules() if getattr(m, "int8", None) is not None]
            for m in quantized:  # the int8 copies hold the unmerged weights: rebuild them after merging
                m.__dict__["int8"] = None
            merge_task(part, task)
            if quantized:
                quantize_int8(part)
        return clone

    def embed(self, input_ids: Tensor, task_ids: Tensor | Spans | None, seqlens: list[int] | None = None) -> Tensor:
        """Embedding sum, LayerNorm and dropout; a merged copy applies its own task's embedding adapter.
        Packed input (T,) comes with its `seqlens` (the position table restarts per sequence)."""
        if self.embedding_task is not None:
            n = input_ids.shape[0]
            task_ids = [(self.embedding_task, 0, n)] if input_ids.dim() == 1 else input_ids.new_full(
                (n,), self.embedding_task)
        if input_ids.dim() == 1 and seqlens is None:
            seqlens = [input_ids.shape[0]]
        return self.emb_drop(self.emb_ln(self.embeddings(input_ids, task_ids, seqlens)))

    @torch.no_grad()
    def permute_hidden(self, order: Tensor | list[int]) -> None:
        """Reorder the hidden channels in place, so that the model's outputs become `out[..., order]`.

        LayerNorm, attention and mean pooling treat the residual channels alike, so this is an exact
        reparametrisation; Matryoshka truncation keeps the leading channels, so moving the informative ones
        to the front raises the scores of short vectors (taskembed_train/reorder.py chooses the order).
        """
        h = self.config.hidden_size
        idx = torch.as_tensor(order, dtype=torch.long, device=self.emb_ln.weight.device)
        if idx.shape != (h,) or not torch.equal(idx.sort().values, torch.arange(h, device=idx.device)):
            raise ValueError(f"order must be a permutation of range({h})")

        def take(t: Tensor, dim: int) -> None:
            t.copy_(t.index_select(dim, idx.to(t.device)))

        for table in self.embeddings.tables():
            take(table.weight, 1)
            take(table.lora_B, 2)
        layers = list(self.encoder.layers)
        norms = [self.emb_ln] + [n for layer in layers for n in (layer.norm1, layer.norm2)]
        readers = [m for layer in layers for m in (layer.mixer.Wqkv, layer.mlp.fc1)]
        writers = [m for layer in layers for m in (layer.mixer.out_proj, layer.mlp.fc2)]
        if self.pooler is not None:
            readers.append(self.pooler.dense)  # its output is not a residual channel: left as it is
        for n in norms:
            take(n.weight, 0)
            take(n.bias, 0)
        for m in readers:
            take(m.weight, 1)
            take(m.lora_A, 2)
        for m in writers:
            take(m.weight, 0)
            take(m.bias, 0)
            take(m.lora_B, 1)

    def add_task(self, name: str, instruction: str = "") -> int:
        """Add a new task adapter slot (a no-op until trained); returns its task index.

        The stacked factors grow by one along the task axis, so the model saves and loads in the official
        layout with one more entry in `lora_adaptations`.
        """
        if not name or not isinstance(name, str):
            raise ValueError("a task needs a non-empty name")
        if name in self.config.lora_adaptations:
            raise ValueError(f"task {name!r} already exists; tasks: {self.config.lora_adaptations}")
        for m in self.modules():
            if isinstance(m, LORA_MODULES):
                index = add_slot(m)
        self.config.lora_adaptations.append(name)
        self.config.task_instructions[name] = instruction
        return index

    def num_parameters(self) -> dict[str, int]:
        lora = sum(
            m.lora_A.numel() + m.lora_B.numel()
            for m in self.modules()
            if isinstance(m, LoRALinear | LoRAEmbedding)
        )
        total = sum(p.numel() for p in self.parameters())
        n_tasks = len(self.config.lora_adaptations)
        return {"base": total - lora, "per_adapter": lora // max(n_tasks, 1), "adapters": lora, "total": total}
