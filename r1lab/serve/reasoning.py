"""Split a completion into `reasoning_content` and `content`, whole or as a stream.

The generation prompt ends with `<think>\\n`, so a completion is `reasoning </think> answer`. Without a closing
`</think>` (the model ran out of tokens while thinking) everything is reasoning. While streaming, text that could
be the start of `</think>` or of a stop string is held back until the next update decides it.
"""

from __future__ import annotations

END_THINK = "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """
    >>> split_reasoning("7 * 6 = 42\\n</think>\\nAnswer: 42")
    ('7 * 6 = 42', 'Answer: 42')
    >>> split_reasoning("still thinking")
    ('still thinking', '')
    """
    at = text.find(END_THINK)
    if at < 0:
        return text.strip(), ""
    return text[:at].strip(), text[at + len(END_THINK):].strip()


def _held_back(text: str, markers: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for size in range(1, len(marker)):
            if text.endswith(marker[:size]):
                longest = max(longest, size)
    return longest


class StreamSplitter:
    """Turns cumulative completion text into (reasoning delta, content delta) pairs."""

    def __init__(self, stops: list[str] | None = None):
        self.stops = stops or []
        self.sent_reasoning = 0
        self.sent_content = 0

    def update(self, text: str, final: bool) -> tuple[str, str]:
        at = text.find(END_THINK)
        if at < 0:
            reasoning, content = text, ""
            hold = 0 if final else _held_back(text, [END_THINK, *self.stops])
            reasoning = reasoning[: len(reasoning) - hold]
        else:
            reasoning = text[:at]
            content = text[at + len(END_THINK):].lstrip("\n")
            hold = 0 if final else _held_back(content, self.stops)
            content = content[: len(content) - hold]
        r_delta = reasoning[self.sent_reasoning:] if len(reasoning) > self.sent_reasoning else ""
        c_delta = content[self.sent_content:] if len(content) > self.sent_content else ""
        self.sent_reasoning = max(self.sent_reasoning, len(reasoning))
        self.sent_content = max(self.sent_content, len(content))
        return r_delta, c_delta
