"""Cost calculators: the FLOP model against torch's FLOP counter, the V3 paper's GPU hours, serving prices."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import r1lab.model
from conftest import micro_config
from r1lab.cli import main
from r1lab.config import count_parameters, preset
from r1lab.cost import (
    ServeCost,
    TrainCostSettings,
    active_matmul_params,
    training_cost,
    training_flops_per_token,
)
from r1lab.model import DeepseekV3ForCausalLM


def _counted_training_flops(model, ids, mtp: bool) -> float:
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the math kernel is made of matmuls the counter sees
        out = model(ids, mtp=mtp)
        loss = out.logits.sum() + sum(x.sum() for x in out.mtp_logits)
        loss.backward()
    return counter.get_total_flops()


def test_flop_model_equals_torch_flop_counter_on_a_training_step(monkeypatch):
    # The per-expert loop path runs F.linear, which the counter sees (it has no formula for grouped_mm).
    monkeypatch.setattr(r1lab.model, "_GROUPED_MM", False)
    # v_head_dim == qk_head_dim: our SDPA call pads v up to the qk size, which would add uncounted-by-us work.
    cfg = micro_config(v_head_dim=12)
    model = DeepseekV3ForCausalLM(cfg)
    model.init_weights(seed=0)
    batch, seq = 2, 48
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    trunk = _counted_training_flops(model, ids, mtp=False)
    both = _counted_training_flops(model, ids, mtp=True)
    # The math kernel computes every score, masked or not: compare with the non-causal form of the formula.
    predicted = training_flops_per_token(cfg, seq, causal=False)
    assert trunk == batch * seq * (predicted.matmul + predicted.attention)
    # MTP depth 1 runs on the first seq-1 positions, attending over seq-1 of them.
    assert both - trunk == batch * (seq - 1) * training_flops_per_token(cfg, seq - 1, causal=False).mtp


@pytest.mark.parametrize("name", ["tiny", "deepseek-v3"])
def test_active_matmul_weights_agree_with_counted_parameters(name):
    cfg = preset(name)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(cfg)
    counts = count_parameters(model)
    moe_layers = cfg.num_hidden_layers - cfg.first_k_dense_replace
    not_matmul = counts["components"]["norms"] + moe_layers * cfg.n_routed_experts  # norms and routing biases
    attention_norms = cfg.num_hidden_layers * (cfg.kv_lora_rank + (cfg.q_lora_rank or 0))
    assert active_matmul_params(cfg)["main"] == counts["activated_without_embedding"] - not_matmul - attention_norms

    mtp = model.mtp[0]
    unused = (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    elementwise = sum(p.numel() for n, p in mtp.named_parameters() if "norm" in n) + cfg.n_routed_experts
    mtp_params = counts["mtp"] - unused - elementwise + cfg.hidden_size * cfg.vocab_size  # + the shared head
    assert active_matmul_params(cfg)["mtp"] == mtp_params


def test_deepseek_v3_pretraining_lands_within_10_percent_of_the_paper(capsys):
    assert main(["cost", "train", "--preset", "deepseek-v3", "--tokens", "14.8e12", "--gpu", "h800", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["gpu_hours"] / 2_664e3 - 1) < 0.10
    assert abs(result["usd"] / 5.328e6 - 1) < 0.10
    # The same run described against the FP8 peak at half the utilisation costs the same.
    fp8 = training_cost(preset("deepseek-v3"), TrainCostSettings(tokens=14.8e12, precision="fp8", mfu=0.20))
    assert fp8.gpu_hours == pytest.approx(result["gpu_hours"])
    assert main(["cost", "train", "--preset", "deepseek-v3", "--tokens", "14.8T"]) == 0
    assert "GPU hours             2,707.2K" in capsys.readouterr().out


def test_attention_term_grows_with_sequence_length():
    cfg = preset("deepseek-v3")
    short, long = training_flops_per_token(cfg, 4096), training_flops_per_token(cfg, 8192)
    assert long.matmul == short.matmul and long.attention == pytest.approx(2 * short.attention)
    assert 0.1 < short.attention / short.matmul < 0.2


@pytest.mark.parametrize("field, value, message", [
    ("tokens", 0, "tokens=0: must be > 0"),
    ("mfu", 1.5, r"mfu=1.5: must be in \(0, 1\]"),
    ("gpu", "tpu", "gpu='tpu': allowed values are h800, h100, a100"),
    ("price_per_hour", -1, "price_per_hour=-1: must be >= 0"),
    ("seq_len", 0, "seq_len=0: must be an integer >= 1"),
])
def test_train_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainCostSettings(**{"tokens": 1e9, field: value})
    with pytest.raises(ValueError, match="no FP8"):
        TrainCostSettings(tokens=1e9, gpu="a100", precision="fp8")


def test_serving_prices_and_table(capsys):
    cost = ServeCost(decode_tokens_per_s=2000, prefill_tokens_per_s=8000, price_per_hour=3.6)
    assert cost.usd_per_million_output == pytest.approx(0.5)
    assert cost.usd_per_million_input == pytest.approx(0.125)
    assert ServeCost(decode_tokens_per_s=2000, price_per_hour=3.6).usd_per_million_input == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decode_tokens_per_s=0: must be > 0"):
        ServeCost(decode_tokens_per_s=0)

    assert main(["cost", "serve", "--tokens-per-s", "2000", "--prefill-tokens-per-s", "8000",
                 "--price-per-hour", "3.6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line[:22].strip(): line[22:].split() for line in lines[2:]}
    assert table == {"this deployment": ["0.1250", "0.5000"], "DeepSeek-R1 (list)": ["0.5500", "2.1900"],
                     "OpenAI o1 (list)": ["15.0000", "60.0000"]}
    assert main(["cost", "serve"]) == 2
    assert "--tokens-per-s" in capsys.readouterr().err


def test_serve_measures_the_engine(tmp_path, capsys):
    model = DeepseekV3ForCausalLM(micro_config())
    model.init_weights(seed=0)
    model.save_pretrained(tmp_path)
    assert main(["cost", "serve", "--measure", "--model", str(tmp_path), "--seconds", "0.3", "--batch", "2",
                 "--prompt-len", "16", "--price-per-hour", "0.1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["measured"]["decode_tokens_per_s"] > 0 and result["prefill_tokens_per_s"] > 0
    assert result["usd_per_million_output"] == pytest.approx(0.1 / (result["decode_tokens_per_s"] * 3600) * 1e6)
    assert set(result["reference_prices"]) == {"DeepSeek-R1 (list)", "OpenAI o1 (list)"}
