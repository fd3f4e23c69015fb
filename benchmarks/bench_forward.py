"""Forward+backward tokens/s of r1lab's model against transformers' DeepseekV3ForCausalLM.

Same config, same weights (ours saved, theirs loaded from that checkpoint), same thread count, interleaved
timing in one process so machine noise hits both sides alike. Prints a table and the ratio per preset.

    .venv/bin/python benchmarks/bench_forward.py [--presets tiny small] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from r1lab.config import count_parameters, preset
from r1lab.model import DeepseekV3ForCausalLM

SHAPES = {"tiny": (8, 256), "small": (4, 256)}  # (batch, sequence length)


def _step(model, ids, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def bench(name: str, repeats: int, bf16: bool) -> dict:
    from transformers import DeepseekV3ForCausalLM as HFModel

    cfg = preset(name, num_nextn_predict_layers=0)
    torch.manual_seed(0)
    ours = DeepseekV3ForCausalLM(cfg)
    ours.init_weights(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        theirs = HFModel.from_pretrained(tmp, dtype=torch.float32)
    ours.train()
    theirs.train()
    batch, seq = SHAPES.get(name, (4, 256))
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    times = {"r1lab": [], "transformers": []}
    for model in (ours, theirs):
        _step(model, ids, bf16)  # warm-up
    for _ in range(repeats):
        for model, key in ((ours, "r1lab"), (theirs, "transformers")):
            start = time.perf_counter()
            _step(model, ids, bf16)
            times[key].append(time.perf_counter() - start)
    tokens = batch * seq
    ours_tps = tokens / statistics.median(times["r1lab"])
    theirs_tps = tokens / statistics.median(times["transformers"])
    flops = 6 * count_parameters(ours)["activated_without_embedding"] * tokens  # matmul FLOPs, attention excluded
    return {"preset": name, "precision": "bf16-autocast" if bf16 else "fp32", "tokens_per_step": tokens,
            "r1lab_tokens_per_s": round(ours_tps, 1),
            "transformers_tokens_per_s": round(theirs_tps, 1), "ratio": round(ours_tps / theirs_tps, 2),
            "r1lab_gflops": round(flops / statistics.median(times["r1lab"]) / 1e9, 1)}


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> dict[str, float]:
    """This machine's dense matmul throughput: the ceiling any training step can approach."""
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        peak[name] = 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    peak = matmul_peak_gflops()
    print(f"forward+backward, {args.threads} threads, median of {args.repeats}; "
          f"matmul peak here: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"{'preset':<8} {'precision':<14} {'tokens':>7} {'r1lab tok/s':>12} {'HF tok/s':>10} {'ratio':>6} "
          f"{'r1lab GFLOP/s':>14} {'MFU':>5}")
    for name in args.presets:
        for precision in args.precision:
            r = bench(name, args.repeats, precision == "bf16")
            r["mfu"] = round(r["r1lab_gflops"] / peak[precision], 2)
            results.append(r)
            print(f"{name:<8} {r['precision']:<14} {r['tokens_per_step']:>7} {r['r1lab_tokens_per_s']:>12,.0f} "
                  f"{r['transformers_tokens_per_s']:>10,.0f} {r['ratio']:>5.2f}x {r['r1lab_gflops']:>14} "
                  f"{r['mfu']:>5.2f}")
    if args.json:
        print(json.dumps({"bench_forward": results}))


if __name__ == "__main__":
    main()
