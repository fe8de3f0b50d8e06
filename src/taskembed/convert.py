"""`taskembed convert`: an absolute-position XLM-R / BERT checkpoint (Hugging Face layout) -> our layout.

Query, key and value are fused into Wqkv (rows Q, K, V), names follow spec §6 and fresh no-op LoRA adapters
are added. By default the learned position embeddings are dropped (rotary positions replace them, as in the
paper: the model then needs training); `--positions absolute` keeps the table, so the converted model gives
the original's outputs exactly. BERT numbers positions from 0 and XLM-R from pad_token_id + 1, so a BERT
table gets pad_token_id + 1 unused leading rows. An MLM head, if present, is written beside the model as
lm_head.safetensors for `train mlm`.

    taskembed convert HF_DIR OUT_DIR [--positions absolute]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import PREFIX, CheckpointError, to_official_name
from .config import TASK_INSTRUCTIONS, TASKS, EncoderConfig
from .encoder import Encoder
from .lora import LORA_MODULES

_LAYER_MAP = {
    "attention.output.dense": "mixer.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "norm2",
}
_HEAD_MAP = {  # HF name (XLM-R lm_head / BERT cls.predictions) -> our LMHead name
    "lm_head.dense.": "lm_head.dense.",
    "lm_head.layer_norm.": "lm_head.layer_norm.",
    "lm_head.bias": "lm_head.bias",
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.bias": "lm_head.bias",
}
_DROPPED = ("embeddings.position_embeddings.", "embeddings.position_ids", "embeddings.token_type_ids",
            "lm_head.decoder.", "cls.predictions.decoder.", "cls.seq_relationship.")


def _norm_leaf(name: str) -> str:
    # Old TF-converted BERT files call LayerNorm parameters gamma/beta.
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(str(path / f)))
        return out
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"no model.safetensors (or shard index, or pytorch_model.bin) in {path}")


def convert_state(
    hf: dict[str, torch.Tensor], position_offset: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """HF tensors -> (encoder state in our module names, LM head tensors). Raises on unknown names.

    position_offset None drops the position table (rotary); an int keeps it, after that many zero rows
    (pad_token_id + 1 for a BERT table, 0 for XLM-R's, which is already numbered that way).
    """
    ours: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for raw, t in hf.items():
        name = _norm_leaf(raw)
        for pre in ("roberta.", "bert.", "model."):
            if name.startswith(pre):
                name = name[len(pre):]
                break
        if name == "embeddings.position_embeddings.weight" and position_offset is not None:
            ours[name] = torch.cat([t.new_zeros(position_offset, t.shape[1]), t])
            continue
        if name.startswith(_DROPPED):
            continue
        hit = next((k for k in _HEAD_MAP if name.startswith(k)), None)
        if hit is not None:
            head[_HEAD_MAP[hit] + name[len(hit):]] = t
            continue
        if name.startswith("embeddings.LayerNorm."):
            ours["emb_ln." + name.rsplit(".", 1)[1]] = t
        elif name.startswith(("embeddings.word_embeddings.", "embeddings.token_type_embeddings.", "pooler.dense.")):
            ours[name] = t
        elif name.startswith("encoder.layer."):
            _, _, n, rest = name.split(".", 3)
            mod, _, leaf = rest.rpartition(".")
            if mod in ("attention.self.query", "attention.self.key", "attention.self.value"):
                qkv.setdefault((int(n), leaf), {})[mod.rsplit(".", 1)[1]] = t
            elif mod in _LAYER_MAP:
                ours[f"encoder.layers.{n}.{_LAYER_MAP[mod]}.{leaf}"] = t
            else:
                unknown.append(raw)
        else:
            unknown.append(raw)
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensors this converter does not know: {sorted(unknown)[:5]}")
    for (n, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"layer {n} lacks one of query/key/value {leaf}")
        ours[f"encoder.layers.{n}.mixer.Wqkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return ours, head


def position_offset(hf: dict, pad_token_id: int) -> int:
    """Leading rows to add to a learned position table so that XLM-R's numbering reads it."""
    return pad_token_id + 1 if hf.get("model_type") == "bert" else 0


def convert_config(hf: dict, positions: str = "rotary", pad_token_id: int | None = None) -> EncoderConfig:
    """Our config for an HF config; `positions` rotary (table dropped) or absolute (table kept)."""
    if positions not in ("rotary", "absolute"):
        raise CheckpointError(f"positions must be 'rotary' or 'absolute', got {positions!r}")
    model_type = hf.get("model_type", "")
    if model_type not in ("xlm-roberta", "roberta", "bert", "camembert", "xlm-roberta-xl"):
        raise CheckpointError(f"unsupported model_type {model_type!r}: convert takes XLM-R/RoBERTa/BERT encoders")
    hidden = int(hf["hidden_size"])
    dims = sorted({d for d in (32, 64, 128, 256, 512, 768, 1024) if d <= hidden} | {hidden})
    pad = int(hf.get("pad_token_id", 1)) if pad_token_id is None else pad_token_id
    absolute = {}
    if positions == "absolute":
        rows = int(hf["max_position_embeddings"]) + position_offset(hf, pad)
        absolute = {"position_embedding_type": "absolute", "max_position_embeddings": rows}
    return EncoderConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=hidden, num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=int(hf["num_attention_heads"]), intermediate_size=int(hf["intermediate_size"]),
        hidden_act=hf.get("hidden_act", "gelu"), hidden_dropout_prob=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_probs_dropout_prob=float(hf.get("attention_probs_dropout_prob", 0.1)),
        type_vocab_size=int(hf.get("type_vocab_size", 1)), layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        pad_token_id=pad, bos_token_id=int(hf.get("bos_token_id", 0) or 0),
        eos_token_id=int(hf.get("eos_token_id", 2) or 2), model_type="xlm-roberta",
        lora_adaptations=list(TASKS), task_instructions=dict(TASK_INSTRUCTIONS), matryoshka_dimensions=dims,
        extra={"architectures": ["XLMRobertaModel"], "converted_from": hf.get("_name_or_path", model_type)},
        **absolute,
    )


def _tokenizer_specials(src: Path) -> dict[str, int]:
    """Some configs disagree with their own tokenizer (multilingual-e5-small: a BertModel config with the
    XLM-R sentencepiece vocabulary); the tokenizer's special ids are the ones the text will carry."""
    if not (src / "tokenizer.json").is_file():
        return {}
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(src / "tokenizer.json"))
    out = {}
    for attr, token in (("pad_token_id", "<pad>"), ("bos_token_id", "<s>"), ("eos_token_id", "</s>")):
        idx = tok.token_to_id(token)
        if idx is not None:
            out[attr] = idx
    return out


def convert(src: str | Path, dst: str | Path, positions: str = "rotary") -> Path:
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"missing config.json in {src}")
    hf = json.loads((src / "config.json").read_text(encoding="utf-8"))
    specials = _tokenizer_specials(src)
    cfg = convert_config(hf, positions, specials.get("pad_token_id"))
    for attr, idx in specials.items():
        setattr(cfg, attr, idx)
    offset = position_offset(hf, cfg.pad_token_id) if positions == "absolute" else None
    ours, head = convert_state(read_hf_weights(src), offset)
    model = Encoder(cfg, add_pooling_layer=any(k.startswith("pooler.") for k in ours))
    expected = model.state_dict()
    for k in expected:
        if k.endswith(("lora_A", "lora_B")):
            ours[k] = expected[k]  # the model's fresh no-op adapters
    missing, extra = set(expected) - set(ours), set(ours) - set(expected)
    if missing or extra:
        raise CheckpointError(f"conversion mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    dst.mkdir(parents=True, exist_ok=True)
    names = {n for n, m in model.named_modules() if isinstance(m, LORA_MODULES)}
    state = {PREFIX + to_official_name(k, names): v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg.extra["torch_dtype"] = "float32"
    cfg.save(dst / "config.json")
    if head:
        save_file({k: v.float().contiguous() for k, v in head.items()}, str(dst / "lm_head.safetensors"))
    if (src / "tokenizer.json").is_file():
        shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="taskembed convert", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="Hugging Face model directory (config.json + model.safetensors)")
    p.add_argument("output", help="output directory (official jina-embeddings-v3 layout)")
    p.add_argument("--positions", choices=("rotary", "absolute"), default="rotary",
                   help="rotary: drop the learned position table (needs training after); absolute: keep it, "
                        "so the model reproduces the original exactly (texts past the table run in windows)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = convert(args.source, args.output, args.positions)
    except (CheckpointError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    note = ""
    if not (out / "tokenizer.json").is_file():
        note = " (no tokenizer.json in the source: copy one in before loading)"
    print(f"converted {args.source} -> {out}{note}", file=sys.stderr)
    return 0
