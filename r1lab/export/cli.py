"""`r1lab export --to hf|gguf --model DIR OUT`: a checkpoint for transformers/vLLM/SGLang or for llama.cpp."""

from __future__ import annotations

import argparse
import os

_EPILOG = """examples:
  r1lab export --to hf --model runs/sft/checkpoint exports/r1-tiny-hf --verify
  r1lab export --to hf --model runs/sft/checkpoint exports/r1-tiny-bf16 --dtype bfloat16 --no-mtp
  r1lab export --to gguf --model runs/sft/checkpoint exports/r1-tiny.gguf

then serve it (docs/scale-out.md has the full recipes):
  vllm serve exports/r1-tiny-hf --reasoning-parser deepseek_r1
  python -m sglang.launch_server --model-path exports/r1-tiny-hf --reasoning-parser deepseek-r1
  llama-server -m exports/r1-tiny.gguf"""


def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint for transformers/vLLM/SGLang (hf) or llama.cpp (gguf)",
        description="Export a checkpoint directory. --to hf writes a Hugging Face DeepseekV3ForCausalLM directory "
                    "(config.json, safetensors, tokenizer files, generation_config.json with R1's sampling "
                    "defaults). --to gguf writes one GGUF file in llama.cpp's deepseek2 layout (MLA as k_b/v_b, "
                    "sigmoid-gated grouped MoE, BPE tokenizer); MTP is not included.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", choices=["hf", "gguf"], required=True, help="target format")
    p.add_argument("--model", required=True, metavar="DIR", help="the checkpoint directory to export")
    p.add_argument("out", metavar="OUT", help="output directory (hf) or file (gguf)")
    p.add_argument("--dtype", metavar="TYPE",
                   help="weights: float32 (default) | bfloat16 | float16 for hf; f32 (default) | f16 for gguf")
    p.add_argument("--no-mtp", action="store_true", help="hf: leave out the MTP layer (gguf never includes it)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--verify", action="store_true",
                   help="hf: load the export with transformers and report the max logit difference from r1lab")


def export(args) -> int:
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model} is not a checkpoint directory")
    if args.to == "hf":
        from .hf import export_hf, verify_hf

        out = export_hf(args.model, args.out, dtype=args.dtype or "float32", mtp=not args.no_mtp, force=args.force)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        print(f"wrote {out} ({size / 2**20:,.1f} MiB): " + ", ".join(sorted(f.name for f in out.iterdir())))
        if args.verify:
            diff = verify_hf(out)
            print(f"transformers loads it; max |logit difference| from r1lab = {diff:.2e}")
            return 0 if diff <= 1e-4 else 1
        return 0
    if args.no_mtp or args.verify:
        raise ValueError("--no-mtp and --verify apply to --to hf only (GGUF never includes MTP)")
    from .gguf import export_gguf

    out = export_gguf(args.model, args.out, dtype=args.dtype or "f32", force=args.force)
    print(f"wrote {out} ({out.stat().st_size / 2**20:,.1f} MiB), llama.cpp architecture deepseek2")
    return 0


COMMANDS = {"export": (add_export, export)}
