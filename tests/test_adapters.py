"""The adapter registry: every table that depends on an adapter kind agrees with it."""

from __future__ import annotations

import dataclasses

from taskembed import adapters
from taskembed.config import EncoderConfig
from taskembed.eval.tasks import MAIN_SCORE
from taskembed_train import data, devtasks, losses, stages
from taskembed_train.settings import Phase


def test_official_adapter_order_and_prefixes():
    assert adapters.TASKS == ("retrieval.query", "retrieval.passage", "separation", "classification",
                              "text-matching")  # the official checkpoint's lora_adaptations
    cfg = EncoderConfig()
    assert cfg.lora_adaptations == list(adapters.TASKS)
    assert cfg.task_instructions["retrieval.query"].startswith("Represent the query")
    assert cfg.task_instructions["separation"] == ""


def test_every_task_type_is_served_by_exactly_one_kind():
    served = [t for k in adapters.KINDS for t in k.serves]
    assert sorted(served) == sorted(MAIN_SCORE) and len(set(served)) == len(served)
    assert adapters.TASK_ADAPTERS["retrieval"] == ("retrieval.query", "retrieval.passage")
    assert adapters.TASK_ADAPTERS["clustering"] == ("separation", "separation")


def test_training_tables_come_from_the_registry():
    for k in adapters.KINDS:
        assert losses.loss_names(k.losses) == k.losses
        assert {d for n in k.losses for d in losses.LOSSES[n]} <= set(data.KINDS) - {"raw"}
        assert set(k.defaults) <= {f.name for f in dataclasses.fields(Phase)}
        assert stages.ADAPTER_KINDS[k.name] == {**k.defaults, "loss": list(k.losses)}
        assert devtasks.DEV_TYPES[k.name] == k.serves
        for task in k.adapters:
            assert adapters.kind_of(task) is k and stages.adapter_kind(task, {}) == k.name
    assert adapters.kind_of("legal.query") is None
    assert stages.adapter_kind("legal.query", {}) == "text-matching"
    assert stages.adapter_kind("retrieval.legal", {}) == "retrieval"
