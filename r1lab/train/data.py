"""Training data: task rows -> token sequences with loss labels -> a resumable, rank-aware batch order.

Two kinds of example, one representation (token ids plus aligned labels, -100 where no loss is taken):

* Pretraining packs documents into fixed blocks of `seq_len` tokens, each document wrapped in BOS ... EOS and
  documents shuffled before packing so a block mixes task families. Attention crosses document boundaries inside
  a block (no per-document masking), as in most pretraining setups; the EOS token tells the model where one ends.
  From each task row come two documents: the trace (prompt, newline, the `<think>` solution) and the plain
  problem (prompt, newline, `Answer: X`), so the model sees both worked and bare question/answer pairs.
* SFT (the R1 cold start) renders each row as one chat turn: the prompt through DeepSeek-R1's template with its
  generation prompt (`<｜Assistant｜><think>\\n`) and then the rest of the trace and EOS. Prompt and completion are
  tokenised separately and joined, so the loss boundary falls exactly where generation will start at inference,
  and labels are -100 over the prompt: loss on assistant tokens only.

Order. `DataCursor` walks a per-epoch permutation seeded by (seed, epoch); its state is two integers, saved in
every checkpoint, so a resumed run draws exactly the batches an uninterrupted one would. One optimiser step takes
`batch_size * grad_accum * world_size` consecutive indices; rank r takes its micro-batches from a contiguous
slice, so two ranks with batch b see the same global batch as one rank with batch 2b.

Any JSONL with the documented fields works: `prompt` plus `solution` (and/or `answer`), as `r1lab data make` writes;
for pretraining a `text` field is also accepted.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

IGNORE = -100  # label of a position that takes no loss


# --------------------------------------------------------------------------- rows


def read_rows(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every row of the given JSONL files; unreadable, malformed or empty files raise a one-line error."""
    from ..data import read_jsonl

    rows: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"data file {path} does not exist")
        if not path.is_file():
            raise ValueError(f"data file {path} is not a regular file")
        try:
            found = list(read_jsonl(path))
        except UnicodeDecodeError as e:
            raise ValueError(f"data file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ValueError(f"cannot read data file {path}: {e.strerror or e}") from None
        if not found:
            raise ValueError(f"data file {path} holds no rows")
        for number, row in enumerate(found, 1):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: row {number} is a {type(row).__name__}, expected a JSON object")
            row.setdefault("_source", f"{path}: row {number}")
        rows += found
    return rows


def task_rows(tasks: Sequence[str] = (), difficulties: Sequence[int] = (), per_level: int = 100,
              seed: int = 0, traces: str = "reference", traces_per_problem: int = 1) -> list[dict[str, Any]]:
    """The built-in corpus: `per_level` train-split problems of each task family and difficulty, as data rows.

    `traces` picks what each problem is learnt from (`r1lab.tasks.traces`): the reference trace, up to
    `traces_per_problem` search traces, or both; one row per trace. Only a problem's first row keeps its
    `answer`, so pretraining writes its plain question/answer document once."""
    from ..tasks import FAMILIES, get_family, problems, to_row
    from ..tasks import traces as traces_of

    rows = []
    for name in tasks or list(FAMILIES):
        family = get_family(name)
        levels = [d for d in family.levels if not difficulties or d in difficulties]
        for difficulty in difficulties:
            family.check(difficulty)
        for d in levels:
            for p in problems(name, d, "train", per_level, seed=seed, unique=False):
                for i, trace in enumerate(traces_of(p, traces, traces_per_problem, seed)):
                    rows.append({**to_row(p, "train", trace), **({"answer": ""} if i else {})})
    return rows


def _field(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    return value if isinstance(value, str) and value.strip() else None


def pretrain_documents(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Documents of a pretraining corpus: `text`, else the trace and the plain problem of each row."""
    from ..tasks import ANSWER_PREFIX

    docs = []
    for row in rows:
        if _field(row, "text"):
            docs.append(row["text"])
            continue
        prompt = _field(row, "prompt")
        solution, answer = _field(row, "solution"), row.get("answer")
        if prompt is None or (solution is None and answer in (None, "")):
            raise ValueError(f"{row.get('_source', 'a row')}: a pretraining row needs `text`, or `prompt` with "
                             "`solution` and/or `answer`")
        if solution is not None:
            docs.append(f"{prompt}\n{solution}")
        if answer not in (None, ""):
            docs.append(f"{prompt}\n{ANSWER_PREFIX} {answer}")
    return docs


def sft_pairs(rows: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(chat prompt, completion) of each row in DeepSeek-R1's chat format."""
    from ..tasks import THINK
    from ..tokenizer import EOS, format_chat

    pairs = []
    for row in rows:
        prompt, solution = _field(row, "prompt"), _field(row, "solution")
        if prompt is None or solution is None:
            raise ValueError(f"{row.get('_source', 'a row')}: an SFT row needs `prompt` and `solution`")
        chat_prompt = format_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
        # The generation prompt already opened the reasoning block; the completion continues after it.
        completion = solution.removeprefix(THINK).removeprefix("\n") if solution.startswith(THINK) else solution
        pairs.append((chat_prompt, completion + EOS))
    return pairs


# --------------------------------------------------------------------------- tokenised examples


@dataclass
class Examples:
    """Tokenised examples: ids and aligned labels (labels[i] is the token at i, or IGNORE for no loss).

    The model at position i predicts labels[i + 1]; the MTP head of depth d predicts labels[i + 1 + d].
    """

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    pad_id: int
    description: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad the chosen examples to the longest of them: ids, labels and the real-token mask, all [B, T]."""
        length = max(self.ids[i].numel() for i in indices)
        ids = torch.full((len(indices), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(indices), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(indices), length), dtype=torch.bool)
        for row, i in enumerate(indices):
            n = self.ids[i].numel()
            ids[row, :n] = self.ids[i]
            labels[row, :n] = self.labels[i]
            mask[row, :n] = True
        return ids, labels, mask

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of every id and label: the same data under the same tokenizer gives the same digest."""
        digest = hashlib.sha256()
        for ids, labels in zip(self.ids, self.labels, strict=True):
            digest.update(ids.numpy().tobytes())
            digest.update(labels.numpy().tobytes())
        return digest.hexdigest()


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def _special_id(tokenizer, token: str) -> int | None:
    return tokenizer.token_to_id(token)


def pack_documents(docs: list[str], tokenizer, seq_len: int, seed: int = 0) -> Examples:
    """Shuffle documents, wrap each in BOS/EOS, concatenate and cut into blocks of seq_len (the tail is dropped)."""
    from ..tokenizer import BOS, EOS, PAD

    if not docs:
        raise ValueError("the pretraining corpus has no documents")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    bos, eos = _special_id(tokenizer, BOS), _special_id(tokenizer, EOS)
    stream: list[int] = []
    for ids in _encode(tokenizer, [docs[i] for i in order]):
        stream += ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
    blocks = len(stream) // seq_len
    if blocks == 0:
        raise ValueError(f"the pretraining corpus has {len(stream)} tokens, fewer than one block of "
                         f"seq_len={seq_len}")
    packed = torch.tensor(stream[: blocks * seq_len], dtype=torch.long).view(blocks, seq_len)
    pad = _special_id(tokenizer, PAD)
    rows = list(packed.unbind(0))
    return Examples(rows, rows, pad if pad is not None else 0,
                    f"{len(docs):,} documents packed into {blocks:,} blocks of {seq_len} tokens",
                    {"documents": len(docs), "tokens": blocks * seq_len, "dropped_tokens": len(stream) % seq_len})


def sft_examples(pairs: list[tuple[str, str]], tokenizer, seq_len: int) -> Examples:
    """Prompt + completion ids with loss on the completion only; truncated to seq_len."""
    from ..tokenizer import PAD

    if not pairs:
        raise ValueError("the SFT data has no examples")
    prompts = _encode(tokenizer, [p for p, _ in pairs])
    completions = _encode(tokenizer, [c for _, c in pairs])
    ids, labels, truncated, dropped = [], [], 0, 0
    for p, c in zip(prompts, completions, strict=True):
        if len(p) >= seq_len - 1:  # not even one completion token would remain to learn from
            dropped += 1
            continue
        full = (p + c)[:seq_len]
        truncated += len(p) + len(c) > seq_len
        ids.append(torch.tensor(full, dtype=torch.long))
        labels.append(torch.tensor([IGNORE] * len(p) + full[len(p):], dtype=torch.long))
    if not ids:
        raise ValueError(f"every SFT prompt is longer than seq_len={seq_len}; raise --seq-len")
    pad = _special_id(tokenizer, PAD)
    return Examples(ids, labels, pad if pad is not None else 0,
                    f"{len(ids):,} chat examples ({truncated} truncated to {seq_len} tokens, {dropped} dropped)",
                    {"examples": len(ids), "truncated": truncated, "dropped": dropped})


# --------------------------------------------------------------------------- order


class DataCursor:
    """Where the run is in its data: epoch and offset into that epoch's seeded permutation.

    With `lengths` and `batch`, each epoch's permutation is grouped by length, as transformers' group_by_length
    does: windows of 16 batches are sorted by example length, cut into batches, and the batches shuffled. A
    batch is padded to its longest example, so chat examples of mixed lengths (guess-and-check traces run from
    30 to 130 tokens) would otherwise spend about a third of every step on padding. The order is still a pure
    function of (seed, epoch), so resuming stays exact.
    """

    GROUP_WINDOW = 16  # batches per window sorted by length

    def __init__(self, num_examples: int, seed: int, epoch: int = 0, offset: int = 0,
                 lengths: Sequence[int] | None = None, batch: int = 0):
        if num_examples < 1:
            raise ValueError("no training examples")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_examples} examples")
        self.num_examples, self.seed, self.epoch, self.offset = num_examples, seed, epoch, offset
        self.lengths, self.batch = (torch.as_tensor(lengths), batch) if lengths is not None and batch > 1 else (None, 0)
        self._order: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            order = torch.randperm(self.num_examples, generator=gen)
            if self.lengths is not None:
                order = self._grouped(order, gen)
            self._order = (epoch, order)
        return self._order[1]

    def _grouped(self, order: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        window = self.batch * self.GROUP_WINDOW
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[self.lengths[chunk].argsort(stable=True)]
            batches += list(chunk.split(self.batch))
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()])

    def take(self, n: int) -> list[int]:
        """The next n example indices (crossing into the next epoch's permutation when one runs out)."""
        out: list[int] = []
        while len(out) < n:
            perm = self._permutation(self.epoch)
            grab = min(n - len(out), self.num_examples - self.offset)
            out += perm[self.offset: self.offset + grab].tolist()
            self.offset += grab
            if self.offset == self.num_examples:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "num_examples": self.num_examples}


def rank_micro_batches(indices: list[int], rank: int, world_size: int, grad_accum: int) -> list[list[int]]:
    """Split one global batch: rank r gets the r-th contiguous slice, cut into grad_accum micro-batches.

    >>> rank_micro_batches(list(range(8)), rank=1, world_size=2, grad_accum=2)
    [[4, 5], [6, 7]]
    """
    per_rank = len(indices) // world_size
    mine = indices[rank * per_rank: (rank + 1) * per_rank]
    size = per_rank // grad_accum
    return [mine[i * size: (i + 1) * size] for i in range(grad_accum)]
