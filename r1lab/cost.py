"""What training and serving a configuration costs: FLOPs per token, GPU hours, dollars per million tokens.

Why a FLOP model, and which one. A training step costs about three forward passes (the backward pass computes
gradients for both activations and weights, each as expensive as the forward), and a forward pass costs two FLOPs
(multiply and add) per weight a token meets. So:

    training FLOPs per token = 6 * P_active                              (every matmul weight the token uses)
                             + 3 * L * H * (qk_head_dim + v_head_dim) * T   (attention over the sequence)
                             + the same two terms for each MTP module

* P_active counts matmul weights only: attention projections (q_a/q_b or q, kv_a, kv_b, o), dense FFNs, the router,
  the shared experts and the `num_experts_per_tok` routed experts a token is sent to, and the output head. The
  input embedding is a lookup, norms and the routing bias are elementwise: none of them is a matmul. For
  DeepSeek-V3 P_active = 36.6B of its 671B.
* The attention term is the part that grows with sequence length T. Per layer and head, a query scores against
  the keys before it (qk_head_dim multiply-adds each) and mixes their values (v_head_dim each): 2 * (d_qk + d_v)
  FLOPs per earlier position. Training runs MLA's expanded ("naive") form, so this is per head with
  d_qk = qk_nope_head_dim + qk_rope_head_dim; causal masking means a query sees T/2 positions on average
  (FlashAttention-style kernels skip the masked half). Forward 2 * H * (d_qk + d_v) * T/2, times 3 for training.
  At T = 4096 it adds 31 GFLOPs per token to V3's 220 GFLOPs of matmuls (14%).
* Each MTP depth runs eh_proj, one more decoder block (attention + an MoE layer) and the shared output head on
  every position: another 1.6B matmul weights per token for V3.

`tests/test_cost.py` checks the formula (non-causal form) against torch's FlopCounterMode on a real training step.

Calibration against the DeepSeek-V3 paper (REFERENCE §7): 14.8T tokens took 2,664K H800 GPU hours. With the
formula above V3 needs 3.86e24 FLOPs, so the cluster sustained 402 TFLOPS per GPU: 40.6% of the H800's dense BF16
peak (989.5 TFLOPS), or 20.3% of its FP8 peak (1,979 TFLOPS). V3 ran its large GEMMs in FP8, so the physical
utilisation was the lower figure; the defaults here (BF16 peak, MFU 0.40) are a calibration chosen so the paper's
number comes out (2,707K hours, +1.6%), not a measurement of ours. Quote them as "MFU against BF16 peak".
`--precision fp8` with `--mfu 0.20` describes the same run the other way round.

Serving cost is simpler: a GPU (or node) rented at P dollars per hour that sustains R tokens/s produces
3600 * R tokens per P dollars. Input (prefill) and output (decode) run at very different rates, so they are priced
separately; without a prefill rate, input is priced at the decode rate, which overstates it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float  # dense (no 2:4 sparsity) tensor-core peak
    fp8_tflops: float | None

    def peak_flops(self, precision: str) -> float:
        if precision == "bf16":
            return self.bf16_tflops * 1e12
        if precision == "fp8":
            if self.fp8_tflops is None:
                raise ValueError(f"precision='fp8': the {self.name} has no FP8 tensor cores; use 'bf16'")
            return self.fp8_tflops * 1e12
        raise ValueError(f"precision={precision!r}: allowed values are 'bf16' and 'fp8'")


# Dense peaks from NVIDIA's data sheets (SXM parts). The H800 is the H100 with reduced NVLink bandwidth: the same
# tensor-core throughput.
GPUS: dict[str, GPU] = {
    "h800": GPU("H800 SXM", 989.5, 1979.0),
    "h100": GPU("H100 SXM", 989.5, 1979.0),
    "a100": GPU("A100 SXM", 312.0, None),
}

DEFAULT_MFU = 0.40  # against the BF16 peak; calibrated on DeepSeek-V3's reported GPU hours (module docstring)
DEFAULT_PRICE_PER_HOUR = 2.0  # USD per GPU hour: the V3 paper's H800 rental assumption
DEFAULT_SEQ_LEN = 4096  # V3's pre-training sequence length


# --------------------------------------------------------------------------- FLOPs per token


def attention_params(cfg: ModelConfig) -> int:
    """Matmul weights of one MLA layer."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    if cfg.q_lora_rank is None:
        q = d * h * cfg.qk_head_dim
    else:
        q = d * cfg.q_lora_rank + cfg.q_lora_rank * h * cfg.qk_head_dim
    kv_a = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    kv_b = cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    return q + kv_a + kv_b + h * cfg.v_head_dim * d


def moe_active_params(cfg: ModelConfig) -> int:
    """Matmul weights one token meets in an MoE layer: router, shared experts and its routed experts."""
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    router = cfg.n_routed_experts * cfg.hidden_size
    return router + expert * (cfg.n_shared_experts + cfg.num_experts_per_tok)


def active_matmul_params(cfg: ModelConfig) -> dict[str, int]:
    """Matmul weights per token, by part: `main` (the trunk and its head) and `mtp` (all MTP depths)."""
    dense_ffn = 3 * cfg.hidden_size * cfg.intermediate_size
    ffns = sum(moe_active_params(cfg) if cfg.is_moe_layer(i) else dense_ffn for i in range(cfg.num_hidden_layers))
    head = cfg.hidden_size * cfg.vocab_size
    main = cfg.num_hidden_layers * attention_params(cfg) + ffns + head
    # Each MTP depth: eh_proj (2D -> D), one decoder block (always an MoE block: its index is past the dense ones),
    # and the shared head run again on its output.
    per_depth = 2 * cfg.hidden_size**2 + attention_params(cfg) + moe_active_params(cfg) + head
    return {"main": main, "mtp": cfg.num_nextn_predict_layers * per_depth}


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, layers: int, causal: bool = True) -> float:
    """Training FLOPs per token of the score and value products (fwd + bwd) over `layers` attention layers."""
    visible = seq_len / 2 if causal else seq_len
    return 6 * layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * visible


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token (forward + backward), by part."""

    matmul: float  # 6 * active matmul weights of the main model
    attention: float  # the sequence-length term of the main model
    mtp: float  # MTP modules: their matmuls (head included) and their attention

    @property
    def total(self) -> float:
        return self.matmul + self.attention + self.mtp


def training_flops_per_token(cfg: ModelConfig, seq_len: int = DEFAULT_SEQ_LEN, causal: bool = True) -> FlopsPerToken:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r}: must be an integer >= 1")
    params = active_matmul_params(cfg)
    return FlopsPerToken(
        matmul=6.0 * params["main"],
        attention=attention_flops_per_token(cfg, seq_len, cfg.num_hidden_layers, causal),
        mtp=6.0 * params["mtp"] + attention_flops_per_token(cfg, seq_len, cfg.num_nextn_predict_layers, causal),
    )


# --------------------------------------------------------------------------- training cost


@dataclass(frozen=True)
class TrainCostSettings:
    tokens: float
    gpu: str = "h800"
    precision: str = "bf16"  # which tensor-core peak the MFU is measured against
    mfu: float = DEFAULT_MFU
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR
    seq_len: int = DEFAULT_SEQ_LEN
    num_gpus: int = 2048  # only for the wall-clock estimate; V3 used 2,048 H800s

    def __post_init__(self) -> None:
        if not self.tokens > 0:
            raise ValueError(f"tokens={self.tokens!r}: must be > 0 (training tokens, e.g. 14.8e12)")
        if self.gpu not in GPUS:
            raise ValueError(f"gpu={self.gpu!r}: allowed values are {', '.join(GPUS)}")
        GPUS[self.gpu].peak_flops(self.precision)  # validates precision for this GPU
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu={self.mfu!r}: must be in (0, 1] (model FLOPs utilisation, e.g. 0.4)")
        if self.price_per_hour < 0:
            raise ValueError(f"price_per_hour={self.price_per_hour!r}: must be >= 0 (USD per GPU hour)")
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len!r}: must be an integer >= 1")
        if not isinstance(self.num_gpus, int) or self.num_gpus < 1:
            raise ValueError(f"num_gpus={self.num_gpus!r}: must be an integer >= 1")


@dataclass(frozen=True)
class TrainCost:
    flops_per_token: FlopsPerToken
    total_flops: float
    gpu_hours: float
    usd: float
    days: float  # wall clock on settings.num_gpus GPUs
    settings: TrainCostSettings

    def to_dict(self) -> dict:
        return {
            "flops_per_token": self.flops_per_token.total,
            "flops_per_token_parts": asdict(self.flops_per_token),
            "total_flops": self.total_flops,
            "gpu_hours": self.gpu_hours,
            "usd": self.usd,
            "days": self.days,
            **asdict(self.settings),
            "peak_flops": GPUS[self.settings.gpu].peak_flops(self.settings.precision),
        }


def training_cost(cfg: ModelConfig, settings: TrainCostSettings) -> TrainCost:
    """GPU hours and dollars to train `cfg` on `settings.tokens` tokens.

    >>> from r1lab.config import preset
    >>> cost = training_cost(preset("deepseek-v3"), TrainCostSettings(tokens=14.8e12))
    >>> round(cost.gpu_hours / 1e3), round(cost.usd / 1e6, 2)
    (2707, 5.41)
    """
    per_token = training_flops_per_token(cfg, settings.seq_len)
    total = per_token.total * settings.tokens
    sustained = GPUS[settings.gpu].peak_flops(settings.precision) * settings.mfu
    hours = total / sustained / 3600
    return TrainCost(per_token, total, hours, hours * settings.price_per_hour, hours / settings.num_gpus / 24,
                     settings)


# --------------------------------------------------------------------------- serving cost

# Published list prices, USD per 1M tokens (input on a cache miss, output). Kept beside the server's pricing table.
def reference_prices() -> dict[str, dict[str, float]]:
    from .serve.pricing import DEEPSEEK_R1, OPENAI_O1

    return {
        "DeepSeek-R1 (list)": {"input": DEEPSEEK_R1["input_cache_miss"], "output": DEEPSEEK_R1["output"]},
        "OpenAI o1 (list)": {"input": OPENAI_O1["input_cache_miss"], "output": OPENAI_O1["output"]},
    }


@dataclass(frozen=True)
class ServeCost:
    decode_tokens_per_s: float  # generated tokens per second, all concurrent requests together
    prefill_tokens_per_s: float | None = None  # prompt tokens per second; None: priced at the decode rate
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR  # USD for the hardware that produced those rates

    def __post_init__(self) -> None:
        if not self.decode_tokens_per_s > 0:
            raise ValueError(f"decode_tokens_per_s={self.decode_tokens_per_s!r}: must be > 0")
        if self.prefill_tokens_per_s is not None and not self.prefill_tokens_per_s > 0:
            raise ValueError(f"prefill_tokens_per_s={self.prefill_tokens_per_s!r}: must be > 0 or None")
        if self.price_per_hour < 0:
            raise ValueError(f"price_per_hour={self.price_per_hour!r}: must be >= 0 (USD per hour)")

    @property
    def usd_per_million_output(self) -> float:
        """
        >>> round(ServeCost(decode_tokens_per_s=1000, price_per_hour=2.0).usd_per_million_output, 4)
        0.5556
        """
        return self.price_per_hour / (self.decode_tokens_per_s * 3600) * 1e6

    @property
    def usd_per_million_input(self) -> float:
        rate = self.prefill_tokens_per_s or self.decode_tokens_per_s
        return self.price_per_hour / (rate * 3600) * 1e6

    def to_dict(self) -> dict:
        return {**asdict(self), "usd_per_million_input": self.usd_per_million_input,
                "usd_per_million_output": self.usd_per_million_output, "reference_prices": reference_prices()}


def measure_throughput(model_dir: str, seconds: float = 3.0, batch: int = 16, prompt_len: int = 128,
                       threads: int | None = None) -> dict[str, float]:
    """Prefill and decode tokens/s of the r1lab engine on `model_dir`, from random prompts, in a few seconds.

    Prefill: `batch` prompts of `prompt_len` tokens, one output token each, prefix caching off. Decode: `batch`
    short prompts decoded together (ignoring EOS) for `seconds` after their prefill; generated tokens counted.
    """
    import time

    import torch

    from .engine import EngineConfig, LLMEngine, SamplingParams

    if seconds <= 0 or batch < 1 or prompt_len < 1:
        raise ValueError("measure: --seconds must be > 0, --batch and --prompt-len >= 1")
    engine = LLMEngine(model_dir, EngineConfig(max_num_seqs=batch, enable_prefix_caching=False, threads=threads))
    vocab = engine.model.config.vocab_size
    limit = engine.max_model_len
    if prompt_len >= limit:
        raise ValueError(f"--prompt-len {prompt_len} must be below the model's context ({limit})")
    gen = torch.Generator().manual_seed(0)

    def prompts(n: int, length: int) -> list[list[int]]:
        return torch.randint(2, vocab, (n, length), generator=gen).tolist()

    engine.generate(prompts(2, 8), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    engine.generate(prompts(batch, prompt_len), SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    prefill = batch * prompt_len / (time.perf_counter() - start)

    params = SamplingParams(temperature=0, max_tokens=limit - 8, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts(batch, 8)]
    first = engine.stats["generated_tokens"] + batch
    while engine.stats["generated_tokens"] < first:  # until every request is past its prefill
        engine.step()
    before, start = engine.stats["generated_tokens"], time.perf_counter()
    while time.perf_counter() - start < seconds and engine.has_unfinished():
        engine.step()
    decode = (engine.stats["generated_tokens"] - before) / (time.perf_counter() - start)
    for request_id in ids:
        engine.abort(request_id)
    return {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "batch": batch,
            "prompt_len": prompt_len, "seconds": seconds}
