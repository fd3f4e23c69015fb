"""Rejection sampling: turn the RL policy's verified reasoning into SFT data (R1's stage 3 and the distillation set).

For each training prompt, sample k completions, keep those the task verifier accepts *and* that follow the
think-then-answer format, drop duplicates, and write them as rows that `r1lab train sft --data` reads.
"""

from __future__ import annotations

from pathlib import Path

from ..data import write_jsonl
from ..engine import EngineConfig, LLMEngine
from ..tasks import THINK, Problem, mix_problems
from .rewards import accuracy_reward, format_reward
from .rollout import rollout


def rejection_sample(model_dir: str | Path, levels: list[str], prompts: int, k: int = 8,
                     temperature: float = 1.0, max_tokens: int = 128, keep_per_prompt: int = 2, seed: int = 0,
                     mode: str = "r1", out: str | Path | None = None) -> tuple[list[dict], dict]:
    """Sample k per prompt over training problems of the levels (`countdown:2`, ...), keep verified and
    well-formatted completions; returns (rows, stats)."""
    engine = LLMEngine(model_dir, EngineConfig(max_num_seqs=256))
    pool: list[Problem] = mix_problems(levels, "train", prompts, seed=10_000 + seed)
    rows, sampled, kept_prompts = [], 0, 0
    for start in range(0, len(pool), 64):
        groups = rollout(engine, pool[start:start + 64], k, temperature, max_tokens=max_tokens,
                         seed=seed * 7 + start, mode=mode)
        for group in groups:
            sampled += len(group.texts)
            seen: set[str] = set()
            for text in group.texts:
                if len(seen) >= keep_per_prompt:
                    break
                if text in seen or not accuracy_reward(group.problem, text) or not format_reward(text):
                    continue
                seen.add(text)
                rows.append({"task": group.problem.task, "difficulty": group.problem.difficulty,
                             "prompt": group.problem.prompt, "answer": group.problem.answer,
                             "solution": f"{THINK}\n{text}", "source": "rejection-sampling"})
            kept_prompts += bool(seen)
    stats = {"prompts": len(pool), "samples": sampled, "rows": len(rows),
             "prompts_with_a_kept_sample": kept_prompts, "accept_rate": len(rows) / max(sampled, 1)}
    if out is not None:
        write_jsonl(rows, out)
    return rows, stats
