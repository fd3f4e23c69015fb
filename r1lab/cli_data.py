"""The data-side subcommands of `r1lab`: `tokenizer`, `tasks` and `data`.

They follow `cli.py`'s shape (`add_<name>(subparsers)` declares, `<name>(args)` runs, a ValueError is a
one-line user error) and are merged into its COMMANDS table. Each has actions below it:

    r1lab tokenizer train --out DIR      train the BPE tokenizer on the task corpus
    r1lab tokenizer encode --tokenizer DIR TEXT
    r1lab tasks list                     families, difficulty levels, one example each
    r1lab tasks show --task T --difficulty D
    r1lab data make --task T --difficulty D --split train --n N --seed S --out FILE.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from .tasks import FAMILIES, SPLITS, generate, get_family, problems, score, solution, to_row

_EPILOG_TASKS = "tasks: " + ", ".join(FAMILIES) + " (see `r1lab tasks list`)"


def _add_actions(sub, name: str, help: str, description: str):
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest=f"{name}_action", metavar="ACTION", required=True)


def _add_task_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, metavar="NAME", help="task family: " + ", ".join(FAMILIES))
    p.add_argument("--difficulty", required=True, type=int, metavar="D",
                   help="difficulty level, 1 (easiest) to 5; `r1lab tasks list` says what each means")


# ------------------------------------------------------------------------- tokenizer


def add_tokenizer(sub) -> None:
    actions = _add_actions(sub, "tokenizer", "train or inspect the BPE tokenizer",
                           "The project's byte-level BPE tokenizer: digits one per token, DeepSeek-R1's special "
                           "tokens and chat template. Saved as tokenizer.json + tokenizer_config.json, which "
                           "transformers.AutoTokenizer.from_pretrained(DIR) loads.")
    p = actions.add_parser("train", help="train a tokenizer and save it to a directory",
                           description="Train on the project's own corpus (prompts and reference traces of every "
                                       "task family and difficulty, train split) unless --corpus files are given.",
                           epilog="example: r1lab tokenizer train --out runs/tokenizer")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the tokenizer files into")
    p.add_argument("--vocab-size", type=int, default=1024, metavar="N",
                   help="upper bound on the vocabulary, special tokens included (default 1024, the tiny preset's); "
                        "a small corpus may give fewer")
    p.add_argument("--per-level", type=int, default=200, metavar="N",
                   help="problems per task family and difficulty in the default corpus (default 200)")
    p.add_argument("--corpus", action="append", metavar="FILE",
                   help="train on this file instead (repeatable): .jsonl rows from `r1lab data make` contribute "
                        "prompt and solution, other files one text per line")
    p.add_argument("--seed", type=int, default=0, help="seed of the default corpus (default 0)")
    p = actions.add_parser("encode", help="show how a text splits into tokens",
                           description="Encode TEXT with a saved tokenizer and print each token with its id.",
                           epilog='example: r1lab tokenizer encode --tokenizer runs/tokenizer "What is 12 + 7?"')
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a directory written by `tokenizer train`")
    p.add_argument("text", help="the text to encode (\\n in it stands for a newline)")


def tokenizer(args) -> int:
    from .tokenizer import build_tokenizer, default_corpus, load_tokenizer, save_tokenizer

    if args.tokenizer_action == "train":
        if args.per_level < 1:
            raise ValueError(f"--per-level must be 1 or more, got {args.per_level}")
        texts = _read_corpus(args.corpus) if args.corpus else default_corpus(args.per_level, args.seed)
        built = build_tokenizer(texts, args.vocab_size)
        out = save_tokenizer(built, args.out)
        print(f"trained on {len(texts):,} texts; vocabulary {built.get_vocab_size():,} tokens "
              f"(bound {args.vocab_size:,}); saved to {out}")
        return 0
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text.replace("\\n", "\n"), add_special_tokens=False)
    for i in ids:
        print(f"{i:>6}  {tok.decode([i])!r}")  # a byte of a multi-byte character shows as '\ufffd'
    print(f"{len(ids)} tokens")
    return 0


def _read_corpus(paths: list[str]) -> list[str]:
    from .data import read_jsonl

    texts = []
    for path in paths:
        if path.endswith(".jsonl"):
            for row in read_jsonl(path):
                texts += [row[k] for k in ("prompt", "solution", "text") if isinstance(row.get(k), str)]
        else:
            with open(path, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f]
    return texts


# ------------------------------------------------------------------------- tasks


def add_tasks(sub) -> None:
    actions = _add_actions(sub, "tasks", "list the verifiable reasoning tasks, or show one problem",
                           "Task families with difficulty levels; each problem has a reference trace and a verifier.")
    p = actions.add_parser("list", help="families, difficulty levels and one example each",
                           description="Print every task family, what each difficulty level means, and one "
                                       "example problem with its answer.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p = actions.add_parser("show", help="one problem with its reference trace and the verifier's score",
                           description="Generate one problem and print its prompt, reference solution and the "
                                       "score the verifier gives that solution.", epilog=_EPILOG_TASKS)
    _add_task_choice(p)
    p.add_argument("--seed", type=int, default=0, help="which problem (default 0)")
    p.add_argument("--split", choices=SPLITS, default="train", help="train (default) or heldout")


def tasks(args) -> int:
    if args.tasks_action == "list":
        listing = {}
        for name, family in FAMILIES.items():
            example = family.generate(0, 2)
            listing[name] = {"summary": family.summary, "difficulties": family.levels,
                             "example": {"difficulty": 2, "prompt": example.prompt, "answer": example.answer}}
        if args.json:
            print(json.dumps(listing, indent=2))
            return 0
        for name, info in listing.items():
            print(f"{name}: {info['summary']}")
            for level, meaning in info["difficulties"].items():
                print(f"  difficulty {level}: {meaning}")
            ex = info["example"]
            print(f"  example (difficulty {ex['difficulty']}): {ex['prompt']}  ->  {ex['answer']}\n")
        return 0
    problem = generate(args.task, args.seed, args.difficulty, args.split)
    trace = solution(problem)
    print(f"prompt:\n{problem.prompt}\n\nsolution:\n{trace}\n\nverifier score of the solution: "
          f"{score(problem, trace)}")
    return 0


# ------------------------------------------------------------------------- data


def add_data(sub) -> None:
    actions = _add_actions(sub, "data", "write datasets of task problems",
                           "Datasets of generated problems as JSON Lines, one problem per line.")
    p = actions.add_parser(
        "make", help="write N problems of one task, difficulty and split to a .jsonl file",
        description="Generate N distinct problems and write them as JSON Lines, one object per line with the\n"
                    "fields task, difficulty, split, prompt, answer, solution (the reference <think> trace)\n"
                    "and metadata. The same arguments always give the same file; train and heldout never\n"
                    "share a problem, whatever the seeds. The file is written atomically.",
        epilog=_EPILOG_TASKS + "\n\nexample:\n  r1lab data make --task countdown --difficulty 2 --split heldout "
                               "--n 200 --seed 0 \\\n      --out data/countdown-2-heldout.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_task_choice(p)
    p.add_argument("--split", required=True, choices=SPLITS, help="train or heldout (disjoint by construction)")
    p.add_argument("--n", required=True, type=int, metavar="N", help="how many problems")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .jsonl file to write")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="let a problem repeat (needed for large N at small difficulties, whose space is small)")


def data(args) -> int:
    from tqdm import tqdm

    from .data import write_jsonl

    get_family(args.task).check(args.difficulty, args.split)
    stream = problems(args.task, args.difficulty, args.split, args.n, args.seed, unique=not args.allow_duplicates)
    bar = tqdm(stream, total=args.n, unit=" problems", disable=args.n < 5000, file=sys.stderr)
    count = write_jsonl((to_row(p, args.split) for p in bar), args.out)
    print(f"wrote {count:,} {args.task} problems (difficulty {args.difficulty}, {args.split} split, "
          f"seed {args.seed}) to {args.out}")
    return 0


COMMANDS = {"tokenizer": (add_tokenizer, tokenizer), "tasks": (add_tasks, tasks), "data": (add_data, data)}
