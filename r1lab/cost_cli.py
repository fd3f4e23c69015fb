"""`r1lab cost train` and `r1lab cost serve`: the calculators of `cost.py` on the command line.

    r1lab cost train --preset deepseek-v3 --tokens 14.8T --gpu h800
    r1lab cost serve --tokens-per-s 14800 --prefill-tokens-per-s 73700 --price-per-hour 16
    r1lab cost serve --measure --model runs/sft/checkpoint --price-per-hour 0.10

The FLOP model, the defaults and how they were calibrated are documented in `r1lab/cost.py`.
"""

from __future__ import annotations

import argparse
import json
import re

from .config import PRESETS, ModelConfig, preset
from .cost import (
    DEFAULT_MFU,
    DEFAULT_PRICE_PER_HOUR,
    DEFAULT_SEQ_LEN,
    GPUS,
    ServeCost,
    TrainCostSettings,
    measure_throughput,
    reference_prices,
    training_cost,
)

_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def token_count(text: str) -> float:
    """A count such as 14.8e12, 14.8T, 500B or 2,000,000.

    >>> token_count("14.8T") == token_count("14.8e12") == 14.8e12
    True
    """
    match = re.fullmatch(r"\s*([0-9.,eE+-]+?)\s*([KMBGT]?)\s*", text.upper())
    try:
        if not match:
            raise ValueError
        return float(match.group(1).replace(",", "")) * _SUFFIXES.get(match.group(2), 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 14.8e12, 14.8T, 500B)") from None


def _human(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:,.2f}{unit}"
    return f"{x:,.2f}"


# ------------------------------------------------------------------------- train


def _add_train(actions) -> None:
    gpus = ", ".join(f"{k} ({g.bf16_tflops:g} BF16 TFLOPS)" for k, g in GPUS.items())
    p = actions.add_parser(
        "train", help="GPU hours and dollars to train a configuration on N tokens",
        description="FLOPs per token from the config: 6 x activated matmul weights (forward + backward), plus "
                    "attention's sequence-length term 3 x layers x heads x (qk_head_dim + v_head_dim) x seq_len, "
                    "plus the MTP modules. GPU hours = tokens x FLOPs per token / (peak x MFU). The defaults "
                    "(H800 BF16 peak, MFU 0.40, $2/GPU hour, seq_len 4096) reproduce DeepSeek-V3's 2,664K H800 "
                    "hours to within 2%; they are a calibration against that paper, see r1lab/cost.py.",
        epilog="example: r1lab cost train --preset deepseek-v3 --tokens 14.8T --gpu h800")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="a built-in configuration")
    source.add_argument("--config", metavar="PATH", help="a config.json (or a checkpoint directory holding one)")
    p.add_argument("--tokens", type=token_count, required=True, metavar="N",
                   help="training tokens (14.8e12, 14.8T and 500B all work)")
    p.add_argument("--gpu", choices=sorted(GPUS), default="h800", help=f"accelerator: {gpus} (default h800)")
    p.add_argument("--precision", choices=["bf16", "fp8"], default="bf16",
                   help="which tensor-core peak --mfu is a fraction of (default bf16)")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help=f"model FLOPs utilisation, a fraction of the peak (default {DEFAULT_MFU})")
    p.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR, metavar="USD",
                   help=f"rental price per GPU hour (default {DEFAULT_PRICE_PER_HOUR:g}, the V3 paper's)")
    p.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, metavar="T",
                   help=f"training sequence length, for the attention term (default {DEFAULT_SEQ_LEN})")
    p.add_argument("--num-gpus", type=int, default=2048, metavar="N",
                   help="cluster size, only for the wall-clock estimate (default 2048, as for V3)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys include gpu_hours and usd)")


def _train(args) -> int:
    cfg = preset(args.preset) if args.preset else ModelConfig.from_file(args.config)
    settings = TrainCostSettings(tokens=args.tokens, gpu=args.gpu, precision=args.precision, mfu=args.mfu,
                                 price_per_hour=args.price_per_hour, seq_len=args.seq_len, num_gpus=args.num_gpus)
    cost = training_cost(cfg, settings)
    if args.json:
        print(json.dumps({"model": args.preset or args.config, **cost.to_dict()}))
        return 0
    f, gpu = cost.flops_per_token, GPUS[args.gpu]
    peak = gpu.peak_flops(args.precision)
    print(f"{args.preset or args.config}: {_human(args.tokens)} tokens at seq_len {args.seq_len}")
    print(f"  FLOPs per token       {_human(f.total)}  (matmuls {_human(f.matmul)}, attention {_human(f.attention)}, "
          f"MTP {_human(f.mtp)})")
    print(f"  total FLOPs           {cost.total_flops:.3e}")
    print(f"  sustained per GPU     {peak * args.mfu / 1e12:,.1f} TFLOPS  ({args.mfu:.0%} of the {gpu.name}'s "
          f"{args.precision.upper()} peak, {peak / 1e12:,.1f})")
    print(f"  GPU hours             {cost.gpu_hours / 1e3:,.1f}K")
    print(f"  cost                  ${cost.usd / 1e6:,.3f}M at ${args.price_per_hour:g} per GPU hour")
    print(f"  wall clock            {cost.days:,.1f} days on {args.num_gpus:,} GPUs")
    return 0


# ------------------------------------------------------------------------- serve


def _add_serve(actions) -> None:
    p = actions.add_parser(
        "serve", help="$ per 1M input and output tokens from a throughput and an hourly price",
        description="Price per million tokens = price per hour / (tokens per second x 3600), for prompt tokens "
                    "(prefill) and generated tokens (decode) separately, beside DeepSeek-R1's and o1's list "
                    "prices. Give the throughputs, or --measure them with the r1lab engine on a checkpoint.",
        epilog="examples:\n"
               "  r1lab cost serve --tokens-per-s 14800 --prefill-tokens-per-s 73700 --price-per-hour 16\n"
               "  r1lab cost serve --measure --model runs/sft/checkpoint --price-per-hour 0.10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens-per-s", type=float, metavar="R",
                   help="decode throughput: generated tokens per second, all concurrent requests together")
    p.add_argument("--prefill-tokens-per-s", type=float, metavar="R",
                   help="prefill throughput: prompt tokens per second (default: the decode rate, an overestimate "
                        "of input cost)")
    p.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR, metavar="USD",
                   help=f"what the hardware behind those rates costs per hour (default {DEFAULT_PRICE_PER_HOUR:g}: "
                        "one H800)")
    g = p.add_argument_group("measuring instead (runs the engine for a few seconds)")
    g.add_argument("--measure", action="store_true", help="measure both rates with the r1lab engine on --model")
    g.add_argument("--model", metavar="DIR", help="checkpoint directory to measure")
    g.add_argument("--seconds", type=float, default=3.0, help="decode measurement time (default 3)")
    g.add_argument("--batch", type=int, default=16, help="concurrent requests (default 16)")
    g.add_argument("--prompt-len", type=int, default=128, metavar="T", help="prompt tokens for prefill (default 128)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _serve(args) -> int:
    measured = None
    if args.measure:
        if not args.model:
            raise ValueError("--measure needs --model DIR (a checkpoint directory)")
        measured = measure_throughput(args.model, args.seconds, args.batch, args.prompt_len)
        decode, prefill = measured["decode_tokens_per_s"], measured["prefill_tokens_per_s"]
    else:
        if args.tokens_per_s is None:
            raise ValueError("give --tokens-per-s (and ideally --prefill-tokens-per-s), or --measure --model DIR")
        decode, prefill = args.tokens_per_s, args.prefill_tokens_per_s
    cost = ServeCost(decode_tokens_per_s=decode, prefill_tokens_per_s=prefill, price_per_hour=args.price_per_hour)
    if args.json:
        print(json.dumps({**cost.to_dict(), "measured": measured}))
        return 0
    source = (f"measured on {args.model} (batch {args.batch}, {args.prompt_len}-token prompts)" if measured
              else "given")
    print(f"throughput ({source}): decode {decode:,.1f} tokens/s, prefill "
          + (f"{prefill:,.1f} tokens/s" if prefill else "not given (input priced at the decode rate)")
          + f"; ${args.price_per_hour:g} per hour")
    rows = [("this deployment", cost.usd_per_million_input, cost.usd_per_million_output)]
    rows += [(name, p["input"], p["output"]) for name, p in reference_prices().items()]
    print(f"{'USD per 1M tokens':<22}{'input':>12}{'output':>12}")
    for name, inp, out in rows:
        print(f"{name:<22}{inp:>12.4f}{out:>12.4f}")
    return 0


# ------------------------------------------------------------------------- registration


def add_cost(sub) -> None:
    p = sub.add_parser("cost", help="training and serving cost calculators",
                       description="Back-of-the-envelope costs: `cost train` (GPU hours and dollars to pretrain a "
                                   "configuration) and `cost serve` (dollars per million tokens served).")
    actions = p.add_subparsers(dest="cost_action", metavar="ACTION", required=True)
    _add_train(actions)
    _add_serve(actions)


def cost(args) -> int:
    return _train(args) if args.cost_action == "train" else _serve(args)


COMMANDS = {"cost": (add_cost, cost)}
