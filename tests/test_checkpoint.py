"""Safetensors checkpoints: round trips, sharding, FP8 blocks, and errors that name every problem."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import micro_config, perturb
from r1lab import CheckpointError, load_model
from r1lab.checkpoint import dequantize_fp8, quantize_fp8
from r1lab.model import DeepseekV3ForCausalLM


def _saved(tmp_path, **kwargs):
    model = DeepseekV3ForCausalLM(micro_config())
    perturb(model, seed=4)
    model.eval().save_pretrained(tmp_path, **kwargs)
    return model


def _ids(model):
    return torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))


def test_round_trip_is_exact_and_keeps_mtp(tmp_path):
    model = _saved(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    n = model.config.num_hidden_layers
    assert {f"model.layers.{n}.eh_proj.weight", f"model.layers.{n}.enorm.weight",
            f"model.layers.{n}.shared_head.head.weight", f"model.layers.{n}.embed_tokens.weight",
            "model.layers.1.mlp.experts.7.up_proj.weight", "model.layers.1.mlp.gate.e_score_correction_bias"} <= keys
    loaded = load_model(tmp_path)
    assert loaded.config.num_nextn_predict_layers == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = _ids(model)
    assert torch.equal(model(ids, mtp=True).mtp_logits[0], loaded(ids, mtp=True).mtp_logits[0])


def test_sharded_save_and_load(tmp_path):
    model = _saved(tmp_path, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and all((tmp_path / s).exists() for s in shards)
    assert not (tmp_path / "model.safetensors").exists()
    loaded = load_model(tmp_path)
    ids = _ids(model)
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    # Saving again unsharded removes the old shards and the index.
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]


def test_dtype_bfloat16(tmp_path):
    _saved(tmp_path)
    model = load_model(tmp_path, dtype="bfloat16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert torch.isfinite(model(_ids(model)).logits.float()).all()
    with pytest.raises(ValueError, match="float32"):
        load_model(tmp_path, dtype="int3")


def test_fp8_dequantisation_exact_with_partial_edge_blocks():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(576, 200, generator=gen)  # 576 rows -> 5 row blocks, 200 cols -> 2 col blocks
    fp8, scale_inv = quantize_fp8(weight)
    assert fp8.dtype == torch.float8_e4m3fn and scale_inv.shape == (5, 2)
    reference = torch.empty(576, 200)
    for i in range(576):
        for j in range(0, 200, 8):  # 8-column strips never straddle a 128-column block
            cols = slice(j, j + 8)
            reference[i, cols] = fp8[i, cols].float() * scale_inv[i // 128, j // 128]
    assert torch.equal(dequantize_fp8(fp8, scale_inv), reference)
    assert (dequantize_fp8(fp8, scale_inv) - weight).abs().max() < 0.07 * weight.abs().max()
    with pytest.raises(CheckpointError, match="expected \\(5, 2\\)"):
        dequantize_fp8(fp8, scale_inv[:4])


def test_fp8_checkpoint_loads_dequantised(tmp_path):
    model = _saved(tmp_path, fp8=True)
    stored = load_file(tmp_path / "model.safetensors")
    key = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    assert stored[key].dtype == torch.float8_e4m3fn and key + "_scale_inv" in stored
    assert stored["model.layers.1.mlp.gate.weight"].dtype == torch.float32  # router stays full precision
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["weight_block_size"] == [128, 128]
    loaded = load_model(tmp_path)
    expected = dequantize_fp8(stored[key], stored[key + "_scale_inv"])
    assert torch.equal(loaded.model.layers[1].self_attn.kv_a_proj_with_mqa.weight, expected)
    up = dequantize_fp8(stored["model.layers.1.mlp.experts.3.up_proj.weight"],
                        stored["model.layers.1.mlp.experts.3.up_proj.weight_scale_inv"])
    assert torch.equal(loaded.model.layers[1].mlp.experts.gate_up_proj[3, model.config.moe_intermediate_size:], up)
    ids = _ids(model)
    # Quantisation error (and the odd flipped expert choice), not garbage: logits stay closely aligned.
    similarity = torch.cosine_similarity(loaded(ids).logits.flatten(), model(ids).logits.flatten(), dim=0)
    assert similarity > 0.95


def test_every_problem_reported_in_one_message(tmp_path):
    _saved(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.0.self_attn.o_proj.weight"]
    del tensors["model.layers.2.mlp.experts.5.gate_proj.weight"]
    tensors["model.layers.0.self_attn.bogus.weight"] = torch.zeros(2)
    tensors["model.norm.weight"] = torch.zeros(7)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    message = str(err.value)
    for part in ("2 missing", "model.layers.0.self_attn.o_proj.weight", "model.layers.2.mlp.experts.5.gate_proj.weight",
                 "1 unexpected", "model.layers.0.self_attn.bogus.weight", "1 shape mismatch",
                 "model.norm.weight: checkpoint (7,) vs model (32,)"):
        assert part in message


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_checkpoints_are_refused(tmp_path, name):
    micro_config().save(tmp_path)
    (tmp_path / name).write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="pickle checkpoints .* arbitrary code"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_model(tmp_path / name)


def test_missing_directory_and_corrupt_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nope")
    micro_config().save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path)
