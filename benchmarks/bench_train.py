"""Training-step throughput of r1lab's trainer against a plain transformers DeepseekV3 training step, and MFU.

Same config and weights on both sides (ours saved with save_pretrained, theirs loaded from that directory), MTP
off (transformers' model has no MTP forward), the same batch, AdamW with the same settings, gradient clipping,
timed interleaved in one process so machine noise hits both alike. A step is everything an optimiser step costs:

    r1lab         Trainer.step(): forward, CE, masked sequence-balance loss from the routing, backward, clip,
                  AdamW, the aux-loss-free bias update and the metrics row (no checkpoint writes)
    transformers  model(input_ids, labels=...).loss, backward, clip, AdamW (no balancing at all)

MFU = achieved training FLOP/s / this machine's measured dense matmul peak (best of three runs of
`bench_forward.matmul_peak_gflops`, 1024^3 matmuls; measured again at the end, with a note if it rose).
Training FLOPs per token = 6 x activated non-embedding parameters (the lm_head included) + causal attention
3 x seq x heads x (qk_head_dim + v_head_dim) per layer.

    .venv/bin/python benchmarks/bench_train.py [--presets tiny small] [--repeats 5] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import matmul_peak_gflops  # noqa: E402

from r1lab.config import count_parameters, preset  # noqa: E402
from r1lab.model import DeepseekV3ForCausalLM  # noqa: E402
from r1lab.train import Examples, TrainConfig, Trainer  # noqa: E402

SHAPES = {"tiny": (8, 256), "small": (4, 256)}  # (batch, sequence length)


def train_flops_per_token(cfg, seq: int) -> float:
    with torch.device("meta"):
        dense = count_parameters(DeepseekV3ForCausalLM(cfg))["activated_without_embedding"]
    attention = 3 * seq * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * cfg.num_hidden_layers
    return 6 * dense + attention


def best_peak(tries: int = 3) -> dict[str, float]:
    """The best of a few matmul-peak measurements: a busy machine only ever makes one lower."""
    runs = [matmul_peak_gflops() for _ in range(tries)]
    return {k: max(r[k] for r in runs) for k in runs[0]}


def _hf_step(model, optimizer, ids, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench(name: str, repeats: int, bf16: bool, workdir: Path) -> dict:
    from transformers import DeepseekV3ForCausalLM as HFModel

    cfg = preset(name, num_nextn_predict_layers=0)
    batch, seq = SHAPES.get(name, (4, 256))
    ours = DeepseekV3ForCausalLM(cfg)
    ours.init_weights(seed=0)
    ours.save_pretrained(workdir / name)
    theirs = HFModel.from_pretrained(workdir / name, dtype=torch.float32).train()

    gen = torch.Generator().manual_seed(1)
    blocks = list(torch.randint(0, cfg.vocab_size, (batch * (repeats + 1), seq), generator=gen).unbind(0))
    settings = TrainConfig(out=str(workdir / f"run-{name}"), steps=10**6, batch_size=batch, seq_len=seq, lr=1e-3,
                           warmup_steps=0, mtp_weight=0.0, bf16=bf16, progress=False)
    trainer = Trainer(settings, model=ours, examples=Examples(blocks, blocks, pad_id=0))
    hf_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    trainer.step()  # warm-up both
    _hf_step(theirs, hf_opt, torch.stack(blocks[:batch]), bf16)
    times: dict[str, list[float]] = {"r1lab": [], "transformers": []}
    for r in range(repeats):
        start = time.perf_counter()
        trainer.step()
        times["r1lab"].append(time.perf_counter() - start)
        ids = torch.stack(blocks[(r + 1) * batch: (r + 2) * batch])
        start = time.perf_counter()
        _hf_step(theirs, hf_opt, ids, bf16)
        times["transformers"].append(time.perf_counter() - start)
    trainer.close()
    tokens = batch * seq
    ours_s, theirs_s = statistics.median(times["r1lab"]), statistics.median(times["transformers"])
    flops = train_flops_per_token(cfg, seq) * tokens
    return {"preset": name, "precision": "bf16-autocast" if bf16 else "fp32", "tokens_per_step": tokens,
            "r1lab_tokens_per_s": round(tokens / ours_s, 1), "transformers_tokens_per_s": round(tokens / theirs_s, 1),
            "ratio": round(theirs_s / ours_s, 2), "r1lab_gflops": round(flops / ours_s / 1e9, 1),
            "transformers_gflops": round(flops / theirs_s / 1e9, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = best_peak()
    print(f"training step, {args.threads} threads, median of {args.repeats}; matmul peak here: "
          f"fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"{'preset':<7} {'precision':<14} {'tokens':>6} {'r1lab tok/s':>12} {'HF tok/s':>9} {'ratio':>6} "
          f"{'r1lab GFLOP/s':>14} {'MFU':>5} {'HF MFU':>7}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            for precision in args.precision:
                r = bench(name, args.repeats, precision == "bf16", Path(tmp))
                r["mfu"] = round(r["r1lab_gflops"] / peak[precision], 3)
                r["transformers_mfu"] = round(r["transformers_gflops"] / peak[precision], 3)
                results.append(r)
                print(f"{name:<7} {r['precision']:<14} {r['tokens_per_step']:>6} {r['r1lab_tokens_per_s']:>12,.0f} "
                      f"{r['transformers_tokens_per_s']:>9,.0f} {r['ratio']:>5.2f}x {r['r1lab_gflops']:>14} "
                      f"{r['mfu']:>5.2f} {r['transformers_mfu']:>7.2f}")
    after = best_peak()
    if any(after[k] > 1.1 * peak[k] for k in peak):
        print(f"note: the matmul peak measured after the runs was higher (fp32 {after['fp32']:.0f}, bf16 "
              f"{after['bf16']:.0f} GFLOP/s): the machine was busier at the start, so MFU above is overstated")
    if args.json:
        print(json.dumps({"bench_train": results, "matmul_peak_gflops": peak, "matmul_peak_after": after}))


if __name__ == "__main__":
    main()
