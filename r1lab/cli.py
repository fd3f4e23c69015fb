"""The `r1lab` command line: one entry point, one subcommand per job.

Each subcommand is a pair of functions: `add_<name>(subparsers)` declares its flags and `<name>(args)` runs it.
Errors a user can fix (bad config, bad checkpoint, bad flag values) print one line and exit with status 2;
they never surface as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, ModelConfig, count_parameters, preset


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="a built-in configuration")
    source.add_argument("--config", metavar="PATH", help="a config.json (or a checkpoint directory holding one)")


def _config_from_args(args) -> ModelConfig:
    return preset(args.preset) if args.preset else ModelConfig.from_file(args.config)


# ------------------------------------------------------------------------- params


def add_params(sub) -> None:
    p = sub.add_parser("params", help="count total / activated / MTP parameters of a configuration",
                       description="Build the model on the meta device (no memory) and count its parameters. "
                                   "'activated' is what one token uses: all but the routed experts it skips.")
    _add_model_source(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def params(args) -> int:
    import torch

    from .model import DeepseekV3ForCausalLM

    cfg = _config_from_args(args)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(cfg)
    counts = count_parameters(model)
    if args.json:
        print(json.dumps(counts))
        return 0
    name = args.preset or args.config
    print(f"{name}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.n_routed_experts} routed experts (top-{cfg.num_experts_per_tok}) + {cfg.n_shared_experts} shared")
    rows = [("total (main model)", counts["total"]), ("activated per token", counts["activated"]),
            ("activated, no embedding", counts["activated_without_embedding"]), ("MTP modules", counts["mtp"]),
            ("total with MTP", counts["total_with_mtp"])]
    rows += [(f"  {k}", v) for k, v in counts["components"].items()]
    for label, value in rows:
        print(f"{label:<26} {value:>20,}  ({_human(value)})")
    return 0


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


# ------------------------------------------------------------------------- demo


def add_demo(sub) -> None:
    sub.add_parser("demo", help="the quickstart job: build the tiny model, count it, run it",
                   description="Build the `tiny` preset, print parameter counts, check that absorbed cached "
                               "decoding matches the full forward, save and reload it in HF format.")


def demo(args) -> int:
    import tempfile

    import torch

    from .checkpoint import load_model
    from .generate import generate
    from .model import DeepseekV3ForCausalLM

    torch.manual_seed(0)
    for name in ("tiny", "small", "deepseek-v3"):
        with torch.device("meta"):
            counts = count_parameters(DeepseekV3ForCausalLM(preset(name)))
        print(f"{name:>12}: total {_human(counts['total']):>8}, activated {_human(counts['activated']):>8}, "
              f"MTP {_human(counts['mtp']):>8}")
    model = DeepseekV3ForCausalLM(preset("tiny"))
    model.init_weights(seed=0)
    model.eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 16))
    start = time.perf_counter()
    tokens = generate(model, prompt, max_new_tokens=32)
    elapsed = time.perf_counter() - start
    full = model(torch.cat((prompt, tokens), 1)).logits[:, prompt.shape[1] - 1:-1].argmax(-1)
    same = torch.equal(full, tokens)
    print(f"tiny: generated 2x32 tokens with the absorbed latent cache in {elapsed:.2f}s; "
          f"matches full-sequence greedy: {same}")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        reloaded = load_model(tmp)
        diff = (reloaded(prompt).logits - model(prompt).logits).abs().max().item()
    print(f"tiny: saved in HF layout and reloaded, max |logit diff| = {diff:.1e}")
    return 0 if same and diff == 0 else 1


# ------------------------------------------------------------------------- entry point

COMMANDS = {"params": (add_params, params), "demo": (add_demo, demo)}
# Other packages contribute their subcommands through a module-level COMMANDS dict of the same shape.
_COMMAND_MODULES = ("r1lab.cli_data", "r1lab.train.cli", "r1lab.serve.cli", "r1lab.eval.cli", "r1lab.rl.cli",
                    "r1lab.cost_cli", "r1lab.export.cli", "r1lab.pipeline", "r1lab.chat")


def _load_commands() -> dict:
    import importlib

    commands = dict(COMMANDS)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (name == e.name or name.startswith(f"{e.name}.")):  # a missing dependency, not the module
                raise
            continue
        commands.update(module.COMMANDS)
    return commands


def build_parser(commands: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="DeepSeek-R1, reproducible on a laptop.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in commands.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    commands = _load_commands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return commands[args.command][1](args) or 0
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"r1lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
