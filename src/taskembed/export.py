"""ONNX export: one graph per task, with that adapter merged into the weights (no LoRA inputs or routing).

    taskembed export --model DIR --task retrieval.passage --format onnx --output model.onnx [--int8]

Inputs `input_ids` and `attention_mask` (int64, batch x length, right-padded); outputs `text_embeds`
(token states, batch x length x hidden) and `sentence_embedding` (fp32 masked mean, batch x hidden, not
normalised: cut to a Matryoshka size, then L2-normalise). The caller prepends the task's instruction
prefix (kept in the graph's metadata as `task_instruction`). With --int8, ONNX Runtime's dynamic int8
(per-channel weights), except for the input channels with outlier magnitudes, found on the package's sample
passages as `load(..., int8=True)` finds them, which stay in float. Needs `pip install onnx onnxruntime`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from .embedder import Embedder, mean_pool
from .lora import LoRALinear, outlier_channels, split_columns


class _SplitLinear(nn.Module):
    """Export-time stand-in for a merged Linear before int8: the calibrated outlier input channels (see
    lora.Int8Linear) leave the quantised product through a mask and take a small float MatMul of their own,
    which quantisation is told to skip (its input comes from a Gather)."""

    def __init__(self, m: LoRALinear, keep: Tensor) -> None:
        super().__init__()
        self.register_buffer("outliers", keep)
        mask = torch.ones(m.in_features)
        mask[keep] = 0
        self.register_buffer("mask", mask)
        self.main = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        self.side = nn.Linear(keep.numel(), m.out_features, bias=False)
        main, side = split_columns(m.weight, keep)
        with torch.no_grad():
            self.main.weight.copy_(main)
            if m.bias is not None:
                self.main.bias.copy_(m.bias.detach().float())
            self.side.weight.copy_(side)

    def forward(self, x: Tensor, task_ids: object = None) -> Tensor:
        return self.main(x * self.mask) + self.side(x.index_select(-1, self.outliers))


class _SentenceGraph(nn.Module):
    def __init__(self, emb: Embedder, task: str | None, split_outliers: bool = False) -> None:
        super().__init__()
        index = None if task is None else emb.task_index(task)
        self.model = emb.model.merged(index) if index is not None else emb.model
        if split_outliers:
            if self.model is emb.model:
                self.model = copy.deepcopy(emb.model)
            for parent in list(self.model.modules()):
                for name, child in list(parent.named_children()):
                    keep = outlier_channels(child.__dict__.get("act_absmax")) if isinstance(child, LoRALinear) else None
                    if keep is not None:
                        setattr(parent, name, _SplitLinear(child, keep))
        self.model.eval()
        # Tables for every position up front, so the graph slices constants instead of rebuilding them.
        self.model.rotary.tables(emb.config.max_position_embeddings, torch.device("cpu"), torch.float32)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        x = m.embed(input_ids, None)
        hidden = m._blocks(x, attention_mask.bool()[:, None, None, :], None)
        return hidden, mean_pool(hidden, attention_mask)


def export_onnx(emb: Embedder, task: str | None, path: str | Path, int8: bool = False, opset: int = 17) -> Path:
    """Write the graph for `task` (None = base weights) to `path`; with int8, ONNX Runtime's dynamic int8."""
    if emb.quantized:
        raise ValueError("export from the float model (load it without int8); pass int8=True to quantise the graph")
    try:
        import onnx
    except ModuleNotFoundError:
        raise ValueError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if int8:  # find the outlier input channels, as load(..., int8=True) does
        emb.calibrate_int8()
    graph = _SentenceGraph(emb, task, split_outliers=int8).to("cpu", torch.float32)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = (ids != emb.config.pad_token_id).long()
    float_path = path.with_suffix(".fp32.onnx") if int8 else path
    with torch.no_grad():
        torch.onnx.export(
            graph, (ids, mask), str(float_path), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=["text_embeds", "sentence_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                          "text_embeds": {0: "batch", 1: "length"}, "sentence_embedding": {0: "batch"}},
        )
    proto = onnx.load(str(float_path))
    meta = {"task": task or "", "task_instruction": emb.config.task_instructions.get(task, "") if task else "",
            "matryoshka_dimensions": ",".join(map(str, emb.dimensions)), "producer": "taskembed"}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(float_path))
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        made_by = {out: node for node in proto.graph.node for out in node.output}
        float_side = [n.name for n in proto.graph.node if n.op_type == "MatMul"
                      and getattr(made_by.get(n.input[0]), "op_type", "") == "Gather"]
        quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=float_side)
        float_path.unlink()
    return path


def main(argv: list[str] | None = None) -> int:
    from . import load

    ap = argparse.ArgumentParser(prog="taskembed export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder or Hugging Face hub id (default: the bundled model)")
    ap.add_argument("--task", help="adapter to merge into the graph (default: base weights)")
    ap.add_argument("--format", default="onnx", choices=["onnx"])
    ap.add_argument("--output", required=True, help="output .onnx file")
    ap.add_argument("--int8", action="store_true", help="dynamic int8 weights (ONNX Runtime quantisation)")
    args = ap.parse_args(argv)
    try:
        out = export_onnx(load(args.model), args.task, args.output, int8=args.int8)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0
