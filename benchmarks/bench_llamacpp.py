"""Batch-1 greedy decode tokens/s: r1lab's engine against llama.cpp, on the same model, in one run.

The model (default: the `small` preset, randomly initialised, with a BPE tokenizer) is saved as an r1lab
checkpoint and exported with `r1lab export --to gguf` (float32, like our engine's weights). Both runtimes decode
the same prompt greedily; each is timed from its first generated token, so the figure is decode speed, not prefill.
Repeats alternate between the two (loaded machines drift), and medians are compared:

  ratio = r1lab tokens/s / llama.cpp tokens/s      (goal >= 1)

It also reports how many of the greedy tokens agree (llama.cpp with an f32 latent cache).

    .venv/bin/pip install llama-cpp-python      # builds llama.cpp from source: ~15 minutes on 2 cores
    .venv/bin/python benchmarks/bench_llamacpp.py [--model DIR] [--new-tokens 64] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from r1lab.config import preset
from r1lab.engine import EngineConfig, LLMEngine, SamplingParams
from r1lab.export import export_gguf
from r1lab.model import DeepseekV3ForCausalLM
from r1lab.tokenizer import build_tokenizer, default_corpus, save_tokenizer


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed, so nothing was measured.\n"
              "Install it with `.venv/bin/pip install llama-cpp-python` (it compiles llama.cpp from source: about "
              "15 minutes on 2 cores) and run this script again.", file=sys.stderr)
        sys.exit(2)
    return llama_cpp


def _make_small(path: Path) -> None:
    cfg = preset("small")
    tokenizer = build_tokenizer(default_corpus(per_level=20), vocab_size=cfg.vocab_size)
    save_tokenizer(tokenizer, path)
    model = DeepseekV3ForCausalLM(cfg)
    model.init_weights(seed=0)
    model.eval().save_pretrained(path)


def _ours(engine: LLMEngine, prompt: list[int], new_tokens: int) -> tuple[float, list[int]]:
    """Decode tokens/s after the first token, and the tokens."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    request = engine.add_request(prompt, params)
    outputs = engine.step()  # prefill + first token
    start = time.perf_counter()
    while engine.has_unfinished():
        outputs = engine.step() or outputs
    elapsed = time.perf_counter() - start
    tokens = next(o for o in outputs if o.request_id == request).outputs[0].token_ids
    return (new_tokens - 1) / elapsed, tokens


def _theirs(llm, prompt: list[int], new_tokens: int) -> tuple[float, list[int]]:
    # (a copy: llama-cpp-python reuses the list it is given as its own buffer)
    stream = llm.generate(list(prompt), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
    tokens = [next(stream)]  # prefill + first token
    start = time.perf_counter()
    while len(tokens) < new_tokens:
        tokens.append(next(stream))
    return (new_tokens - 1) / (time.perf_counter() - start), tokens


def run(model_dir: Path, gguf_path: Path, new_tokens: int, repeats: int, threads: int, compile: bool = True) -> dict:
    llama_cpp = _import_llama_cpp()
    torch.set_num_threads(threads)
    engine = LLMEngine(str(model_dir), EngineConfig(enable_prefix_caching=False, compile=compile))
    f32 = getattr(llama_cpp, "GGML_TYPE_F32", 0)  # an f32 latent cache like ours; K and V types must match (MLA)
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                          verbose=False, type_k=f32, type_v=f32)
    vocab = engine.model.config.vocab_size
    prompt = torch.randint(8, vocab, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    _ours(engine, prompt, new_tokens)  # warm-up both (ours: compiles the decode step)
    _theirs(llm, prompt, 4)
    ours, theirs = [], []
    for _ in range(repeats):
        rate, our_tokens = _ours(engine, prompt, new_tokens)
        ours.append(rate)
        rate, their_tokens = _theirs(llm, prompt, new_tokens)
        theirs.append(rate)
    agree = next((i for i, (a, b) in enumerate(zip(our_tokens, their_tokens, strict=True)) if a != b), new_tokens)
    return {
        "r1lab_tokens_per_s": round(statistics.median(ours), 1),
        "llamacpp_tokens_per_s": round(statistics.median(theirs), 1),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
        "greedy_tokens_agreeing": f"{agree}/{new_tokens}",
        "threads": threads,
        "r1lab_decode_step": "compiled" if compile else "eager",
        "gguf_mib": round(gguf_path.stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an r1lab checkpoint directory (default: a random `small` model)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gguf-dtype", choices=["f32", "f16"], default="f32")
    parser.add_argument("--no-compile", action="store_true", help="run our engine eagerly (no torch.compile)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    args = parser.parse_args()
    _import_llama_cpp()  # fail before spending time on the export
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else Path(tmp) / "small"
        if args.model is None:
            _make_small(model_dir)
        gguf_path = export_gguf(model_dir, Path(tmp) / "model.gguf", dtype=args.gguf_dtype)
        print(f"model: {args.model or 'random small preset'}; GGUF {args.gguf_dtype}; {args.threads} threads; "
              f"{args.new_tokens} new tokens at batch 1; median of {args.repeats}")
        results = run(model_dir, gguf_path, args.new_tokens, args.repeats, args.threads, compile=not args.no_compile)
    for key, value in results.items():
        print(f"  {key:<26} {value}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
