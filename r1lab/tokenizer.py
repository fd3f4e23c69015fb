"""A small byte-level BPE tokenizer with DeepSeek-R1's special tokens and chat template.

Choices and why:
- Byte-level BPE (as DeepSeek's own tokenizer) so any text encodes and decodes exactly, with no unknown token;
  the 256 byte symbols cost a quarter of a 1,024-entry vocabulary, which the tiny model can afford.
- Digits are split one per token before BPE runs (`Digits(individual_digits=True)`), as in LLaMA: every number
  is spelled with the same ten symbols, so column arithmetic is learnable. DeepSeek-V3 groups up to three digits,
  which suits a model that has seen trillions of tokens, not one trained on CPU in minutes.
- Special tokens come first, so `<｜begin▁of▁sentence｜>` is id 0 and `<｜end▁of▁sentence｜>` id 1 (the model
  config's bos/eos defaults), then `<｜User｜>`, `<｜Assistant｜>`, `<think>`, `</think>` and a pad token.
  `<think>` and `</think>` are single tokens but not "special": decoding with `skip_special_tokens=True` keeps
  them, as DeepSeek's tokenizer does, because the reasoning markers are part of the answer text.
- Encoding adds no BOS by itself (text -> ids -> text is exact); the chat template writes it.
- The chat template is DeepSeek-R1's: system prompts first after BOS, `<｜User｜>` and `<｜Assistant｜>` turns,
  each assistant turn closed by EOS with its reasoning (everything up to the last `</think>`) removed, and a
  generation prompt of `<｜Assistant｜><think>\\n` that opens the reasoning block. `format_chat` is the same
  format in plain Python; the tests hold the Jinja template to it through transformers.

The default training corpus is the project's own: prompts and reference traces of every task family and
difficulty (train split only, so held-out prompts do not shape the vocabulary).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .data import atomic_write
from .tasks import FAMILIES, problems
from .tasks.answers import END_THINK, THINK

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
PAD = "<｜▁pad▁｜>"
SPECIAL_TOKENS = (BOS, EOS, USER, ASSISTANT, THINK, END_THINK, PAD)  # in id order: BOS is 0, EOS is 1
_NOT_SKIPPED = {THINK, END_THINK}  # added tokens that decoding keeps even with skip_special_tokens
DEFAULT_VOCAB_SIZE = 1024
_BYTE_SYMBOLS = 256

CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + message['content'] -%}"
    "{%- elif message['role'] not in ('user', 'assistant') -%}"
    "{{- raise_exception('unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '" + USER + "' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '" + END_THINK + "' in content -%}{%- set content = content.split('" + END_THINK + "')[-1] -%}{%- endif -%}"
    "{{- '" + ASSISTANT + "' + content + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + THINK + "\\n' -}}{%- endif -%}"
)


def format_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """DeepSeek-R1's chat format in plain Python (the reference the Jinja template is tested against).

    >>> format_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
    ...              {"role": "assistant", "content": "<think>\\n2+2=4\\n</think>\\nAnswer: 4"},
    ...              {"role": "user", "content": "3+3?"}], add_generation_prompt=True)
    '<｜begin▁of▁sentence｜>Be brief.<｜User｜>2+2?<｜Assistant｜>\\nAnswer: 4<｜end▁of▁sentence｜><｜User｜>3+3?\
<｜Assistant｜><think>\\n'
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = [BOS, system]
    for m in messages:
        if m["role"] == "user":
            parts.append(USER + m["content"])
        elif m["role"] == "assistant":
            parts.append(ASSISTANT + m["content"].split(END_THINK)[-1] + EOS)
        elif m["role"] != "system":
            raise ValueError(f"unsupported role: {m['role']}")
    if add_generation_prompt:
        parts.append(ASSISTANT + THINK + "\n")
    return "".join(parts)


def format_zero(prompt: str) -> str:
    """R1-Zero's prompt for a base model: the problem, then `<think>`, the layout of the pretraining corpus.

    R1-Zero wraps the problem in a sentence of English instructions; a base model that read only task traces
    has never seen English prose, so the layout it learnt plays that part: it fixes the format, not the method.
    """
    return f"{prompt}\n{THINK}\n"


def default_corpus(per_level: int = 200, seed: int = 0) -> list[str]:
    """Prompts, reference traces and one search trace (where a level has them) of every task family and
    difficulty, train split: the project's own corpus."""
    from .tasks import traces

    texts = []
    for name, family in FAMILIES.items():
        for difficulty in family.levels:
            for problem in problems(name, difficulty, "train", per_level, seed=seed, unique=False):
                texts.append(problem.prompt)
                texts += traces(problem, "both", 1, seed)
    return texts


def build_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2):
    """Train a `tokenizers.Tokenizer` in memory; its vocabulary, special tokens included, has <= vocab_size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    smallest = _BYTE_SYMBOLS + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size must be at least {smallest} (256 byte symbols + {len(SPECIAL_TOKENS)} special "
                         f"tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise ValueError("the training corpus is empty")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The trainer marks all its special tokens special; un-mark the think tags so decoding keeps them.
    spec = json.loads(tokenizer.to_str())
    for entry in spec["added_tokens"]:
        entry["special"] = entry["content"] not in _NOT_SKIPPED
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, f"{token} should have id {i}"
    return tokenizer


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` (with the chat template) so that
    `transformers.AutoTokenizer.from_pretrained(out_dir)` loads them. Each file is replaced atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "extra_special_tokens": [USER, ASSISTANT],
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
    }
    with atomic_write(out / "tokenizer.json") as f:
        f.write(tokenizer.to_str(pretty=True))
    with atomic_write(out / "tokenizer_config.json") as f:
        f.write(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out


def train_tokenizer(texts: Iterable[str] | None, out_dir: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    min_frequency: int = 2) -> Path:
    """Train on `texts` (None: `default_corpus()`) and save to `out_dir`; returns the directory."""
    return save_tokenizer(build_tokenizer(default_corpus() if texts is None else texts, vocab_size, min_frequency),
                          out_dir)


def load_tokenizer(path: str | os.PathLike):
    """The saved tokenizer as a transformers `PreTrainedTokenizerFast` (chat template included)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}; make one with `r1lab tokenizer train --out {path}`")
    return AutoTokenizer.from_pretrained(str(path))
