"""Model configuration, presets and parameter accounting.

`ModelConfig` uses the field names of Hugging Face's `config.json` for DeepseekV3, so a checkpoint's config loads
with `ModelConfig.from_dict(json)` and no rename table. Two spellings of the RoPE settings exist in the wild:
DeepSeek's own files and transformers 4 write `rope_theta` + `rope_scaling`; transformers 5 writes one
`rope_parameters` dict that also holds `rope_theta`. Both are read; we write the DeepSeek spelling, which
transformers 5 still accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Checkpoints shipped in the repository (written by `r1lab run --ship`); tiny-r1 is the default of chat, serve, eval.
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL_DIR = SHIPPED_MODELS_DIR / "tiny-r1"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


# HF bookkeeping keys that carry no model semantics; accepted silently and not written back.
_IGNORED_KEYS = {
    "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "model_type", "use_cache",
    "pretraining_tp", "output_router_logits", "router_aux_loss_coef", "aux_loss_alpha", "seq_aux", "qk_head_dim",
    "head_dim", "ep_size", "moe_layer_freq", "num_local_experts", "_name_or_path", "attention_dropout",
    "initializer_range", "hidden_act", "pad_token_id", "bos_token_id", "eos_token_id", "attention_bias",
}


@dataclass
class ModelConfig:
    # sizes
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = None  # MLA has no separate KV heads; kept for HF compatibility
    max_position_embeddings: int = 163840
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.006
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = None
    # mla
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # moe
    moe_intermediate_size: int = 2048
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    first_k_dense_replace: int = 3
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    # rope
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rope_interleave: bool = True
    # mtp
    num_nextn_predict_layers: int = 1
    # checkpoint metadata (FP8 block quantisation of the released weights); not a model setting
    quantization_config: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            self.rope_scaling["rope_type"] = kind
            self.rope_scaling.pop("type", None)
            if "rope_theta" in self.rope_scaling:
                self.rope_theta = float(self.rope_scaling.pop("rope_theta"))
            if kind == "default":
                self.rope_scaling = None
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {msg}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                     "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, name, "must be a positive integer")
        need(self.q_lora_rank is None or (isinstance(self.q_lora_rank, int) and self.q_lora_rank > 0),
             "q_lora_rank", "must be a positive integer or null (null means one q_proj)")
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "must be even (RoPE rotates pairs)")
        need(self.num_key_value_heads == self.num_attention_heads, "num_key_value_heads",
             f"MLA shares one latent across heads; must equal num_attention_heads ({self.num_attention_heads})")
        need(0 <= self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
             f"must be between 0 and num_hidden_layers ({self.num_hidden_layers})")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must be >= 0")
        need(self.rope_interleave is True, "rope_interleave",
             "only true (DeepSeek's interleaved-pair RoPE) is supported; false describes a different model")
        if self.first_k_dense_replace > 0:
            need(self.intermediate_size > 0, "intermediate_size", "must be positive when dense layers exist")
        if self.has_moe:
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be positive")
            need(self.n_routed_experts > 0, "n_routed_experts", "must be positive")
            need(self.n_shared_experts >= 0, "n_shared_experts", "must be >= 0")
            need(self.n_group > 0, "n_group", "must be positive")
            need(self.n_routed_experts % self.n_group == 0, "n_routed_experts",
                 f"must be divisible by n_group ({self.n_group}); allowed values are multiples of {self.n_group}")
            need(self.n_routed_experts // self.n_group >= 2, "n_group",
                 f"each group needs >= 2 experts (group score = sum of its top-2); "
                 f"allowed: a divisor of n_routed_experts ({self.n_routed_experts}) no larger than "
                 f"{self.n_routed_experts // 2}")
            need(1 <= self.topk_group <= self.n_group, "topk_group", f"must be between 1 and n_group ({self.n_group})")
            per_group = self.n_routed_experts // self.n_group
            need(1 <= self.num_experts_per_tok <= self.topk_group * per_group, "num_experts_per_tok",
                 f"must be between 1 and topk_group * experts per group ({self.topk_group * per_group})")
            need(self.scoring_func == "sigmoid", "scoring_func", "allowed values: 'sigmoid'")
            need(self.topk_method == "noaux_tc", "topk_method", "allowed values: 'noaux_tc'")
        if self.rope_scaling is not None:
            kind = self.rope_scaling["rope_type"]
            if kind != "yarn":
                raise ConfigError(f"rope_scaling.rope_type={kind!r}: allowed values are 'yarn' or 'default'")
            factor = self.rope_scaling.get("factor")
            if not isinstance(factor, (int, float)) or factor < 1:
                raise ConfigError(f"rope_scaling.factor={factor!r}: must be a number >= 1")

    # ------------------------------------------------------------------ derived
    @property
    def has_moe(self) -> bool:
        return self.first_k_dense_replace < self.num_hidden_layers or self.num_nextn_predict_layers > 0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Elements cached per token per layer by absorbed MLA: the normalised c_kv plus the RoPE'd shared key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    def yarn_mscale(self) -> float:
        """Softmax-scale correction of YaRN: 0.1 * mscale_all_dim * ln(factor) + 1 (1 when YaRN is off)."""
        if self.rope_scaling is None:
            return 1.0
        factor = float(self.rope_scaling["factor"])
        mscale_all_dim = float(self.rope_scaling.get("mscale_all_dim", 0) or 0)
        if factor <= 1 or not mscale_all_dim:
            return 1.0
        return 0.1 * mscale_all_dim * math.log(factor) + 1.0

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        if "rope_parameters" in data:
            params = dict(data.pop("rope_parameters") or {})
            if "rope_theta" in params:
                data["rope_theta"] = params["rope_theta"]
            kind = params.get("rope_type", params.get("type", "default"))
            data["rope_scaling"] = None if kind == "default" else params
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names and k not in _IGNORED_KEYS)
        if unknown:
            warnings.warn(f"config keys not used by r1lab: {', '.join(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["quantization_config"] is None:
            del data["quantization_config"]
        data.update(
            architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", hidden_act="silu",
            attention_bias=False, attention_dropout=0.0,
        )
        return data

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------- presets

def _yarn(factor: float, original: int) -> dict[str, Any]:
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}


PRESETS: dict[str, dict[str, Any]] = {
    # A few million parameters: trains in minutes on 2 CPU cores, yet keeps every architectural feature
    # (q and kv LoRA, grouped sigmoid routing over 16 experts, a shared expert, one dense layer, MTP).
    "tiny": dict(
        vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=1024, initializer_range=0.02,
        q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        moe_intermediate_size=64, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
        rope_theta=10000.0, rope_scaling=None, num_nextn_predict_layers=1,
    ),
    # ~150M total / ~35M activated: big enough that matmuls, not Python overhead, dominate a step.
    "small": dict(
        vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        max_position_embeddings=4096, initializer_range=0.02,
        q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        moe_intermediate_size=256, n_routed_experts=48, n_shared_experts=1, num_experts_per_tok=6,
        n_group=8, topk_group=4, first_k_dense_replace=1, routed_scaling_factor=2.5,
        rope_theta=10000.0, rope_scaling=None, num_nextn_predict_layers=1,
    ),
    # The exact DeepSeek-V3 / R1 configuration (671B total, ~37B activated per token).
    "deepseek-v3": dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61, num_attention_heads=128,
        max_position_embeddings=163840, initializer_range=0.006,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        moe_intermediate_size=2048, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
        n_group=8, topk_group=4, first_k_dense_replace=3, routed_scaling_factor=2.5,
        rope_theta=10000.0, rope_scaling=_yarn(40.0, 4096), num_nextn_predict_layers=1,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------- parameter accounting

def count_parameters(model) -> dict[str, int]:
    """Count a DeepseekV3ForCausalLM's parameters by role (works on the meta device).

    Conventions follow DeepSeek's reporting: `total` counts the main model (embedding and head included, MTP
    excluded); `activated` is what one token touches: everything except the routed experts it was not sent to.
    The router's correction bias is counted (it is part of the checkpoint).
    """
    cfg: ModelConfig = model.config
    groups = {"embedding": 0, "attention": 0, "dense_ffn": 0, "routed_experts": 0, "shared_experts": 0,
              "router": 0, "norms": 0, "lm_head": 0, "mtp": 0}
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if "correction_bias" in n]
    for name, tensor in tensors:
        n = tensor.numel()
        if name.startswith("mtp."):
            groups["mtp"] += n
        elif "embed_tokens" in name:
            groups["embedding"] += n
        elif name.startswith("lm_head"):
            groups["lm_head"] += n
        elif ".self_attn." in name:
            groups["attention"] += n
        elif ".mlp.experts." in name:
            groups["routed_experts"] += n
        elif ".mlp.shared_experts." in name:
            groups["shared_experts"] += n
        elif ".mlp.gate." in name:
            groups["router"] += n
        elif ".mlp." in name:
            groups["dense_ffn"] += n
        else:
            groups["norms"] += n
    total = sum(v for k, v in groups.items() if k != "mtp")
    n_moe = cfg.num_hidden_layers - cfg.first_k_dense_replace
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    unused = (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert * n_moe if n_moe else 0
    activated = total - unused
    return {
        "total": total,
        "activated": activated,
        "activated_without_embedding": activated - groups["embedding"],
        "mtp": groups["mtp"],
        "total_with_mtp": total + groups["mtp"],
        "components": groups,
    }
