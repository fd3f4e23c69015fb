"""ModelConfig: HF names, both RoPE spellings, validation messages, presets and parameter accounting."""

import json

import pytest
import torch

from r1lab.cli import main
from r1lab.config import ConfigError, ModelConfig, count_parameters, preset
from r1lab.model import DeepseekV3ForCausalLM


def test_deepseek_v3_parameter_count_on_meta_device():
    with torch.device("meta"):
        counts = count_parameters(DeepseekV3ForCausalLM(preset("deepseek-v3")))
    assert counts["total"] == 671_026_419_200
    assert 37.5e9 < counts["activated"] < 37.6e9
    assert 36.5e9 < counts["activated_without_embedding"] < 36.7e9
    # REFERENCE §1: with its own embedding and head copies the checkpoint holds ~684.5B parameters.
    stored = counts["total_with_mtp"] + 2 * counts["components"]["embedding"]
    assert round(stored / 1e9, 1) == 684.5


def test_presets_fit_their_purpose():
    with torch.device("meta"):
        tiny = count_parameters(DeepseekV3ForCausalLM(preset("tiny")))
        small = count_parameters(DeepseekV3ForCausalLM(preset("small")))
    cfg = preset("tiny")
    assert 1e6 < tiny["total_with_mtp"] < 10e6 and cfg.n_routed_experts >= 8 and cfg.n_shared_experts >= 1
    assert cfg.q_lora_rank and cfg.kv_lora_rank
    assert 100e6 <= small["total"] <= 200e6 and 20e6 <= small["activated"] <= 40e6


def test_reads_transformers5_rope_parameters():
    cfg = ModelConfig.from_dict({**preset("tiny").to_dict(), "rope_scaling": None, "rope_theta": None,
                                 "rope_parameters": {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0,
                                                     "original_max_position_embeddings": 256, "type": "yarn"}})
    assert cfg.rope_theta == 5000.0 and cfg.rope_scaling["factor"] == 4.0 and "type" not in cfg.rope_scaling
    default = ModelConfig.from_dict({**preset("tiny").to_dict(),
                                     "rope_parameters": {"rope_type": "default", "rope_theta": 123.0}})
    assert default.rope_scaling is None and default.rope_theta == 123.0


def test_unknown_keys_are_reported():
    with pytest.warns(UserWarning, match="frobnicate"):
        ModelConfig.from_dict({**preset("tiny").to_dict(), "frobnicate": 1})


@pytest.mark.parametrize("override, words", [
    ({"n_routed_experts": 10, "n_group": 4}, ["n_routed_experts=10", "divisible by n_group (4)"]),
    ({"topk_group": 9}, ["topk_group=9", "between 1 and n_group"]),
    ({"num_experts_per_tok": 99}, ["num_experts_per_tok=99", "between 1 and"]),
    ({"scoring_func": "softmax"}, ["scoring_func='softmax'", "'sigmoid'"]),
    ({"qk_rope_head_dim": 5}, ["qk_rope_head_dim=5", "even"]),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2}}, ["rope_type='linear'", "'yarn'"]),
    ({"q_lora_rank": 0}, ["q_lora_rank=0", "null"]),
])
def test_validation_names_field_and_allowed_values(override, words):
    with pytest.raises(ConfigError) as err:
        preset("tiny", **override)
    for word in words:
        assert word in str(err.value)


def test_params_cli_json(capsys):
    assert main(["params", "--preset", "deepseek-v3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["total"] == 671_026_419_200 and out["mtp"] > 11e9 and "activated" in out


def test_params_cli_config_file_and_errors(tmp_path, capsys):
    preset("small").save(tmp_path)
    assert main(["params", "--config", str(tmp_path)]) == 0
    assert "activated per token" in capsys.readouterr().out
    (tmp_path / "config.json").write_text(json.dumps({**preset("tiny").to_dict(), "n_group": 3}))
    assert main(["params", "--config", str(tmp_path / "config.json")]) == 2
    assert "n_routed_experts=16" in capsys.readouterr().err
    assert main(["params", "--config", str(tmp_path / "missing.json")]) == 2
    assert "no config file" in capsys.readouterr().err
