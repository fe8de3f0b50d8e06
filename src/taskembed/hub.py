"""Model names: a local folder, or a Hugging Face hub id ("jinaai/jina-embeddings-v3") found in the user's
Hugging Face cache, downloaded only when downloads are allowed.

Only the official file set is fetched (weights, config, tokenizer files); never code, so nothing from the
hub is ever executed. Needs the optional `huggingface_hub` (extra `[hub]`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The files load() reads. Shards match the second pattern; onnx/ and the remote code never match.
HUB_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_DOWNLOAD_FILES = "config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_TRUE = {"1", "on", "yes", "true"}


class HubError(ValueError):
    """A hub id that cannot be resolved to a complete local snapshot."""


def is_hub_id(name: str) -> bool:
    """`org/name` as the hub spells ids (a relative path like `models/x` looks the same: callers check the
    folder first)."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith(".git")


def offline() -> bool:
    """HF_HUB_OFFLINE, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_dir() -> str | None:
    """The hub cache the user's other tools use: HF_HUB_CACHE, else $HF_HOME/hub, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _missing(folder: Path) -> list[str]:
    need = ["config.json", "tokenizer.json"]
    missing = [f for f in need if not (folder / f).is_file()]
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        missing.append("model.safetensors")
    return missing


def download_command(repo_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id}{rev} {_DOWNLOAD_FILES}"


def resolve(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of `repo_id` at `revision` (default: main) in the Hugging Face cache.

    The cache is tried first with no network at all; when files are missing and HF_HUB_OFFLINE is not
    set, the official file set is downloaded into the cache.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise HubError(
            f"{repo_id!r} is not a local folder; to load it as a Hugging Face hub id install the hub extra: "
            "pip install 'taskembed[hub]'"
        ) from None
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    kwargs = dict(revision=revision, cache_dir=cache_dir(), allow_patterns=list(HUB_FILES))
    folder: Path | None = None
    missing = ["all files"]
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
        missing = _missing(folder)
    except (LocalEntryNotFoundError, OSError):
        pass
    if missing and not offline():
        try:
            folder = Path(snapshot_download(repo_id, **kwargs))
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HubError(
                f"cannot download {where} from the Hugging Face hub ({first}); where the hub is reachable, "
                f"run: {download_command(repo_id, revision)}"
            ) from None
        missing = _missing(folder)
        if missing:
            raise HubError(f"{where} on the Hugging Face hub has no {', '.join(missing)}: not a model in the "
                           "official jina-embeddings-v3 layout")
    if missing:
        cache = cache_dir() or "the default Hugging Face cache"
        raise HubError(
            f"{where} is not in the Hugging Face cache ({cache}; missing: {', '.join(missing)}) and downloads "
            f"are off (HF_HUB_OFFLINE=1). Run, where the hub is reachable: {download_command(repo_id, revision)} "
            "(and copy the cache here), or unset HF_HUB_OFFLINE."
        )
    assert folder is not None
    return folder
