"""Load check: many concurrent streaming clients against a live `r1lab serve`.

Starts a server on 127.0.0.1 (or targets --url), runs --clients concurrent clients that each send --requests
streaming chat requests one after another, and reports errors, completion, latency percentiles, time to first
token and aggregate tokens/s. Exits non-zero if any request failed or did not complete.

    .venv/bin/python benchmarks/load_server.py [--model DIR | --url URL] [--clients 64] [--requests 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

from r1lab.config import DEFAULT_MODEL_DIR

QUESTIONS = ["What is 46 + 51?", "Solve for x: 3x + 4 = 19", "Make 24 from 2, 3, 4 using + - * /.",
             "What is 12 * 13?"]


def _start_server(model: str, max_num_seqs: int):
    import uvicorn

    from r1lab.engine import EngineConfig, LLMEngine
    from r1lab.serve import create_app

    engine = LLMEngine(model, EngineConfig(max_num_seqs=max_num_seqs, max_waiting=1024))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, Path(model).name), host="127.0.0.1", port=port,
                                           log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}", engine


async def _client(http: httpx.AsyncClient, url: str, model: str, index: int, requests: int, max_tokens: int,
                  results: list) -> None:
    for r in range(requests):
        body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[(index + r) % len(QUESTIONS)]}],
                "stream": True, "max_tokens": max_tokens, "temperature": 0.6, "top_p": 0.95,
                "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first, tokens, done, error = None, 0, False, None
        try:
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done = True
                            break
                        chunk = json.loads(data)
                        if first is None and chunk["choices"]:
                            first = time.perf_counter() - start
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        results.append({"latency": time.perf_counter() - start, "ttft": first, "tokens": tokens,
                        "ok": done and error is None, "error": error})


async def _run(url: str, model: str, clients: int, requests: int, max_tokens: int) -> tuple[list, float]:
    results: list = []
    limits = httpx.Limits(max_connections=clients + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, url, model, i, requests, max_tokens, results) for i in range(clients)))
        return results, time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--url", help="target an already running server instead of starting one")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = engine = None
    if args.url:
        url, model = args.url.rstrip("/"), httpx.get(args.url.rstrip("/") + "/v1/models").json()["data"][0]["id"]
    else:
        server, url, engine = _start_server(args.model, max_num_seqs=args.clients)
        model = Path(args.model).name
    results, wall = asyncio.run(_run(url, model, args.clients, args.requests, args.max_tokens))
    if server is not None:
        server.should_exit = True
    ok = [r for r in results if r["ok"]]
    errors = [r["error"] for r in results if not r["ok"]]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    summary = {
        "requests": len(results), "completed": len(ok), "errors": len(errors),
        "latency_p50_s": round(_pct(latencies, 0.5), 3) if ok else None,
        "latency_p99_s": round(_pct(latencies, 0.99), 3) if ok else None,
        "ttft_p50_s": round(_pct(ttfts, 0.5), 3) if ttfts else None,
        "ttft_p99_s": round(_pct(ttfts, 0.99), 3) if ttfts else None,
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1), "wall_s": round(wall, 2),
    }
    if engine is not None:
        summary["leaked_blocks"] = sum(1 for b in engine.block_manager.blocks if b.ref_count)
    print(f"{args.clients} clients x {args.requests} streaming requests against {url}")
    for key, value in summary.items():
        print(f"  {key:<16} {value}")
    for e in errors[:5]:
        print(f"  error: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0 if not errors and len(ok) == args.clients * args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
