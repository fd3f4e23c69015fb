"""`r1lab serve` and `r1lab usage`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import DEFAULT_MODEL_DIR as DEFAULT_MODEL


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over a DeepSeek/OpenAI-compatible HTTP API with a web chat page",
                       description="Start the API server: POST /v1/chat/completions, /v1/completions, GET /v1/models, "
                                   "/v1/usage, /health, /metrics, and a chat page at /. Binds 127.0.0.1 unless "
                                   "--host says otherwise.")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint directory (default: the shipped tiny-r1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require this bearer key on /v1/* (repeat for several keys)")
    p.add_argument("--pricing", metavar="FILE", help="JSON with input_cache_hit, input_cache_miss, output "
                                                     "(USD per 1M tokens); default DeepSeek-R1 list prices")
    p.add_argument("--served-model-name", help="model id reported by the API (default: the directory name)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together")
    p.add_argument("--max-waiting", type=int, default=256, help="queued sequences before new requests get 429")
    p.add_argument("--max-model-len", type=int, help="context limit (default: the model's)")
    p.add_argument("--cache-memory-mb", type=float, default=256.0, help="memory for the paged latent cache")
    p.add_argument("--speculative-mtp", action="store_true", help="draft with the MTP module (greedy requests)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: about 3x faster decoding of small models on CPU, after "
                        "about a minute of compilation spread over the first requests")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--log-level", default="warning")


def serve(args) -> int:
    import uvicorn

    from ..engine import EngineConfig, LLMEngine
    from .app import create_app
    from .pricing import Pricing

    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no checkpoint at {model_dir} (expected config.json); pass --model DIR")
    pricing = Pricing.from_file(args.pricing) if args.pricing else Pricing()
    engine = LLMEngine(model_dir, EngineConfig(
        max_num_seqs=args.max_num_seqs, max_waiting=args.max_waiting, max_model_len=args.max_model_len,
        cache_memory_mb=args.cache_memory_mb, speculative_mtp=args.speculative_mtp, threads=args.threads,
        compile=args.compile))
    if engine.tokenizer is None:
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json; chat needs one")
    name = args.served_model_name or model_dir.name
    app = create_app(engine, name, api_keys=args.api_key, pricing=pricing)
    print(f"serving {name} on http://{args.host}:{args.port} (chat page at /, API at /v1)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_usage(sub) -> None:
    p = sub.add_parser("usage", help="print a running server's token usage, spend and cache savings",
                       description="Fetch GET /v1/usage from a running `r1lab serve` and print it.")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--api-key", help="bearer key, if the server needs one")
    p.add_argument("--json", action="store_true")


def usage(args) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = httpx.get(args.url.rstrip("/") + "/v1/usage", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ValueError(f"cannot reach {args.url}: {e}") from None
    if response.status_code != 200:
        raise ValueError(f"{args.url} answered {response.status_code}: {response.text[:200]}")
    data = response.json()
    if args.json:
        print(json.dumps(data))
        return 0
    cur = data["currency"]
    print(f"requests            {data['requests']:>12,}")
    print(f"prompt tokens       {data['prompt_tokens']:>12,}  ({data['prompt_cache_hit_tokens']:,} from cache)")
    print(f"completion tokens   {data['completion_tokens']:>12,}")
    print(f"spend               {data['cost']:>12.6f} {cur}")
    print(f"saved by cache hits {data['saved_by_cache']:>12.6f} {cur}")
    return 0


COMMANDS = {"serve": (add_serve, serve), "usage": (add_usage, usage)}
