"""Token accounting over Anthropic's disjoint usage fields."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Usage of one or more model calls.

    Anthropic's fields are disjoint: ``input_tokens`` excludes cache reads and cache writes, so the
    charge is their plain sum. ``cache_creation_1h_tokens`` is the part of
    ``cache_creation_input_tokens`` written with a one-hour TTL (priced higher); it is a subset,
    never added again.
    """

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
            "cache_creation_1h_tokens",
            "steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"{name} must be a non-negative integer, got {value!r}")
        if self.cache_creation_1h_tokens > self.cache_creation_input_tokens:
            raise InvalidRequest(
                "cache_creation_1h_tokens cannot exceed cache_creation_input_tokens"
            )

    @property
    def total_tokens(self) -> int:
        """What the user is charged: every kind of token, each counted once."""
        return (
            self.input_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
            + self.output_tokens
        )

    @property
    def cache_creation_5m_tokens(self) -> int:
        return self.cache_creation_input_tokens - self.cache_creation_1h_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            cache_creation_input_tokens=(
                self.cache_creation_input_tokens + other.cache_creation_input_tokens
            ),
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_1h_tokens=self.cache_creation_1h_tokens + other.cache_creation_1h_tokens,
            steps=self.steps + other.steps,
        )
