"""`r1lab chat`: ask the model a question in the terminal; its thinking is shown dimmed, then the answer."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import DEFAULT_MODEL_DIR as DEFAULT_MODEL


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (thinking dimmed, then the answer)",
                       description="With a question, answer it and exit; without, start an interactive session "
                                   "(empty line or Ctrl-D to quit). Earlier turns are kept without their reasoning.")
    p.add_argument("question", nargs="?", help="one question to answer (default: interactive)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint directory (default: shipped tiny-r1)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int)


def chat(args) -> int:
    from rich.console import Console

    from .engine import EngineConfig, LLMEngine, SamplingParams
    from .serve.reasoning import split_reasoning
    from .tokenizer import format_chat

    model = Path(args.model)
    if not (model / "config.json").exists() or not (model / "tokenizer.json").exists():
        raise FileNotFoundError(f"{model} is not a checkpoint with a tokenizer (config.json + tokenizer.json)")
    engine = LLMEngine(model, EngineConfig(max_num_seqs=1))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            seed=args.seed)
    console = Console(highlight=False)
    history: list[dict] = []

    def answer(question: str) -> None:
        history.append({"role": "user", "content": question})
        out = engine.generate([format_chat(history, add_generation_prompt=True)], params)[0].outputs[0]
        thinking, content = split_reasoning(out.text)
        console.print(thinking, style="dim", markup=False)
        console.print(content or "(no answer: the model did not finish thinking)", markup=False)
        history.append({"role": "assistant", "content": content})

    if args.question:
        answer(args.question)
        return 0
    console.print(f"[bold]r1lab chat[/bold] ({model.name}); empty line to quit")
    while True:
        try:
            question = input("> ").strip()
        except EOFError:
            break
        if not question:
            break
        answer(question)
    print(file=sys.stderr)
    return 0


COMMANDS = {"chat": (add_chat, chat)}
