"""Decode throughput of r1lab's engine against transformers' `generate`, on the same checkpoint, in one run.

Figures (see issue "Inference engine"):
  decode_b1_ratio        batch-1 greedy decode tokens/s, ours over transformers'
  concurrent32_ratio     32 concurrent requests, aggregate generated tokens/s, ours over transformers' batched
                         generate of the same 32 prompts (left-padded)
  kv_bytes_per_token_per_layer / kv_min_bytes_per_token_per_layer   what our cache stores per token per layer,
                         and the MLA minimum (kv_lora_rank + qk_rope_head_dim values)
  prefix_ttft_speedup    time to first token for a prompt whose 512-token prefix is cold, over the same when warm
  mtp_speedup / mtp_acceptance   greedy decode with MTP speculation over without, and the draft acceptance rate
                         (meaningful only on a trained checkpoint: pass --model)

    .venv/bin/python benchmarks/bench_decode.py [--model DIR] [--json]

Without --model a randomly initialised `tiny` model is used (MTP figures are then not meaningful).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from r1lab.checkpoint import load_model
from r1lab.config import preset
from r1lab.engine import EngineConfig, LLMEngine, SamplingParams, tokenizer_from_dir
from r1lab.model import DeepseekV3ForCausalLM


def _hf(model_dir: str):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _prompt(vocab: int, length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (length,), generator=gen).tolist()


def _hf_generate(hf, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for transformers to greedily generate new_tokens for each prompt, batched with left padding."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    start = time.perf_counter()
    with torch.inference_mode():
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def _ours(engine: LLMEngine, prompts: list[list[int]], new_tokens: int, ignore_eos: bool = True) -> float:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=ignore_eos)
    start = time.perf_counter()
    engine.generate(prompts, params)
    return time.perf_counter() - start


def run(model_dir: str, repeats: int, new_tokens: int, compile: bool = True) -> dict:
    model = load_model(model_dir)
    cfg = model.config
    hf = _hf(model_dir)
    engine = LLMEngine(model, EngineConfig(max_num_seqs=64, enable_prefix_caching=False, compile=compile),
                       tokenizer=tokenizer_from_dir(model_dir))
    results: dict = {}

    # batch 1 and 32 concurrent: interleave ours and theirs, median of repeats
    for label, count in (("decode_b1", 1), ("concurrent32", 32)):
        prompts = [_prompt(cfg.vocab_size, 32, seed=i) for i in range(count)]
        _ours(engine, prompts, new_tokens)  # warm-up both (ours: compiles the decode step)
        _hf_generate(hf, prompts, 4)
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(_ours(engine, prompts, new_tokens))
            theirs.append(_hf_generate(hf, prompts, new_tokens))
        tokens = count * new_tokens
        results[f"{label}_tokens_per_s"] = round(tokens / statistics.median(ours), 1)
        results[f"{label}_hf_tokens_per_s"] = round(tokens / statistics.median(theirs), 1)
        results[f"{label}_ratio"] = round(statistics.median(theirs) / statistics.median(ours), 2)

    results["kv_bytes_per_token_per_layer"] = engine.runner.cache.bytes_per_token_per_layer
    results["kv_min_bytes_per_token_per_layer"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * model.dtype.itemsize

    # prefix caching: cold vs warm time to first token on a 512-token shared prefix
    prefix = _prompt(cfg.vocab_size, 512, seed=99)
    cold, warm = [], []
    for r in range(repeats):
        cached = LLMEngine(model, EngineConfig(max_num_batched_tokens=1024))
        one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        start = time.perf_counter()
        cached.generate([prefix + [3 + r]], one)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        out = cached.generate([prefix + [4 + r]], one)[0]
        warm.append(time.perf_counter() - start)
        assert out.num_cached_tokens >= 496, out.num_cached_tokens
    results["prefix_ttft_cold_ms"] = round(statistics.median(cold) * 1e3, 2)
    results["prefix_ttft_warm_ms"] = round(statistics.median(warm) * 1e3, 2)
    results["prefix_ttft_speedup"] = round(statistics.median(cold) / statistics.median(warm), 2)

    # MTP speculation: greedy decode of the same prompts with and without drafting
    if cfg.num_nextn_predict_layers:
        # In-distribution prompts when the checkpoint has a tokenizer: drafts are only worth judging on text the
        # model was trained to continue.
        if engine.tokenizer is not None:
            from r1lab.tasks import problems
            from r1lab.tokenizer import format_chat

            chats = [format_chat([{"role": "user", "content": p.prompt}], add_generation_prompt=True)
                     for p in problems("countdown", 2, "heldout", 8, seed=1)]
            prompts = [engine.encode(c) for c in chats]
        else:
            prompts = [_prompt(cfg.vocab_size, 32, seed=i) for i in range(8)]
        mtp_results = {"plain": [], "spec": []}
        plain_engine = LLMEngine(model, EngineConfig(enable_prefix_caching=False, compile=compile),
                                 tokenizer=engine.tokenizer)
        spec_engine = LLMEngine(model, EngineConfig(enable_prefix_caching=False, speculative_mtp=True, compile=compile),
                                tokenizer=engine.tokenizer)
        # Requests end at EOS, as a chat reply does (past its end a model generates noise no drafter predicts).
        # Greedy outputs are identical with and without drafting, so both sides generate the same tokens.
        for prompt in prompts[:2]:  # warm-up (compilation)
            _ours(plain_engine, [prompt], new_tokens, ignore_eos=False)
            _ours(spec_engine, [prompt], new_tokens, ignore_eos=False)
        drafted, accepted = spec_engine.stats["drafted_tokens"], spec_engine.stats["accepted_tokens"]
        for _ in range(repeats):  # batch-1 decode, one prompt after another, as a chat user would see it
            for prompt in prompts:
                mtp_results["plain"].append(_ours(plain_engine, [prompt], new_tokens, ignore_eos=False))
                mtp_results["spec"].append(_ours(spec_engine, [prompt], new_tokens, ignore_eos=False))
        results["mtp_speedup"] = round(sum(mtp_results["plain"]) / sum(mtp_results["spec"]), 2)
        drafted = spec_engine.stats["drafted_tokens"] - drafted
        results["mtp_acceptance"] = round((spec_engine.stats["accepted_tokens"] - accepted) / drafted, 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random tiny model)")
    parser.add_argument("--repeats", type=int, default=9,
                        help="alternating runs per figure; medians of 3 swing by 30%% on a noisy 2-core machine")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="run our engine eagerly (no torch.compile)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model = DeepseekV3ForCausalLM(preset("tiny"))
            model.init_weights(seed=0)
            model.save_pretrained(tmp)
            model_dir = tmp
        print(f"model: {Path(model_dir).name if args.model else 'random tiny'}; {args.threads} threads; "
              f"{args.new_tokens} new tokens per request; median of {args.repeats}; "
              f"{'eager' if args.no_compile else 'compiled'} decode step")
        results = run(model_dir, args.repeats, args.new_tokens, compile=not args.no_compile)
    for key, value in results.items():
        print(f"  {key:<36} {value}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
