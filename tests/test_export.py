"""ONNX export: a per-task merged graph gives the PyTorch numbers in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from taskembed.cli import main
from taskembed.export import export_onnx

TEXTS = ["The cat sits on the warm windowsill.", "如何更改电子表格中的默认字体大小？", "Кошка сидит на подоконнике."]


def _run(path, emb, texts, task):
    prefixed, _ = emb.prepare(texts, task)
    ids = emb.tokenizer.encode(prefixed, max_length=512).ids
    n = max(map(len, ids))
    input_ids = np.full((len(ids), n), emb.config.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(ids), n), dtype=np.int64)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)], mask[r, : len(x)] = x, 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens, pooled = sess.run(None, {"input_ids": input_ids, "attention_mask": mask})
    assert tokens.shape == (len(ids), n, emb.config.hidden_size)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.parametrize("task", ["retrieval.query", "text-matching"])
def test_onnx_matches_pytorch(tiny, tmp_path, task):
    path = export_onnx(tiny, task, tmp_path / "m.onnx")
    got = _run(path, tiny, TEXTS, task)
    np.testing.assert_allclose(got, tiny.encode(TEXTS, task=task), atol=1e-4)
    # Each graph carries its own adapter: another task's graph gives other numbers.
    other = _run(export_onnx(tiny, "separation", tmp_path / "s.onnx"), tiny, TEXTS, task)
    assert np.abs(other - got).max() > 1e-3


def test_onnx_int8_close(tiny, tmp_path):
    path = export_onnx(tiny, "classification", tmp_path / "q.onnx", int8=True)
    got = _run(path, tiny, TEXTS, "classification")
    want = tiny.encode(TEXTS, task="classification")
    assert np.abs(got - want).max() > 0
    assert (got * want).sum(1).min() > 0.99


def test_export_cli(tiny_dir, tmp_path, capsys):
    assert main(["export", "--model", str(tiny_dir), "--task", "separation", "--output", str(tmp_path / "x.onnx")]) == 0
    assert (tmp_path / "x.onnx").is_file()
    assert main(["export", "--model", str(tiny_dir), "--task", "nope", "--output", str(tmp_path / "y.onnx")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_onnx_int8_keeps_calibrated_outlier_channels_in_float(tiny_dir, tmp_path):
    import onnx
    import torch

    import taskembed

    emb = taskembed.load(tiny_dir)
    with torch.no_grad():  # one GELU output channel far above the rest, as in trained encoders
        fc1, fc2 = emb.model.encoder.layers[0].mlp.fc1, emb.model.encoder.layers[0].mlp.fc2
        fc1.weight[3] *= 40
        fc1.bias[3] = 40.0
        fc2.weight[:, 3] /= 40
    path = export_onnx(emb, "classification", tmp_path / "q.onnx", int8=True)
    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    side = [n for n in graph.node if n.op_type == "MatMul" and made_by[n.input[0]].op_type == "Gather"]
    assert side, "no float MatMul for the outlier channels"
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)  # the rest is int8
    got, want = _run(path, emb, TEXTS, "classification"), emb.encode(TEXTS, task="classification")
    assert (got * want).sum(1).min() > 0.995
