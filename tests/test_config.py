"""Config tree: YAML + overrides, unknown keys and wrong types rejected with the path named."""
from pathlib import Path

import pytest

from pipeline.config import ConfigError, TrainConfig, dump_yaml, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_and_starts_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m pipeline."), f"{path.name} must start with its launch command"


def test_overrides_apply_with_types():
    cfg = load_config(CONFIGS / "smoke.yaml", ["optim.lr=0.01", "schedule.epochs=3",
                                               "loss.weights={ce: 1.0, supcon: 0.1}"])
    assert cfg.optim.lr == 0.01 and cfg.schedule.epochs == 3
    assert cfg.loss.weights == {"ce": 1.0, "supcon": 0.1}


def test_int_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(None, ["optim.lrr=0.1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"schedule\.epochs: expected int"):
        load_config(None, ["schedule.epochs=many"])


def test_unknown_loss_term_rejected():
    with pytest.raises(ConfigError, match="unknown term"):
        load_config(None, ["loss.weights={focal: 1.0}"])


def test_sam_with_accumulation_rejected():
    with pytest.raises(ConfigError, match="grad_accum"):
        load_config(None, ["optim.sam=true", "optim.grad_accum=2"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", ["run.name=x"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(p) == cfg
    assert cfg.flat()["optim.lr"] == cfg.optim.lr


def test_dict_entry_override_keeps_the_other_entries():
    cfg = load_config(CONFIGS / "smoke.yaml", ["loss.weights.supcon=0.3"])
    assert cfg.loss.weights == {"ce": 1.0, "lsce": 2.0, "supcon": 0.3}


def test_exponent_floats_parse():
    assert load_config(None, ["optim.lr=1e-7"]).optim.lr == 1e-7
