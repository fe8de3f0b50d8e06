"""Hub ids in load() and --model: resolved from a Hugging Face cache folder built here in the documented
layout (models--org--name/{blobs,snapshots/<sha>,refs/<ref>}), never from the network."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import taskembed
from support.tiny import make_tiny_embedder
from taskembed import CheckpointError, hub
from taskembed.cli import main as cli_main

pytest.importorskip("huggingface_hub")

REPO = "acme/tiny-embed"
MAIN_SHA = "1" * 40
V2_SHA = "2" * 40
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TEXTS = ["The cat sits on the warm windowsill.", "Der Hund schläft."]


def _add_snapshot(cache: Path, repo: str, sha: str, src: Path, refs: tuple[str, ...], files=FILES) -> None:
    """Files as the hub library stores them: content in blobs/<hash>, snapshot entries are symlinks."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    for name in files:
        data = (src / name).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(sha)


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("second")
    make_tiny_embedder(seed=7).save(d)
    return d


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_dir, second_dir) -> Path:
    c = tmp_path / "hf" / "hub"
    _add_snapshot(c, REPO, MAIN_SHA, tiny_dir, ("main",))
    _add_snapshot(c, REPO, V2_SHA, second_dir, ("v2",))
    _add_snapshot(c, "acme/partial", MAIN_SHA, tiny_dir, ("main",), files=("config.json", "tokenizer.json"))
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no stray relative folder named like an id
    return c


@pytest.fixture
def no_network(monkeypatch):
    """Record every snapshot_download call; a call that may reach the network fails as if offline."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    real = huggingface_hub.snapshot_download
    calls: list[dict] = []

    def fake(repo_id, **kw):
        calls.append(kw)
        if not kw.get("local_files_only"):
            raise LocalEntryNotFoundError("network disabled in tests")
        return real(repo_id, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


def _encode(emb) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return emb.encode(TEXTS, task="text-matching")


def test_load_by_hub_id_from_the_cache(cache, tiny, no_network):
    emb = taskembed.load(REPO)
    assert emb.path == cache / "models--acme--tiny-embed" / "snapshots" / MAIN_SHA
    np.testing.assert_array_equal(_encode(emb), _encode(tiny))
    assert all(c["local_files_only"] for c in no_network)


@pytest.mark.parametrize("revision", ["v2", V2_SHA])
def test_load_by_hub_id_at_a_revision(cache, tiny, second_dir, revision, no_network):
    emb = taskembed.load(REPO, revision=revision)
    assert emb.path.name == V2_SHA
    want = _encode(taskembed.load(second_dir))
    np.testing.assert_array_equal(_encode(emb), want)
    assert np.abs(want - _encode(tiny)).max() > 1e-3  # the revisions differ: the test can tell them apart
    assert taskembed.load(REPO, revision=MAIN_SHA).path.name == MAIN_SHA


def test_only_the_official_file_set_is_fetched(cache, no_network):
    from huggingface_hub.utils import filter_repo_objects

    official_repo = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "pytorch_model.bin", "custom_st.py", "modules.json",
                     "config_sentence_transformers.json", "1_Pooling/config.json", "onnx/model.onnx",
                     "onnx/model_fp16.onnx", "README.md", ".gitattributes"]
    picked = set(filter_repo_objects(official_repo, allow_patterns=list(hub.HUB_FILES)))
    assert picked == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json"}
    assert {"model-00001-of-00002.safetensors", "model.safetensors.index.json"} <= set(
        filter_repo_objects(["model-00001-of-00002.safetensors", "model.safetensors.index.json"],
                            allow_patterns=list(hub.HUB_FILES)))
    taskembed.load(REPO)
    assert no_network and all(c["allow_patterns"] == list(hub.HUB_FILES) for c in no_network)


def test_offline_and_not_cached_is_one_clear_error(cache, no_network):
    with pytest.raises(CheckpointError) as e:
        taskembed.load("acme/absent")
    msg = str(e.value)
    assert "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    assert f"hf download acme/absent {hub._DOWNLOAD_FILES}" in msg
    assert all(c["local_files_only"] for c in no_network)  # offline: never a network call
    with pytest.raises(CheckpointError, match=r"--revision v9"):
        taskembed.load(REPO, revision="v9")


def test_offline_partial_snapshot_names_what_is_missing(cache, no_network):
    with pytest.raises(CheckpointError, match="missing: model.safetensors"):
        taskembed.load("acme/partial")


def test_online_download_failure_is_a_clear_error(cache, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # Cached and complete: no download is tried even with downloads allowed.
    taskembed.load(REPO)
    assert all(c["local_files_only"] for c in no_network)
    with pytest.raises(CheckpointError, match="cannot download acme/absent.*hf download acme/absent"):
        taskembed.load("acme/absent")
    assert [c.get("local_files_only", False) for c in no_network[-2:]] == [True, False]


def test_local_folder_wins_and_revision_needs_a_hub_id(cache, tiny_dir, tmp_path):
    local = tmp_path / "acme" / "tiny-embed"
    local.parent.mkdir()
    local.symlink_to(tiny_dir)
    assert taskembed.load(REPO).path == Path(REPO)  # a folder of that relative name comes first
    with pytest.raises(CheckpointError, match="applies to hub ids"):
        taskembed.load(tiny_dir, revision="main")
    with pytest.raises(CheckpointError, match="model directory not found"):
        taskembed.load("no-such-folder")


def test_without_huggingface_hub_the_error_names_the_extra(cache, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(CheckpointError, match=r"taskembed\[hub\]"):
        taskembed.load(REPO)


def test_cli_model_and_revision_take_hub_ids(cache, capsys, no_network):
    assert cli_main(["info", REPO, "--revision", "v2"]) == 0
    assert V2_SHA in capsys.readouterr().out
    assert cli_main(["encode", "--model", REPO, "--task", "text-matching", "Hello"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["text"] == "Hello" and len(row["embedding"]) == 64
    assert cli_main(["encode", "--model", "acme/absent", "Hello"]) == 2
    assert "hf download acme/absent" in capsys.readouterr().err
