"""The trainer: GradCache gradient == plain gradient; resume == uninterrupted; two gloo processes == one."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from support.synthetic import Topics, tiny_embedder
from taskembed.io import write_jsonl
from taskembed.lora import lora_parameters
from taskembed_train.data import BatchStream, Source
from taskembed_train.loop import Trainer
from taskembed_train.objectives import MLM, Contrastive, LMHead
from taskembed_train.settings import Phase

TOPICS = Topics.make(n_topics=8, seed=3)


def _files(d):
    return {
        "pairs": write_jsonl(d / "pairs.jsonl", TOPICS.pairs(64, 1)),
        "tuples": write_jsonl(d / "tuples.jsonl", TOPICS.tuples(64, 2, negatives=2)),
        "scored": write_jsonl(d / "scored.jsonl", TOPICS.scored(64, 3)),
        "labelled": write_jsonl(d / "labelled.jsonl", TOPICS.labelled(64, 4, n_labels=4)),
        "raw": write_jsonl(d / "raw.jsonl", TOPICS.raw(64, 5)),
    }


def _trainer(files, steps=4, dropout=0.0, grad_cache_rows=None, ckpt=None, adapter=False):
    emb = tiny_embedder(TOPICS, seed=0, lora=adapter, hidden_dropout_prob=dropout)
    model = emb.model.train()
    tasks = None
    q = d = -1
    if adapter:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in lora_parameters(model):
            p.requires_grad_(True)
        q, d, tasks = 0, 1, [0, 1]
    stream = BatchStream([Source(files[k], num_negatives=2) for k in sorted(files) if k != "raw"],
                         batch_size=8, seed=5)
    obj = Contrastive(emb.config, query_task=q, doc_task=d, tau=0.1, dims=[16, 32])
    cfg = Phase(steps=steps, lr=1e-3, warmup_steps=2, log_every=0, max_length=16,
                grad_cache_rows=grad_cache_rows or 0, checkpoint_every=2 if ckpt else 0, keep_checkpoints=5)
    return Trainer(model, obj, stream, cfg, ckpt, tokenizer=emb.tokenizer, adapter_tasks=tasks)


def _mlm_trainer(files, steps=4, dropout=0.0, micro_tokens=None, ckpt=None):
    emb = tiny_embedder(TOPICS, seed=0, hidden_dropout_prob=dropout)
    model = emb.model.train()
    head = LMHead(emb.config, model.embeddings.word_embeddings.weight)
    obj = MLM(emb.tokenizer, head, max_length=16, prob=0.3, seed=1, micro_tokens=micro_tokens)
    # Token-budget buckets: batches of different sizes, some with fewer rows than processes.
    stream = BatchStream([Source(files["raw"])], batch_size=8, seed=5, max_tokens=40,
                         length_fn=lambda r: len(r["text"].split()) + 2, pool_batches=2)
    cfg = Phase(steps=steps, lr=1e-3, warmup_steps=2, log_every=0, max_length=16,
                checkpoint_every=2 if ckpt else 0)
    return Trainer(model, obj, stream, cfg, ckpt, tokenizer=emb.tokenizer, modules={"head": head})


def test_mlm_micro_batches_equal_one_batch(tmp_path):
    files = _files(tmp_path)
    grads = []
    for micro in (None, 20):
        tr = _mlm_trainer(files, micro_tokens=micro)
        tr.optimizer.zero_grad()
        loss = tr._plain_backward(next(tr.stream))
        grads.append((loss, [p.grad.clone() for p in tr.params if p.grad is not None]))
    (l1, g1), (l2, g2) = grads
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert len(g1) == len(g2) > 10
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mlm_resume_equals_uninterrupted(tmp_path):
    files = _files(tmp_path)
    full = _mlm_trainer(files, dropout=0.1)
    full.train()
    part = _mlm_trainer(files, dropout=0.1, ckpt=tmp_path / "ck")
    part.steps = 2
    part.train()
    resumed = _mlm_trainer(files, dropout=0.1, ckpt=tmp_path / "ck")
    resumed.load_checkpoint(Trainer.latest_checkpoint(tmp_path / "ck"))
    resumed.train()
    for (n, a), b in zip(full.modules.state_dict().items(), resumed.modules.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("kind", ["pairs", "tuples", "scored", "labelled"])
def test_grad_cache_equals_full_batch_gradient(tmp_path, kind):
    files = _files(tmp_path)
    grads = []
    for rows in (None, 5):
        tr = _trainer({kind: files[kind]}, grad_cache_rows=rows)
        batch = next(tr.stream)
        tr.optimizer.zero_grad()
        loss = tr._contrastive_backward(batch)
        grads.append((loss, [p.grad.clone() for p in tr.params if p.grad is not None]))
    (l1, g1), (l2, g2) = grads
    assert len(g1) == len(g2) > 10
    assert l1 == pytest.approx(l2, rel=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_resume_equals_uninterrupted(tmp_path):
    files = _files(tmp_path)
    # Dropout on: the RNG state must come back with the checkpoint, and GradCache must replay it.
    full = _trainer(files, steps=4, dropout=0.1, grad_cache_rows=6)
    full.train()
    part = _trainer(files, steps=4, dropout=0.1, grad_cache_rows=6, ckpt=tmp_path / "ck")
    part.steps = 2  # stop after the step-2 checkpoint, as if killed
    part.train()
    resumed = _trainer(files, steps=4, dropout=0.1, grad_cache_rows=6, ckpt=tmp_path / "ck")
    resumed.load_checkpoint(Trainer.latest_checkpoint(tmp_path / "ck"))
    assert resumed.step == 2
    resumed.train()
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert full.losses == resumed.losses


def test_adapter_mask_leaves_other_slices_bit_identical(tmp_path):
    files = _files(tmp_path)
    tr = _trainer({"tuples": files["tuples"]}, steps=3, adapter=True)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    moved = False
    for n, p in tr.model.named_parameters():
        if n.endswith(("lora_A", "lora_B")):
            assert torch.equal(p[2:], before[n][2:]), n
            moved |= not torch.equal(p[:2], before[n][:2])
        else:
            assert torch.equal(p, before[n]), n
    assert moved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, files, out, rows, mlm=False):
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tr = _mlm_trainer(files, steps=3) if mlm else _trainer(files, steps=3, grad_cache_rows=rows)
        tr.train()
        if rank == 0:
            grads = [p.grad for p in tr.params if p.grad is not None]
            torch.save({"state": tr.modules.state_dict(), "losses": tr.losses, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mlm", [False, True], ids=["contrastive", "mlm"])
def test_two_gloo_processes_equal_one(tmp_path, mlm):
    files = _files(tmp_path)
    one = _mlm_trainer(files, steps=3) if mlm else _trainer(files, steps=3)
    one.train()
    out = tmp_path / "two.pt"
    # Contrastive: GradCache on in the two-process run, so gather + cached gradients must compose.
    # MLM: bucketed batches of uneven size; the masked-token count is summed over processes.
    # fork: the children skip re-importing torch, which is most of the cost on a small machine.
    mp.start_processes(_worker, args=(2, _free_port(), files, out, 3, mlm), nprocs=2, join=True,
                       start_method="fork")
    two = torch.load(out, weights_only=False)
    for l1, l2 in zip(one.losses, two["losses"], strict=True):
        assert l1 == pytest.approx(l2, rel=1e-5)
    # The last step's averaged gradients match the one-process gradient of the same global batch.
    g1 = [p.grad for p in one.params if p.grad is not None]
    assert len(g1) == len(two["grads"]) > 10
    for a, b in zip(g1, two["grads"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    # Weights agree up to Adam's amplification of round-off in gradients that are zero in exact arithmetic
    # (e.g. the key bias): at most a few lr-sized steps.
    for (n, a), b in zip(one.modules.state_dict().items(), two["state"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=4e-3, msg=n)


@pytest.mark.parametrize("script, best", [([1.0, 3.0, 2.0], 2), ([5.0, 3.0, 2.0], 0), ([1.0, 2.0, 3.0], 4)])
def test_keep_best_ends_at_the_best_evaluation(tmp_path, script, best):
    files = _files(tmp_path)
    tr = _trainer({"tuples": files["tuples"]}, steps=4, adapter=True)
    tr.cfg.eval_every, tr.cfg.keep_best = 2, "dev"
    seen = {}

    def eval_fn(step):
        seen[step] = [p.detach().clone() for p in tr.params]
        return {"dev": script[len(seen) - 1]}

    tr.eval_fn = eval_fn
    tr.train()
    assert sorted(seen) == [0, 2, 4]  # the start is evaluated too
    assert not all(torch.equal(a, b) for a, b in zip(seen[0], seen[4], strict=True))  # training moved them
    for p, want in zip(tr.params, seen[best], strict=True):
        assert torch.equal(p, want)


def test_keep_best_names_a_metric_the_evaluation_lacks(tmp_path):
    tr = _trainer({"tuples": _files(tmp_path)["tuples"]}, steps=2, adapter=True)
    tr.cfg.eval_every, tr.cfg.keep_best = 1, "dve"
    tr.eval_fn = lambda step: {"dev": 1.0}
    with pytest.raises(ValueError, match="'dve' is not among the evaluation's: dev"):
        tr.train()
