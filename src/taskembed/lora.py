"""Task LoRA: stacked low-rank factors, one slice per task, routed per input row.

The official model wraps every nn.Linear and nn.Embedding with a parametrization that holds
`lora_A` and `lora_B` with a leading task axis. For adapter t the effective weight is

    Linear:    W + s * B[t] @ A[t]      A: (T, r, in),  B: (T, out, r)
    Embedding: W + s * A[t] @ B[t]      A: (T, num, r), B: (T, r, dim)   (factor order swapped)

with s = lora_alpha / lora_rank. Rather than materialising W + s*dW per row group as the official code
does, we add the low-rank path x @ A^T @ B^T, which is the same sum and costs O(r) per token; rows whose
task id is -1 get the base weights only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NO_TASK = -1

# Routing for packed (unpadded) input: token ranges [start, end) of the flat token axis that share one task.
Spans = list[tuple[int, int, int]]


def _rows_single_task(task_ids: Tensor | None) -> int | None:
    """The one task id shared by every row, or None when the rows differ."""
    if task_ids is None:
        return NO_TASK
    if task_ids.numel() == 0:
        return NO_TASK
    first = int(task_ids[0])
    if bool((task_ids == first).all()):
        return first
    return None


def _add_spans(out: Tensor, spans: Spans, delta, scaling: float) -> Tensor:
    """Packed input: add each span's low-rank path; spans with task -1 keep the base weights."""
    if all(t == NO_TASK for t, _, _ in spans):
        return out
    parts, pos = [], 0
    for t, s, e in spans:
        if s > pos:
            parts.append(out[pos:s])
        parts.append(out[s:e] if t == NO_TASK else out[s:e] + scaling * delta(t, s, e))
        pos = e
    if pos < out.shape[0]:
        parts.append(out[pos:])
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class LoRALinear(nn.Module):
    """nn.Linear with stacked task factors; weight is (out, in) like nn.Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_tasks: int,
        rank: int,
        alpha: float,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scaling = alpha / rank
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.lora_A = nn.Parameter(torch.empty(num_tasks, rank, in_features))
        self.lora_B = nn.Parameter(torch.empty(num_tasks, out_features, rank))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Optional int8 copy of the base weight (see quantize_int8); the LoRA path stays in float.
        self.int8: nn.Module | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.reset_lora()

    def reset_lora(self, task: int | None = None) -> None:
        """Official init: A kaiming-uniform, B zero, so the adapter starts as a no-op."""
        tasks = range(self.lora_A.shape[0]) if task is None else [task]
        with torch.no_grad():
            for t in tasks:
                nn.init.kaiming_uniform_(self.lora_A[t], a=math.sqrt(5))
                self.lora_B[t].zero_()

    def delta_weight(self, task: int) -> Tensor:
        return self.scaling * (self.lora_B[task] @ self.lora_A[task])

    def forward(self, x: Tensor, task_ids: Tensor | Spans | None = None) -> Tensor:
        out = F.linear(x, self.weight, self.bias) if self.int8 is None else self.int8(x)
        if isinstance(task_ids, list):
            return _add_spans(out, task_ids, lambda t, s, e: F.linear(
                F.linear(self.lora_dropout(x[s:e]), self.lora_A[t]), self.lora_B[t]), self.scaling)
        single = _rows_single_task(task_ids)
        if single == NO_TASK:
            return out
        x = self.lora_dropout(x)
        if single is not None:
            return out + self.scaling * F.linear(F.linear(x, self.lora_A[single]), self.lora_B[single])
        # Mixed tasks: gather each row's factors; rows without a task are zeroed after the fact.
        # x is (B, L, in) here, or (B, in) for one vector per row (the pooler); task_ids (B,).
        idx = task_ids.clamp(min=0)
        x3 = x.unsqueeze(1) if x.dim() == 2 else x
        xa = torch.bmm(x3, self.lora_A[idx].transpose(1, 2))
        delta = torch.bmm(xa, self.lora_B[idx].transpose(1, 2)).view(out.shape)
        keep = (task_ids >= 0).to(delta.dtype).view(-1, *[1] * (delta.dim() - 1))
        return out + self.scaling * delta * keep


class LoRAEmbedding(nn.Module):
    """nn.Embedding with stacked task factors (A: (T, num, r), B: (T, r, dim))."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_tasks: int,
        rank: int,
        alpha: float,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.scaling = alpha / rank
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.lora_A = nn.Parameter(torch.empty(num_tasks, num_embeddings, rank))
        self.lora_B = nn.Parameter(torch.empty(num_tasks, rank, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        nn.init.normal_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()
        self.reset_lora()

    def reset_lora(self, task: int | None = None) -> None:
        """Official init for embeddings: A zero, B standard normal."""
        tasks = range(self.lora_A.shape[0]) if task is None else [task]
        with torch.no_grad():
            for t in tasks:
                self.lora_A[t].zero_()
                nn.init.normal_(self.lora_B[t])

    def delta_weight(self, task: int) -> Tensor:
        return self.scaling * (self.lora_A[task] @ self.lora_B[task])

    def forward(self, ids: Tensor, task_ids: Tensor | Spans | None = None) -> Tensor:
        out = F.embedding(ids, self.weight, self.padding_idx)
        if isinstance(task_ids, list):
            return _add_spans(out, task_ids, lambda t, s, e: F.embedding(ids[s:e], self.lora_A[t]) @ self.lora_B[t],
                              self.scaling)
        single = _rows_single_task(task_ids)
        if single == NO_TASK:
            return out
        if single is not None:
            return out + self.scaling * (F.embedding(ids, self.lora_A[single]) @ self.lora_B[single])
        idx = task_ids.clamp(min=0)
        a = self.lora_A[idx.unsqueeze(1), ids]  # (B, L, r)
        delta = torch.bmm(a, self.lora_B[idx])  # (B, L, dim)
        keep = (task_ids >= 0).to(delta.dtype).view(-1, 1, 1)
        return out + self.scaling * delta * keep


LORA_MODULES = (LoRALinear, LoRAEmbedding)


def add_slot(module: LoRALinear | LoRAEmbedding) -> int:
    """Append one task slot to the stacked factors, initialised as a no-op like the official init."""
    a, b = module.lora_A, module.lora_B
    module.lora_A = nn.Parameter(torch.cat([a.data, a.data.new_empty((1, *a.shape[1:]))]), a.requires_grad)
    module.lora_B = nn.Parameter(torch.cat([b.data, b.data.new_empty((1, *b.shape[1:]))]), b.requires_grad)
    index = module.lora_A.shape[0] - 1
    module.reset_lora(index)
    return index


# int8 keeps a Linear input channel in float when its calibrated magnitude is this many times the median
# channel's: one such channel (GELU outputs reach 50x the typical value) would otherwise set the per-tensor
# activation scale and leave the other channels a handful of int8 levels. At most this many per layer.
OUTLIER_RATIO = 6.0
MAX_OUTLIERS = 8


def outlier_channels(absmax: Tensor | None) -> Tensor | None:
    """The input channels int8 keeps in float, from a layer's calibrated per-channel magnitudes."""
    if absmax is None:
        return None
    top = absmax.topk(min(MAX_OUTLIERS, absmax.numel()))
    keep = top.indices[top.values > OUTLIER_RATIO * absmax.median()]
    return keep if keep.numel() else None


def split_columns(weight: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(weight with the `keep` input columns zeroed, those columns): the int8 and the float part, in fp32."""
    main = weight.detach().float().clone()
    side = main[:, keep].clone()
    main[:, keep] = 0
    return main, side


class Int8Linear(nn.Module):
    """Dynamic int8 Linear (per-channel weights, per-batch activation scale) whose outlier input channels
    run in float beside it, as LLM.int8() does; the channels come from calibration (record_input_absmax)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, absmax: Tensor | None) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        self.outliers = outlier_channels(absmax)
        self.outlier_weight_t: Tensor | None = None  # (outliers, out)
        if self.outliers is None:
            weight = weight.detach().float()
        else:
            weight, side = split_columns(weight, self.outliers)
            self.outlier_weight_t = side.t().contiguous()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias.detach().float())
        linear.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():  # torch 2.13 flags quantized tensors as deprecated; pinned, so fine
            warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*deprecated")
            self.q = DynamicInt8Linear.from_float(linear)

    def forward(self, x: Tensor) -> Tensor:
        if self.outliers is None:
            return self.q(x)
        out = self.q(x.index_fill(-1, self.outliers, 0))
        # Accumulate the float channels into the int8 result in place: no output-sized temporary.
        out.view(-1, out.shape[-1]).addmm_(x[..., self.outliers].reshape(-1, self.outliers.numel()),
                                           self.outlier_weight_t)
        return out


def record_input_absmax(model: nn.Module, run: Callable[[], object]) -> None:
    """Call `run()` and keep each LoRA Linear's largest input magnitude per channel (int8 calibration).

    The statistics sit beside the module (not in its state dict) and follow it into merged copies.
    """
    seen: dict[LoRALinear, Tensor] = {}

    def hook(module: LoRALinear, args: tuple, _out: Tensor) -> None:
        a = args[0].detach().abs().reshape(-1, module.in_features).amax(0).float()
        seen[module] = torch.maximum(seen[module], a) if module in seen else a

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LoRALinear)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    for m, a in seen.items():
        m.__dict__["act_absmax"] = a


def quantize_int8(model: nn.Module) -> None:
    """Give every LoRA Linear an int8 copy of its base weight (Int8Linear); adapters keep their float side
    path, so mixed-task batches still work. Uses the calibration of record_input_absmax where present. CPU."""
    for m in model.modules():
        if isinstance(m, LoRALinear) and m.int8 is None:
            # Stored outside the module registry: the state dict and save() keep the float weights only.
            m.__dict__["int8"] = Int8Linear(m.weight, m.bias, m.__dict__.get("act_absmax"))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All task factors of a model, e.g. to train adapters on a frozen base."""
    return [p for m in model.modules() if isinstance(m, LORA_MODULES) for p in (m.lora_A, m.lora_B)]


def merge_task(model: nn.Module, task: int) -> None:
    """Fold adapter `task` into the base weights in place (then run the model with task_ids=None).

    Serving one task this way has no LoRA side path at all; the factors stay in place, so a merged model
    must not be asked for other tasks (copy it first; see Encoder.merged).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LORA_MODULES):
                if not 0 <= task < m.lora_A.shape[0]:
                    raise ValueError(f"task index {task} out of range 0..{m.lora_A.shape[0] - 1}")
                m.weight += m.delta_weight(task).to(m.weight.dtype)
