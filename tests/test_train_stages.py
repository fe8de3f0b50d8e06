"""Each stage on a tiny model and generated data: the loss falls and a held-out metric improves; a new task
adapter trains, saves, reloads and leaves the other adapters alone; convert maps HF names exactly."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import taskembed
import taskembed.cli
from support.synthetic import Topics, tiny_embedder, topic_retrieval
from taskembed.convert import main as convert_main
from taskembed.eval.metrics import spearman
from taskembed.io import write_jsonl
from taskembed_train import stages
from taskembed_train.cli import main as train_main
from taskembed_train.cli import read_settings
from taskembed_train.objectives import MLM, LMHead
from taskembed_train.settings import Phase

TOPICS = Topics.make(n_topics=8, seed=3)
HELD_OUT = range(100, 104)  # seeds of held-out texts; training data uses seeds < 10


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    tiny_embedder(TOPICS, seed=0, lora=False).save(d / "base")
    tiny_embedder(TOPICS, seed=0, lora=True).save(d / "base-lora")
    files = {
        "pairs": write_jsonl(d / "pairs.jsonl", TOPICS.pairs(200, 1)),
        "tuples": write_jsonl(d / "tuples.jsonl", TOPICS.tuples(200, 2, negatives=2)),
        "scored": write_jsonl(d / "scored.jsonl", TOPICS.scored(200, 3)),
        "labelled": write_jsonl(d / "labelled.jsonl", TOPICS.labelled(200, 4)),
        "raw": write_jsonl(d / "raw.jsonl", TOPICS.raw(300, 5)),
    }
    return d, files


def builtin(name: str) -> dict:
    return read_settings(stages.config_path(name))["train"]


def _config(task: str) -> str:
    return stages.default_config("adapters", task)


def _settings(toy, model, out, data, config="pairs", **train):
    """A config as a user writes one: the stage's built-in config copied, then edited for the toy model."""
    d, files = toy
    base = builtin(config) | dict(steps=25, batch_size=8, lr=5e-2, warmup_steps=2, log_every=0, max_length=16,
                                  matryoshka_dims=[16], data=[str(files[k]) for k in data])
    base.update(train)
    return {"model": str(d / model), "output": str(d / out), "device": "cpu", "train": base}


def _retrieval(emb, q=None, p=None) -> float:
    return float(np.mean([topic_retrieval(emb, TOPICS, s, q, p) for s in HELD_OUT]))


def _falls(losses: list[float]) -> bool:
    k = max(3, len(losses) // 5)
    return np.mean(losses[-k:]) < 0.8 * np.mean(losses[:k])


def test_pairs_stage_short_then_long(toy):
    d, _ = toy
    before = _retrieval(taskembed.load(d / "base"))
    s = _settings(toy, "base", "pairs", ["pairs", "tuples"], lr=2e-3, matryoshka_dims=[16, 32])
    s["phases"] = [{"name": "short", "steps": 20}, {"name": "long", "steps": 6, "max_length": 32, "lr": 1e-3}]
    s["train"].update(eval_data=str(write_jsonl(d / "held-out-pairs.jsonl", TOPICS.pairs(32, 50))), eval_every=10)
    _, hist = stages.run_pairs(s, resume=False)
    assert list(hist) == ["short", "long"]
    assert _falls(hist["short"]["losses"])
    # The eval hook: held-out MRR at steps 10 and 20 (4 equivalent passages per topic cap it near 0.5;
    # random is about 0.13)
    evals = hist["short"]["evals"]
    assert [step for step, _ in evals] == [10, 20] and evals[-1][1]["mrr"] > 0.25
    after = _retrieval(taskembed.load(d / "pairs"))
    assert after > before + 0.2, (before, after)


def _held_out_mlm_loss(emb, head) -> float:
    obj = MLM(emb.tokenizer, head, max_length=16, prob=0.3, seed=123)
    micros, n, _ = obj.prepare(TOPICS.raw(64, 99))
    with torch.no_grad():
        return sum(float(obj.micro_loss(emb.model.eval(), m, n)) for m in micros)


def test_mlm_stage(toy):
    d, _ = toy
    base = taskembed.load(d / "base")
    with torch.no_grad():
        # BERT's initializer_range: the LM decoder is tied to these rows, and unit-variance rows would start
        # with huge logits (emb_ln normalises the encoder's input either way).
        base.model.embeddings.word_embeddings.weight.mul_(0.02)
    base.save(d / "base-mlm")
    torch.manual_seed(0)
    before = _held_out_mlm_loss(base, LMHead(base.config, base.model.embeddings.word_embeddings.weight))
    s = _settings(toy, "base-mlm", "mlm", ["raw"], "mlm", steps=30, lr=5e-3, batch_size=16, max_tokens=256,
                  micro_tokens=128)
    _, hist = stages.run_mlm(s, resume=False)
    losses = hist["short"]["losses"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.4
    after_emb = taskembed.load(d / "mlm")
    assert after_emb.config.rotary_emb_base == 20000.0  # inference base restored in the saved config
    head = LMHead(after_emb.config, after_emb.model.embeddings.word_embeddings.weight)
    head.load_own_state(load_file(str(d / "mlm" / stages.LM_HEAD_FILE)))
    after = _held_out_mlm_loss(after_emb, head)
    # From about ln(vocab) (a fresh head) down by a clear margin on held-out sentences; a few dozen steps
    # only get the toy model to word frequencies, not all the way to topic co-occurrence.
    assert after < before - 0.4, (before, after)


@pytest.mark.parametrize("task,data", [
    ("retrieval.query", ["tuples"]),
    ("classification", ["labelled"]),
    ("classification", ["labelled", "pairs"]),  # translation-style pairs too (pair classification)
    ("separation", ["labelled", "pairs"]),
])
def test_adapter_stage(toy, task, data):
    d, _ = toy
    q, p = ("retrieval.query", "retrieval.passage") if task.startswith("retrieval") else (task, task)
    base = taskembed.load(d / "base")
    before = _retrieval(base, q, p)
    out = f"adapter-{task}"
    _, hist = stages.run_adapters(_settings(toy, "base", out, data, _config(task)), task, resume=False)
    assert _falls(hist["adapter"]["losses"])
    trained = taskembed.load(d / out)
    after = _retrieval(trained, q, p)
    assert after > before + 0.15, (before, after)
    # Base weights are frozen: without an adapter the model is unchanged.
    texts = [TOPICS.query(0, random.Random(7)), TOPICS.passage(3, random.Random(8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(base.encode(texts), trained.encode(texts))


def test_text_matching_adapter_improves_sts(toy):
    d, _ = toy
    held = TOPICS.scored(64, 77)

    def sts(emb):
        a = emb.encode([r["text1"] for r in held], task="text-matching")
        b = emb.encode([r["text2"] for r in held], task="text-matching")
        return spearman((a * b).sum(1), np.array([r["score"] for r in held]))

    before = sts(taskembed.load(d / "base"))
    # Scored pairs (CoSENT) and plain pairs (InfoNCE) alternate per batch.
    _, hist = stages.run_adapters(_settings(toy, "base", "adapter-tm", ["scored", "pairs"], _config("text-matching")),
                                  "text-matching",
                                  resume=False)
    assert _falls(hist["adapter"]["losses"])
    after = sts(taskembed.load(d / "adapter-tm"))
    assert after > before + 0.2, (before, after)


def test_anchor_holds_the_base_full_size_ranking(toy):
    """With the anchor the trained adapter changes the full-size similarities of held-out texts much less
    than without it, and still changes the short cut (the Matryoshka term is free to move it)."""
    d, _ = toy
    base = taskembed.load(d / "base")
    rng = random.Random(11)
    texts = [TOPICS.query(t % 8, rng) if t % 2 else TOPICS.passage(t % 8, rng) for t in range(48)]

    def sims(emb, dims=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = emb.encode(texts, task="retrieval.passage", dimensions=dims)
        return v @ v.T

    drift = {}
    for anchor in (0.0, 20.0):
        out = f"adapter-anchor-{anchor:g}"
        stages.run_adapters(_settings(toy, "base", out, ["pairs"], _config("retrieval"), matryoshka_dims=[8, 32],
                                      anchor=anchor),
                            "retrieval.passage", resume=False)
        trained = taskembed.load(d / out)
        drift[anchor] = (np.abs(sims(trained) - sims(base)).mean(), np.abs(sims(trained, 8) - sims(base, 8)).mean())
    (free_full, _), (held_full, held_cut) = drift[0.0], drift[20.0]
    assert held_full < 0.5 * free_full, drift
    assert held_cut > 2 * held_full, drift


def test_contrastive_stages_bucket_rows_by_length_under_max_tokens(toy, monkeypatch):
    d, _ = toy
    emb = taskembed.load(d / "base")
    rng = random.Random(0)
    words = TOPICS.passage(0, rng).split()
    recs = [{"text1": " ".join(words[: rng.randint(1, 12)]), "text2": words[0], "score": 1.0} for _ in range(200)]
    path = write_jsonl(d / "mixed-lengths.jsonl", recs)
    ph = Phase(max_length=16, max_tokens=48, batch_size=8, loss=["cosent"])
    length = stages._longest_text(emb, ph)
    stream = stages._stream(stages._sources([str(path)], ph), ph, length)
    sizes = []
    for _ in range(40):
        b = next(stream)
        longest = max(min(n, 16) for n in emb.tokenizer.count_tokens([t for r in b.records
                                                                      for t in (r["text1"], r["text2"])]))
        assert len(b.records) <= 8 and (len(b.records) == 1 or len(b.records) * longest <= 48)
        sizes.append(len(b.records))
    assert max(sizes) == 8 and min(sizes) < 8  # short rows fill a batch, long ones make it smaller
    # Both contrastive stages hand the stream a length function (max_tokens used to be MLM-only).
    seen = []
    real = stages._stream
    monkeypatch.setattr(stages, "_stream", lambda s, p, fn=None: seen.append(fn) or real(s, p, fn))
    stages.run_adapters(_settings(toy, "base", "adapter-bucketed", ["scored"], _config("text-matching"), steps=2,
                                  max_tokens=48),
                        "text-matching", resume=False)
    stages.run_pairs(_settings(toy, "base", "pairs-bucketed", ["pairs"], steps=2, max_tokens=48), resume=False)
    assert len(seen) == 2 and all(fn is not None for fn in seen)


def test_new_task_adapter_via_cli(toy):
    d, files = toy
    model = d / "base-lora"  # every built-in adapter non-zero, so "unchanged" means something
    old = taskembed.load(model)
    texts = [TOPICS.query(t, random.Random(t)) for t in range(4)]
    old_out = {t: old.encode(texts, task=t) for t in old.tasks}
    config = d / "topic.toml"
    config.write_text(
        f'model = "{model}"\noutput = "{d / "new-task"}"\ndevice = "cpu"\n\n[train]\nloss = ["info_nce"]\n'
        f'data = ["{files["labelled"]}"]\nsteps = 25\nbatch_size = 8\nlr = 5e-2\nwarmup_steps = 2\n'
        'max_length = 16\nlog_every = 0\nmatryoshka_dims = [16]\n'
    )
    rc = train_main(["adapters", "--config", str(config), "--task", "topic", "--instruction", "query: "])
    assert rc == 0
    new = taskembed.load(d / "new-task")
    assert new.tasks == [*old.tasks, "topic"]
    assert new.config.task_instructions["topic"] == "query: "
    cfg = json.loads((d / "new-task" / "config.json").read_text())
    assert cfg["lora_adaptations"][-1] == "topic"
    for t in old.tasks:
        np.testing.assert_array_equal(new.encode(texts, task=t), old_out[t])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base_score = _retrieval(old)  # the base weights, no adapter
    assert _retrieval(new, "topic", "topic") > base_score + 0.15


def _to_hf(emb, bert: bool) -> dict[str, torch.Tensor]:
    """Our state -> a Hugging Face XLM-R (or BERT) state dict with learned positions and an MLM head."""
    sd = emb.model.state_dict()
    pre = "bert." if bert else "roberta."
    h = emb.config.hidden_size
    out = {
        pre + "embeddings.word_embeddings.weight": sd["embeddings.word_embeddings.weight"],
        pre + "embeddings.token_type_embeddings.weight": sd["embeddings.token_type_embeddings.weight"],
        pre + "embeddings.position_embeddings.weight": torch.randn(514, h),
        pre + "embeddings.LayerNorm.weight": sd["emb_ln.weight"],
        pre + "embeddings.LayerNorm.bias": sd["emb_ln.bias"],
    }
    for i in range(emb.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"{pre}encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[f"{src}mixer.Wqkv.{leaf}"].chunk(3)
            out[f"{dst}attention.self.query.{leaf}"] = q
            out[f"{dst}attention.self.key.{leaf}"] = k
            out[f"{dst}attention.self.value.{leaf}"] = v
            out[f"{dst}attention.output.dense.{leaf}"] = sd[f"{src}mixer.out_proj.{leaf}"]
            out[f"{dst}attention.output.LayerNorm.{leaf}"] = sd[f"{src}norm1.{leaf}"]
            out[f"{dst}intermediate.dense.{leaf}"] = sd[f"{src}mlp.fc1.{leaf}"]
            out[f"{dst}output.dense.{leaf}"] = sd[f"{src}mlp.fc2.{leaf}"]
            out[f"{dst}output.LayerNorm.{leaf}"] = sd[f"{src}norm2.{leaf}"]
    head = "cls.predictions." if bert else "lm_head."
    dense = "transform.dense." if bert else "dense."
    norm = "transform.LayerNorm." if bert else "layer_norm."
    out[head + dense + "weight"] = torch.randn(h, h)
    out[head + dense + "bias"] = torch.randn(h)
    out[head + norm + "weight"] = torch.randn(h)
    out[head + norm + "bias"] = torch.randn(h)
    out[head + "bias"] = torch.randn(emb.config.vocab_size)
    out[head + "decoder.weight"] = sd["embeddings.word_embeddings.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}


@pytest.mark.parametrize("bert", [False, True])
def test_convert_hf_checkpoint(tmp_path, bert):
    emb = tiny_embedder(TOPICS, seed=5, lora=False)
    src = tmp_path / "hf"
    src.mkdir()
    hf = _to_hf(emb, bert)
    save_file(hf, str(src / "model.safetensors"))
    c = emb.config
    (src / "config.json").write_text(json.dumps({
        "model_type": "bert" if bert else "xlm-roberta",
        "architectures": ["BertForMaskedLM" if bert else "XLMRobertaForMaskedLM"],
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
        "hidden_act": "gelu", "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
        "pad_token_id": 1, "position_embedding_type": "absolute",
    }))
    emb.tokenizer.save(src / "tokenizer.json")
    if bert:  # a BertModel config that names the wrong pad id, as multilingual-e5-small's does
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 0}))
        assert taskembed.cli.main(["convert", str(src), str(tmp_path / "ours")]) == 0  # through the CLI
    else:
        assert convert_main([str(src), str(tmp_path / "ours")]) == 0
    got = taskembed.load(tmp_path / "ours")
    assert got.config.position_embedding_type == "rotary"
    for k, v in emb.model.state_dict().items():
        if not k.endswith(("lora_A", "lora_B")) and not k.startswith("pooler."):
            assert torch.equal(got.model.state_dict()[k], v), k
    head = load_file(str(tmp_path / "ours" / stages.LM_HEAD_FILE))
    pre = "cls.predictions.transform.dense." if bert else "lm_head.dense."
    assert torch.equal(head["lm_head.dense.weight"], hf[pre + "weight"])
    assert set(head) == {"lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
                         "lm_head.layer_norm.bias", "lm_head.bias"}
    texts = ["rebi sali mure", "hello world"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(got.encode(texts), emb.encode(texts), atol=1e-6)


def test_rerun_resumes_from_checkpoint(toy):
    d, _ = toy
    s = _settings(toy, "base", "resume-a", ["pairs"], steps=6, lr=2e-3, checkpoint_every=3)
    stages.run_pairs(s, resume=False)
    full = load_file(str(d / "resume-a" / "model.safetensors"))
    # Kill after step 3: drop what came later, then run the same command again.
    ck = d / "resume-a" / "checkpoints" / "short"
    (ck / "final.pt").unlink()
    import shutil

    shutil.rmtree(ck / "step-00000006")
    _, hist = stages.run_pairs(s, resume=True)
    assert len(hist["short"]["losses"]) == 6  # 3 restored from the checkpoint + 3 new
    again = load_file(str(d / "resume-a" / "model.safetensors"))
    for k, v in full.items():
        assert torch.equal(v, again[k]), k


def test_pairs_stage_can_keep_the_vocabulary_table_fixed(toy):
    d, _ = toy
    s = _settings(toy, "base", "pairs-frozen-table", ["pairs"], steps=4, freeze_word_embeddings=True)
    emb, _ = stages.run_pairs(s, resume=False)
    base = taskembed.load(d / "base").model
    table = "embeddings.word_embeddings.weight"
    assert torch.equal(emb.model.state_dict()[table], base.state_dict()[table])
    moved = [k for k, v in emb.model.state_dict().items() if k != table and not torch.equal(v, base.state_dict()[k])]
    assert any("mixer.Wqkv" in k for k in moved)


def test_max_seconds_shortens_the_schedule_and_still_decays(toy, monkeypatch):
    from taskembed_train import loop

    clock = iter(float(i) for i in range(10**6))  # every perf_counter() call is one "second" later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    s = _settings(toy, "base", "pairs-timed", ["pairs"], steps=500, max_seconds=30, warmup_steps=0, log_every=1)
    lines: list[str] = []
    _, hist = stages.run_pairs(s, resume=False, log=lines.append)
    n = len(hist["short"]["losses"])
    assert 10 < n < 500
    assert any(f"{n} of 500 steps fit in 30 s" in line for line in lines)
    last = [line for line in lines if f"step {n}/{n} " in line]
    assert last and "lr 0.00e+00" in last[0]  # the shortened schedule still ends at zero


def test_max_seconds_refits_the_schedule_once_steps_get_faster(toy, monkeypatch):
    """A GPU's first steps are slow (new shapes, allocator growth): the schedule fitted after step 15 is
    fitted again as the budget is spent, from the faster speed since the last fit."""
    from taskembed_train import loop

    calls = [0]

    def clock():  # each perf_counter() call: 4 "seconds" for the first 40 calls, then 1
        calls[0] += 1
        return 4.0 * min(calls[0], 40) + max(0, calls[0] - 40)

    monkeypatch.setattr(loop.time, "perf_counter", clock)
    s = _settings(toy, "base", "pairs-refit", ["pairs"], steps=2000, max_seconds=400, warmup_steps=0, log_every=1)
    lines: list[str] = []
    _, hist = stages.run_pairs(s, resume=False, log=lines.append)
    n = len(hist["short"]["losses"])
    fits = [int(re.search(r"(\d+) of 2000 steps fit", line).group(1)) for line in lines if "steps fit in" in line]
    assert len(fits) >= 2 and fits[-1] > fits[0] and n == fits[-1]
    last = [line for line in lines if f"step {n}/{n} " in line]
    assert last and "lr 0.00e+00" in last[0]


@pytest.mark.parametrize("loss", [None, ["separation", "info_nce"]])
def test_adapter_dev_check_keeps_the_best_evaluation(toy, loss):
    from taskembed.eval.tasks import discover_tasks
    from taskembed_train.devtasks import score_dev_tasks

    d, _ = toy
    dev = [str(write_jsonl(d / "dev-labelled.jsonl", TOPICS.labelled(120, 200))),
           str(write_jsonl(d / "dev-pairs.jsonl", TOPICS.pairs(120, 201)))]
    # trained with Eq. 5 or not, the classification adapter is checked on the classification types
    extra = {"loss": loss} if loss else {}
    settings = _settings(toy, "base", "adapter-dev", ["labelled", "pairs"], _config("classification"),
                         eval_every=5, keep_best="dev", dev_data=dev, dev_size=40, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, hist = stages.run_adapters(settings, "classification", resume=False)
        evals = hist["adapter"]["evals"]
        assert [s for s, _ in evals] == [0, 5, 10, 15, 20, 25]
        assert {"classification", "pair_classification", "dev"} <= set(evals[0][1])
        best = max(m["dev"] for _, m in evals)
        tasks = discover_tasks(d / "adapter-dev" / "dev-tasks" / "adapter")
        assert len(tasks) == 2
        # what was saved is the best evaluation's adapter, whichever step that was
        assert score_dev_tasks(tasks, taskembed.load(d / "adapter-dev"))["dev"] == pytest.approx(best, abs=1e-6)


def test_a_reordered_model_keeps_its_channel_order_file_through_training(toy):
    import shutil

    d, _ = toy
    src = d / "base-ordered"
    shutil.copytree(d / "base", src, dirs_exist_ok=True)
    hidden = json.loads((src / "config.json").read_text())["hidden_size"]
    order = {"order": list(range(hidden - 1, -1, -1)), "pairs": 0}
    (src / "channel_order.json").write_text(json.dumps(order))
    settings = _settings(toy, "base-ordered", "adapter-ordered", ["labelled"], _config("classification"), steps=2)
    stages.run_adapters(settings, "classification", resume=False)
    assert json.loads((d / "adapter-ordered" / "channel_order.json").read_text()) == order
    settings = _settings(toy, "base-ordered", "pairs-ordered", ["pairs"], steps=2)
    stages.run_pairs(settings, resume=False)
    assert json.loads((d / "pairs-ordered" / "channel_order.json").read_text()) == order


def test_default_configs_read_and_misspelt_settings_are_refused(toy):
    import tomllib

    root = Path(__file__).resolve().parents[1] / "configs" / "default"
    for f in sorted(root.glob("*.toml")):
        settings = tomllib.loads(f.read_text())
        stage = f.stem if f.stem in ("pairs", "distill") else "adapters"
        over = {"data": ["x.jsonl"], "dev_data": ["dev.jsonl"]}
        (ph,) = stages.phase_settings(stage, {**settings, "overrides": over})
        assert ph.steps > 0, f
    retrieval = {"loss": ["info_nce"], "data": ["x.jsonl"]}
    with pytest.raises(ValueError, match="keep_bset"):
        stages.phase_settings("adapters", {"train": {**retrieval, "keep_bset": "dev"}})
    with pytest.raises(ValueError, match="needs held-out data"):
        stages.phase_settings("adapters", {"train": {**retrieval, "keep_best": "dev"}})
    with pytest.raises(ValueError, match="names no loss"):
        stages.phase_settings("adapters", {"train": {"data": ["x.jsonl"]}})
    with pytest.raises(ValueError, match="unknown dev_kind 'retreival'"):
        stages.phase_settings("adapters", {"train": {**retrieval, "dev_kind": "retreival"}})


def test_the_loss_is_named_and_data_it_does_not_train_on_is_refused(toy):
    # text-matching's losses (its config) are cosent + info_nce; naming cosent alone refuses a pairs file
    refused = r"pairs records, which the loss cosent does not train on.*loss = \['info_nce'\]"
    with pytest.raises(ValueError, match=refused):
        stages.run_adapters(_settings(toy, "base", "tm-cosent", ["pairs"], "adapters-text-matching", steps=1,
                                      loss="cosent"),
                            "text-matching", resume=False)
    with pytest.raises(ValueError, match="unknown loss 'infonce'; choose from info_nce"):
        stages.run_adapters(_settings(toy, "base", "tm-typo", ["pairs"], "adapters-text-matching", steps=1,
                                      loss="infonce"),
                            "text-matching", resume=False)
    # retrieval trains on pairs and tuples by default; naming cosent too lets it take scored pairs
    with pytest.raises(ValueError, match="scored records, which the loss info_nce does not train on"):
        stages.run_adapters(_settings(toy, "base", "r-scored", ["scored"], _config("retrieval"), steps=1), "retrieval",
                             resume=False)
    _, history = stages.run_adapters(_settings(toy, "base", "r-scored2", ["scored"], _config("retrieval"), steps=2,
                                               loss=["info_nce", "cosent"]), "retrieval", resume=False)
    assert len(history["adapter"]["losses"]) == 2
    (ph,) = stages.phase_settings("adapters", {"train": {**builtin("adapters-separation"), "data": ["x.jsonl"]}})
    assert ph.loss == ["separation", "info_nce", "cosent"]


def test_contrastive_runs_only_the_named_losses(toy):
    from taskembed_train.objectives import Contrastive

    emb = taskembed.load(toy[0] / "base")
    obj = Contrastive(emb.config, loss="cosent")
    assert set(obj.losses) == {"scored"}
    with pytest.raises(ValueError, match="the loss cosent does not train on 'pairs' records"):
        obj.texts("pairs", [{"query": "a", "positive": "b"}])
    assert set(Contrastive(emb.config, loss=["info_nce", "separation"]).losses) == {"pairs", "tuples", "labelled"}


def test_example_configs_name_losses_that_train_on_their_data():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    configs = sorted((root / "configs").glob("*.toml"))
    assert len(configs) >= 6
    for f in configs:
        settings = tomllib.loads(f.read_text())
        stage = "adapters" if f.stem.startswith("adapter-") else f.stem
        for ph in stages.phase_settings(stage, settings):
            ph.data = [str(root / p) for p in ph.data]
            sources = stages._sources(ph.data, ph, mlm=stage == "mlm")
            assert len(sources) == len(ph.data), f


def test_phase_settings_are_typed_and_wrong_types_are_refused():
    base = {"train": {**builtin("pairs"), "data": "one.jsonl", "lr": 1, "matryoshka_dims": [32, 64]}}
    (ph,) = stages.phase_settings("pairs", base)
    assert ph.data == ["one.jsonl"] and ph.lr == 1.0 and isinstance(ph.lr, float)
    assert ph.batch_size == 256 and ph.loss == ["info_nce", "cosent"]  # the built-in config's
    assert ph.name == "short" and ph.steps == Phase().steps  # what no layer sets keeps Phase's default
    for key, value, said in [("lr", "fast", "setting lr must be float, got 'fast'"),
                             ("steps", 2.5, "setting steps must be int"),
                             ("bf16", "yes", "setting bf16 must be bool"),
                             ("matryoshka_dims", [32, "64"], "setting matryoshka_dims must be list"),
                             ("dropout", [0.1], "setting dropout must be float or none")]:
        with pytest.raises(ValueError, match=re.escape(said)):
            stages.phase_settings("pairs", {**base, "overrides": {key: value}})


def test_without_a_config_the_stage_runs_its_built_in_one(toy, capsys):
    """No --config: the task's kind's built-in config (Table A1) then the flags; --config takes a built-in's
    name too, and an unknown name lists them."""
    d, files = toy
    out = d / "cli-builtin"
    args = ["--model", str(d / "base"), "--output", str(out), "--data", str(files["labelled"]), "--device", "cpu",
            "--steps", "1", "--batch-size", "4", "--max-length", "16", "--set", "matryoshka_dims=[16]"]
    assert train_main(["adapters", "--task", "classification", *args]) == 0
    (ph,) = json.loads((out / stages.SETTINGS_FILE).read_text())
    table = builtin("adapters-classification")
    assert ph["lr"] == table["lr"] == 5e-4 and ph["tau"] == 0.02 and ph["loss"] == ["info_nce"]
    assert ph["steps"] == 1 and ph["batch_size"] == 4 and ph["name"] == "adapter"
    assert train_main(["adapters", "--task", "classification", "--config", "adapters-separation", "--fresh",
                       *args]) == 0
    (ph,) = json.loads((out / stages.SETTINGS_FILE).read_text())
    assert ph["lr"] == 5e-5 and ph["loss"] == ["separation", "info_nce", "cosent"]
    assert train_main(["adapters", "--task", "classification", "--config", "adapters-sepration", *args]) == 2
    assert "built-in configs: adapters-classification" in capsys.readouterr().err


def test_resolved_settings_are_written_beside_the_weights(toy):
    d, _ = toy
    stages.run_pairs(_settings(toy, "base", "pairs-settings", ["pairs"], steps=1, lr=0.01), resume=False)
    (written,) = json.loads((d / "pairs-settings" / stages.SETTINGS_FILE).read_text())
    assert written["lr"] == 0.01 and written["steps"] == 1 and written["loss"] == ["info_nce", "cosent"]
    assert Phase.from_dict(written).to_dict() == written  # loads back as it was
