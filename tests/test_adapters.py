"""The adapter registry: every table that depends on an adapter kind agrees with it."""

from __future__ import annotations

from taskembed import adapters
from taskembed.config import EncoderConfig
from taskembed.eval.tasks import MAIN_SCORE
from taskembed_train import cli, data, devtasks, losses, stages


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


def test_every_kind_has_a_config_of_known_settings_and_losses():
    """Each kind trains from its built-in config (Table A1): it parses as typed phases, names the paper's
    losses, and those losses train on data kinds the stream reads."""
    files = {p.stem for p in stages.CONFIGS.glob("*.toml")}
    assert {f"adapters-{k.name}" for k in adapters.KINDS} | {"mlm", "pairs", "distill"} == files
    for k in adapters.KINDS:
        name = stages.default_config("adapters", k.query)
        assert name == f"adapters-{k.name}"
        settings = cli.read_settings(stages.config_path(name))
        (ph,) = stages.phase_settings("adapters", {**settings, "overrides": {"data": ["x.jsonl"]}})
        assert ph.name == "adapter" and ph.loss and ph.lr > 0
        assert {d for n in ph.loss for d in losses.LOSSES[n]} <= set(data.KINDS) - {"raw"}
        assert devtasks.DEV_TYPES[k.name] == k.serves
        for task in k.adapters:
            assert adapters.kind_of(task) is k
    assert adapters.kind_of("legal.query") is None
    assert stages.default_config("adapters", "legal.query") == "adapters-text-matching"
    assert stages.default_config("adapters", "retrieval.legal") == "adapters-retrieval"
    assert stages.default_config("pairs") == "pairs"
