"""What a response costs: a price table per million tokens and a running ledger.

Defaults are DeepSeek-R1's list prices (USD per 1M tokens): input on a cache hit $0.14, input on a cache miss
$0.55, output $2.19. A JSON file with the same keys overrides them (`r1lab serve --pricing FILE`). Every
response carries its cost in the extension field `cost` (see README); the ledger sums spend and what cache hits
saved against paying the miss price for those tokens.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

DEEPSEEK_R1 = {"input_cache_hit": 0.14, "input_cache_miss": 0.55, "output": 2.19}
OPENAI_O1 = {"input_cache_hit": 7.50, "input_cache_miss": 15.0, "output": 60.0}


@dataclass
class Pricing:
    input_cache_hit: float = DEEPSEEK_R1["input_cache_hit"]
    input_cache_miss: float = DEEPSEEK_R1["input_cache_miss"]
    output: float = DEEPSEEK_R1["output"]
    currency: str = "USD"

    @classmethod
    def from_file(cls, path: str | Path) -> Pricing:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"pricing file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"pricing file {path} is not valid JSON: {e}") from None
        allowed = {"input_cache_hit", "input_cache_miss", "output", "currency"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"pricing file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in allowed - {"currency"}:
            if key in data and (not isinstance(data[key], (int, float)) or data[key] < 0):
                raise ValueError(f"pricing file {path}: {key} must be a non-negative number (price per 1M tokens)")
        return cls(**data)

    def cost(self, hit: int, miss: int, output: int) -> dict:
        parts = {"input_cache_hit": hit * self.input_cache_hit / 1e6, "input_cache_miss": miss * self.input_cache_miss
                 / 1e6, "output": output * self.output / 1e6}
        return {"currency": self.currency, **{k: round(v, 10) for k, v in parts.items()},
                "total": round(sum(parts.values()), 10)}


class Ledger:
    """Thread-safe running totals of tokens and spend since the server started."""

    def __init__(self, pricing: Pricing):
        self.pricing = pricing
        self._lock = threading.Lock()
        self.totals = {"requests": 0, "prompt_tokens": 0, "prompt_cache_hit_tokens": 0,
                       "prompt_cache_miss_tokens": 0, "completion_tokens": 0, "cost": 0.0, "saved_by_cache": 0.0}

    def record(self, hit: int, miss: int, output: int) -> dict:
        cost = self.pricing.cost(hit, miss, output)
        with self._lock:
            t = self.totals
            t["requests"] += 1
            t["prompt_tokens"] += hit + miss
            t["prompt_cache_hit_tokens"] += hit
            t["prompt_cache_miss_tokens"] += miss
            t["completion_tokens"] += output
            t["cost"] += cost["total"]
            t["saved_by_cache"] += hit * (self.pricing.input_cache_miss - self.pricing.input_cache_hit) / 1e6
        return cost

    def summary(self) -> dict:
        with self._lock:
            totals = dict(self.totals)
        totals["cost"] = round(totals["cost"], 8)
        totals["saved_by_cache"] = round(totals["saved_by_cache"], 8)
        return {"object": "usage", "currency": self.pricing.currency, "pricing_per_million": asdict(self.pricing),
                **totals}
