"""The request record every part of the scheduler shares: traces, policies, simulator, vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Request:
    """One LLM request as a trace records it.

    ``arrival`` is in seconds from the start of the trace. ``prompt`` and/or
    ``prompt_token_ids`` carry the input; ``prompt_tokens`` is its length in tokens.
    ``output_tokens`` is the length the serving model produced, when known (replays force
    it with ``ignore_eos``); ``None`` for a live request.
    """

    id: str
    arrival: float = 0.0
    prompt: str | None = None
    prompt_tokens: int = 0
    output_tokens: int | None = None
    prompt_token_ids: tuple[int, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a request needs a non-empty id")
        if self.arrival < 0:
            raise ValueError(f"request {self.id!r}: arrival {self.arrival} is negative")
        if self.prompt_tokens < 0:
            raise ValueError(f"request {self.id!r}: prompt_tokens {self.prompt_tokens} < 0")
        if self.output_tokens is not None and self.output_tokens < 1:
            raise ValueError(
                f"request {self.id!r}: output_tokens {self.output_tokens} must be >= 1 "
                f"(or None when unknown)"
            )

    def at(self, arrival: float) -> Request:
        """The same request arriving at ``arrival`` seconds."""
        return replace(self, arrival=float(arrival))
