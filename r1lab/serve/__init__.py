"""DeepSeek/OpenAI-compatible HTTP API and web chat page over the r1lab engine."""

from .app import create_app
from .pricing import Ledger, Pricing

__all__ = ["Ledger", "Pricing", "create_app"]
