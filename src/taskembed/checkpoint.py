"""Checkpoints in the official jina-embeddings-v3 layout.

A directory holds `config.json`, `model.safetensors` (or shards with `model.safetensors.index.json`)
and `tokenizer.json`. Tensor names are the official ones: LoRA-wrapped weights are stored as
`<module>.parametrizations.weight.original` with factors `<module>.parametrizations.weight.0.lora_A/B`,
under a `roberta.` prefix (files without the prefix load too). fp32, fp16 and bf16 files all load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import hub
from .config import ConfigError, EncoderConfig
from .embedder import Embedder
from .encoder import Encoder
from .lora import LORA_MODULES
from .tokenizer import Tokenizer, TokenizerError

PREFIX = "roberta."
_PARAM = ".parametrizations.weight."
# Like Hugging Face, big models are split into shards; callers that ship weights in a repository pass a
# smaller limit (no file over 100 MB there).
MAX_SHARD_BYTES = 2 * 1024**3


# Without load_trained_adapters the official from_pretrained takes its fresh-adapters branch and does not
# read the saved weights (wrong numbers, with only warnings): every folder we write holds trained adapters.
OFFICIAL_LOADER_KEYS = {"load_trained_adapters": True}
# What the official repository's config.json names, so AutoModel(..., trust_remote_code=True) finds the
# official code for a folder we wrote. taskembed itself never runs remote code.
_REMOTE = "jinaai/xlm-roberta-flash-implementation--"
OFFICIAL_AUTO_MAP = {
    "AutoConfig": _REMOTE + "configuration_xlm_roberta.XLMRobertaFlashConfig",
    "AutoModel": _REMOTE + "modeling_lora.XLMRobertaLoRA",
}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded, with the reason."""


def _lora_module_names(model: Encoder) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, LORA_MODULES)}


def to_official_name(name: str, lora_modules: set[str]) -> str:
    """Our parameter name -> the official checkpoint name (without prefix)."""
    module, _, leaf = name.rpartition(".")
    if module in lora_modules:
        if leaf == "weight":
            return f"{module}{_PARAM}original"
        if leaf in ("lora_A", "lora_B"):
            return f"{module}{_PARAM}0.{leaf}"
    return name


def from_official_name(name: str) -> str:
    if name.startswith(PREFIX):
        name = name[len(PREFIX):]
    if _PARAM in name:
        module, _, rest = name.partition(_PARAM)
        if rest == "original":
            return f"{module}.weight"
        if rest.startswith("0.lora_"):
            return f"{module}.{rest[2:]}"
    return name


def _find_weights(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"corrupt shard index {index}: {e}") from None
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"shard index {index} names missing files: {missing[:3]}")
        return [path / f for f in files]
    if (path / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{path} has only pytorch_model.bin; taskembed reads safetensors (model.safetensors)"
        )
    raise CheckpointError(f"missing model.safetensors in {path}")


def _read_tensors(files: list[Path], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    t = fh.get_tensor(key)
                    if not t.is_floating_point():
                        raise CheckpointError(f"tensor {key} in {f.name} has non-float dtype {t.dtype}")
                    out[from_official_name(key)] = t.to(dtype)
        except SafetensorError as e:
            raise CheckpointError(f"corrupt safetensors file {f}: {e}") from None
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"cannot read {f}: {e}") from None
    return out


def _fresh_lora(model: Encoder, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LORA_MODULES):
            m.lora_A = torch.nn.Parameter(torch.empty(m.lora_A.shape, dtype=dtype))
            m.lora_B = torch.nn.Parameter(torch.empty(m.lora_B.shape, dtype=dtype))
            m.reset_lora()
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = m.lora_A.data, m.lora_B.data
    return out


def _list(names, n: int = 5) -> str:
    names = sorted(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


DEFAULT_MODEL = "taskembed-small"


def default_model_dir() -> Path:
    """The bundled default model (recipe folder models/taskembed-small, assembled on first use from pinned
    packages into a cache folder; see bundled.py): what load() and every CLI command use when no model is
    named. Works offline. Returns the assembled folder, in the official layout."""
    path = Path(__file__).parent / "models" / DEFAULT_MODEL
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the bundled default model is missing from {path} (an incomplete install?); "
                              "name a model directory instead")
    return _assembled(path)


def _assembled(path: Path) -> Path:
    from .bundled import BundleError, is_bundle, materialize

    if not is_bundle(path):
        return path
    try:
        return materialize(path)
    except BundleError as e:
        raise CheckpointError(str(e)) from None


def resolve_model(name_or_path: str | Path | None, revision: str | None = None) -> Path:
    """A model folder for a name: None -> the bundled model; an existing folder -> itself; `org/name` ->
    its snapshot in the Hugging Face cache (downloaded when allowed, see hub.py)."""
    if name_or_path is None:
        if revision is not None:
            raise CheckpointError("revision= needs a hub id (e.g. jinaai/jina-embeddings-v3)")
        return default_model_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"revision={revision!r} applies to hub ids; {path} is a local folder")
        return path
    if isinstance(name_or_path, str) and hub.is_hub_id(name_or_path):
        try:
            return hub.resolve(name_or_path, revision)
        except hub.HubError as e:
            raise CheckpointError(f"no local folder {name_or_path!r}, and as a Hugging Face hub id: {e}") from None
    raise CheckpointError(f"model directory not found: {path}")


def load(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    int8: bool = False,
    revision: str | None = None,
) -> Embedder:
    """Load a model in the official layout into an Embedder.

    path: a local folder, a Hugging Face hub id such as "jinaai/jina-embeddings-v3" (from the user's
    Hugging Face cache; downloaded there unless HF_HUB_OFFLINE=1; needs the `hub` extra), or None for the
    bundled default. revision: branch, tag or commit of a hub id (default: main).
    dtype: compute dtype (default float32 on CPU, bfloat16 on CUDA), whatever the file's dtype.
    int8: dynamic int8 Linear layers on CPU (see Embedder.to_int8).
    """
    path = _assembled(resolve_model(path, revision))
    if not (path / "config.json").is_file():
        raise CheckpointError(f"missing config.json in {path}")
    try:
        cfg = EncoderConfig.load(path / "config.json")
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"bad config.json in {path}: {e}") from None
    device = torch.device(device or "cpu")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError("dtype must be one of float32, float16, bfloat16")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    tensors = _read_tensors(_find_weights(path), dtype)
    has_pooler = any(k.startswith("pooler.") for k in tensors)
    with torch.device("meta"):
        model = Encoder(cfg, add_pooling_layer=has_pooler)
    expected = dict(model.state_dict())

    lora_keys = {k for k in expected if k.endswith(("lora_A", "lora_B"))}
    if not any(k in tensors for k in lora_keys):
        # A backbone without adapters (e.g. after MLM or pair training): fresh no-op adapters.
        tensors.update(_fresh_lora(model, dtype))
    missing = set(expected) - set(tensors)
    unknown = set(tensors) - set(expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_list(missing)}")
        if unknown:
            parts.append(f"{len(unknown)} unknown keys: {_list(unknown)}")
        raise CheckpointError(f"checkpoint {path} does not match its config.json: " + "; ".join(parts))
    wrong = [
        f"{k}: expected {tuple(v.shape)}, got {tuple(tensors[k].shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {path} has tensors of the wrong shape: " + "; ".join(wrong[:5]))
    model.load_state_dict(tensors, assign=True)
    model.to(device)

    try:
        tokenizer = Tokenizer.from_dir(path)
        emb = Embedder(model, tokenizer, path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    return emb.to_int8() if int8 else emb


def save(
    embedder: Embedder,
    path: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Write the official layout: config.json, model.safetensors (official names, `roberta.` prefix),
    tokenizer.json, tokenizer_config.json and special_tokens_map.json. The official
    `XLMRobertaLoRA.from_pretrained` loads the folder as it is."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = embedder.model
    names = _lora_module_names(model)
    state = {
        PREFIX + to_official_name(k, names): (v.to(dtype) if dtype else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    cfg = embedder.config
    saved_dtype = str(dtype or embedder.dtype).removeprefix("torch.")
    cfg.extra["torch_dtype"] = saved_dtype
    if "dtype" in cfg.extra:  # newer transformers write `dtype` instead; keep the two in agreement
        cfg.extra["dtype"] = saved_dtype
    data = cfg.to_dict()
    data.update(OFFICIAL_LOADER_KEYS)
    data.setdefault("auto_map", dict(OFFICIAL_AUTO_MAP))
    (path / "config.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(t.numel() * t.element_size() for t in state.values())
    if total <= max_shard_bytes:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        _save_sharded(state, path, max_shard_bytes)
    embedder.tokenizer.save_pretrained(path, model_max_length=cfg.max_tokens)


def _save_sharded(state: dict[str, torch.Tensor], path: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        nbytes = state[k].numel() * state[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
