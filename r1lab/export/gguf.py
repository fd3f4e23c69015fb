"""Export a checkpoint as a GGUF file for llama.cpp's `deepseek2` architecture.

llama.cpp runs DeepSeek-V2/V3/R1 as architecture `deepseek2`. This writer follows what its loader
(src/models/deepseek2.cpp) and its own converter (convert_hf_to_gguf.py, `DeepseekV2Model`) agree on, written
from those facts with the `gguf` package (llama.cpp's pure-Python GGUF writer):

* MLA in the absorbed layout. llama.cpp caches only the latent and treats attention as MQA with one KV head of
  size kv_lora_rank + qk_rope_head_dim, so `kv_b_proj` is split per head into `attn_k_b` (W_UK, transposed to
  [heads, kv_lora_rank, nope]) and `attn_v_b` (W_UV, [heads, v, kv_lora_rank]) - the two matrices our absorbed
  decode folds into the query and the output. `head_count_kv` = 1, `key_length` = kv_lora_rank + rope,
  `value_length` = kv_lora_rank; `key_length_mla` / `value_length_mla` hold the per-head sizes of the expanded
  form, from which llama.cpp derives the softmax scale (nope + rope)^-0.5.
* RoPE: no permutation. llama.cpp's deepseek2 uses rope type NORM, which rotates adjacent pairs (x0,x1),(x2,x3)
  - DeepSeek's interleaved layout, the one our weights are in. (HF's half-split permutation happens at run time
  in transformers, never in the stored weights.)
* MoE: stacked experts `ffn_{gate,up,down}_exps` ([E, I, D] / [E, D, I], which our stacked `gate_up_proj` and
  `down_proj` already are), the router `ffn_gate_inp` (kept float32, like our fp32 gate), the selection bias
  `exp_probs_b`, shared expert `ffn_*_shexp`, and the routing settings: sigmoid gating, expert groups and used
  groups, `expert_weights_norm`, `expert_weights_scale` (= routed_scaling_factor). llama.cpp masks dropped groups
  with -inf, as we do.
* MTP is left out, as llama.cpp's converter does for deepseek2.
* Tokenizer: our byte-level BPE becomes `tokenizer.ggml.model = gpt2` with its vocabulary and merges. Our
  pre-tokenizer (digits one per token, then GPT-2's regex) is exactly llama.cpp's `starcoder` pre-tokenizer.
  Special tokens are CONTROL, the <think> tags USER_DEFINED (text, as in our decoder). Ids past the tokenizer's
  vocabulary up to the model's `vocab_size` become unused [PADn] entries, as llama.cpp's converter writes them.

Limits, stated: llama.cpp requires q_lora_rank unless the model has 26 or 27 layers, and a shared expert in every
MoE layer; both are checked here. It uses the model's rms_norm_eps for the q/kv LoRA norms, where DeepSeek's code
(and ours) fix 1e-6 - identical for every DeepSeek config. YaRN is written in llama.cpp's convention (log
multiplier 0.1 * mscale_all_dim, mscale assumed equal to mscale_all_dim); the tiny/small presets do not use it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..config import ModelConfig
from ..model import MLA, DeepseekV3ForCausalLM, MoE, SwiGLU
from .hf import check_target

ARCH = "deepseek2"
GGUF_DTYPES = ("f32", "f16")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ValueError("GGUF export needs the `gguf` package: pip install gguf") from None
    return gguf


def check_supported(cfg: ModelConfig) -> None:
    """Raise ValueError for configurations llama.cpp's deepseek2 loader cannot represent."""
    if cfg.q_lora_rank is None and cfg.num_hidden_layers not in (26, 27):
        raise ValueError("llama.cpp's deepseek2 loader needs q_lora_rank unless the model has 26 or 27 layers "
                         f"(this one has {cfg.num_hidden_layers}); export to HF instead")
    if cfg.first_k_dense_replace < cfg.num_hidden_layers and cfg.n_shared_experts < 1:
        raise ValueError("llama.cpp's deepseek2 loader needs n_shared_experts >= 1 in MoE layers")


# --------------------------------------------------------------------------- metadata


def _write_hparams(writer, cfg: ModelConfig, file_type) -> None:
    gguf = _gguf()
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(1)  # absorbed MLA is multi-query attention over the latent
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)
    # mla
    if cfg.q_lora_rank is not None:
        writer.add_q_lora_rank(cfg.q_lora_rank)
    writer.add_kv_lora_rank(cfg.kv_lora_rank)
    writer.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    writer.add_value_length(cfg.kv_lora_rank)
    writer.add_key_length_mla(cfg.qk_head_dim)
    writer.add_value_length_mla(cfg.v_head_dim)
    writer.add_rope_dimension_count(cfg.qk_rope_head_dim)
    # moe
    writer.add_leading_dense_block_count(cfg.first_k_dense_replace)
    writer.add_expert_count(cfg.n_routed_experts)
    writer.add_expert_used_count(cfg.num_experts_per_tok)
    writer.add_expert_shared_count(cfg.n_shared_experts)
    writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    writer.add_expert_group_count(cfg.n_group)
    writer.add_expert_group_used_count(cfg.topk_group)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    writer.add_expert_weights_norm(bool(cfg.norm_topk_prob))
    writer.add_expert_weights_scale(float(cfg.routed_scaling_factor))
    # rope scaling
    scaling = cfg.rope_scaling
    if scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling.get("original_max_position_embeddings")
                                                 or cfg.max_position_embeddings))
        writer.add_rope_scaling_yarn_beta_fast(float(scaling.get("beta_fast") or 32))
        writer.add_rope_scaling_yarn_beta_slow(float(scaling.get("beta_slow") or 1))
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale_all:
            # llama.cpp's deepseek2 reads this key divided by 0.1 (its converter's historical convention).
            writer.add_rope_scaling_yarn_log_mul(0.1 * float(mscale_all))
        if mscale and mscale_all and mscale != mscale_all:
            warnings.warn(f"rope_scaling mscale={mscale} differs from mscale_all_dim={mscale_all}; llama.cpp assumes "
                          "they are equal, so its attention scale will differ from ours", stacklevel=3)


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer, when it has one that splits text the same way."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "starcoder"  # each digit alone, then GPT-2's regex
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    warnings.warn("the tokenizer's pre-tokenizer has no llama.cpp equivalent known to r1lab; writing 'default', "
                  "so llama.cpp may split text differently (token ids given directly are unaffected)", stacklevel=3)
    return "default"


def _write_tokenizer(writer, model_dir: Path, cfg: ModelConfig) -> bool:
    """Vocabulary, merges, special ids and chat template from tokenizer.json; False if there is none."""
    gguf = _gguf()
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        writer.add_tokenizer_model("none")  # llama.cpp then runs on token ids only
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    bpe = spec.get("model", {})
    if bpe.get("type") != "BPE":
        raise ValueError(f"{path}: only BPE tokenizers can be exported to GGUF (this one is {bpe.get('type')!r})")
    vocab: dict[str, int] = dict(bpe["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    vocab.update({t["content"]: i for i, t in added.items()})
    if vocab and max(vocab.values()) >= cfg.vocab_size:
        raise ValueError(f"{path} has token ids up to {max(vocab.values())}, beyond the model's vocab_size "
                         f"{cfg.vocab_size}")
    by_id = {i: token for token, i in vocab.items()}
    tokens, types = [], []
    for i in range(cfg.vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    settings_path = model_dir / "tokenizer_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}

    def token_id(key: str, fallback: int | None) -> int | None:
        value = settings.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        return vocab.get(value, fallback) if isinstance(value, str) else fallback

    for key, fallback, add in (("bos_token", cfg.bos_token_id, writer.add_bos_token_id),
                               ("eos_token", cfg.eos_token_id, writer.add_eos_token_id),
                               ("pad_token", cfg.pad_token_id, writer.add_pad_token_id)):
        found = token_id(key, fallback)
        if found is not None:
            add(found)
    writer.add_add_bos_token(False)  # our encoding adds no BOS; the chat template writes it
    writer.add_add_eos_token(False)
    if isinstance(settings.get("chat_template"), str):
        writer.add_chat_template(settings["chat_template"])
    return True


# --------------------------------------------------------------------------- tensors


def gguf_tensors(model: DeepseekV3ForCausalLM) -> dict[str, torch.Tensor]:
    """llama.cpp tensor name -> tensor, shaped as numpy sees it (GGUF stores the reversed shape)."""
    gguf = _gguf()
    T = gguf.MODEL_TENSOR

    def name(kind, bid: int | None = None, suffix: str = "weight") -> str:
        base = gguf.TENSOR_NAMES[kind]
        return (base.format(bid=bid) if bid is not None else base) + "." + suffix

    cfg = model.config
    out = {name(T.TOKEN_EMBD): model.model.embed_tokens.weight, name(T.OUTPUT_NORM): model.model.norm.weight}
    if not cfg.tie_word_embeddings:
        out[name(T.OUTPUT)] = model.lm_head.weight
    for i, layer in enumerate(model.model.layers):
        attn: MLA = layer.self_attn
        out[name(T.ATTN_NORM, i)] = layer.input_layernorm.weight
        if hasattr(attn, "q_proj"):
            out[name(T.ATTN_Q, i)] = attn.q_proj.weight
        else:
            out[name(T.ATTN_Q_A, i)] = attn.q_a_proj.weight
            out[name(T.ATTN_Q_A_NORM, i)] = attn.q_a_layernorm.weight
            out[name(T.ATTN_Q_B, i)] = attn.q_b_proj.weight
        out[name(T.ATTN_KV_A_MQA, i)] = attn.kv_a_proj_with_mqa.weight
        out[name(T.ATTN_KV_A_NORM, i)] = attn.kv_a_layernorm.weight
        # kv_b rows per head are [W_UK (nope rows); W_UV (v rows)], each over kv_lora_rank columns.
        kv_b = attn.kv_b_proj.weight.view(cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, -1)
        out[name(T.ATTN_K_B, i)] = kv_b[:, : cfg.qk_nope_head_dim].transpose(1, 2)  # [H, kv_lora_rank, nope]
        out[name(T.ATTN_V_B, i)] = kv_b[:, cfg.qk_nope_head_dim:]  # [H, v, kv_lora_rank]
        out[name(T.ATTN_OUT, i)] = attn.o_proj.weight
        out[name(T.FFN_NORM, i)] = layer.post_attention_layernorm.weight
        mlp = layer.mlp
        if isinstance(mlp, SwiGLU):
            out[name(T.FFN_GATE, i)] = mlp.gate_proj.weight
            out[name(T.FFN_UP, i)] = mlp.up_proj.weight
            out[name(T.FFN_DOWN, i)] = mlp.down_proj.weight
            continue
        assert isinstance(mlp, MoE)
        gate, up = mlp.experts.gate_up_proj.chunk(2, dim=1)  # [E, 2I, D] -> two [E, I, D]
        out[name(T.FFN_GATE_INP, i)] = mlp.gate.weight
        out[name(T.FFN_EXP_PROBS_B, i, "bias")] = mlp.gate.e_score_correction_bias
        out[name(T.FFN_GATE_EXP, i)] = gate
        out[name(T.FFN_UP_EXP, i)] = up
        out[name(T.FFN_DOWN_EXP, i)] = mlp.experts.down_proj  # [E, D, I]
        out[name(T.FFN_GATE_SHEXP, i)] = mlp.shared_experts.gate_proj.weight
        out[name(T.FFN_UP_SHEXP, i)] = mlp.shared_experts.up_proj.weight
        out[name(T.FFN_DOWN_SHEXP, i)] = mlp.shared_experts.down_proj.weight
    return out


def _keep_float32(name: str, tensor: torch.Tensor) -> bool:
    # Norms and biases (1-D) and the router stay float32, as in llama.cpp's converter.
    return tensor.dim() == 1 or ".ffn_gate_inp." in name


def export_gguf(model_dir: str | os.PathLike, out_file: str | os.PathLike, dtype: str = "f32",
                force: bool = False) -> Path:
    """Write `model_dir`'s model (MTP excluded) as one llama.cpp `deepseek2` GGUF file; returns its path."""
    gguf = _gguf()
    src, out = Path(model_dir), Path(out_file)
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype={dtype!r}: allowed values are {', '.join(GGUF_DTYPES)}")
    check_target(out, force)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no MTP weights.*")  # MTP is not exported anyway
        model = load_model(src)
    cfg = model.config
    check_supported(cfg)
    file_type = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_name(src.resolve().name)
        _write_hparams(writer, cfg, file_type)
        _write_tokenizer(writer, src, cfg)
        for name, tensor in gguf_tensors(model).items():
            array = tensor.detach().float().contiguous().numpy()
            if dtype == "f16" and not _keep_float32(name, tensor):
                array = array.astype(np.float16)
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
