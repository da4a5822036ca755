"""Named errors of review drafting; each says what went wrong and is safe to show an operator."""

from __future__ import annotations

from aftercare.errors import AftercareError


class LLMError(AftercareError):
    """The LLM could not produce a usable draft; the caller falls back to the template drafter."""

    def __init__(self, reason: str, attempts: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class LLMUnavailable(LLMError):
    """Rate limited, server error, timeout or connection error, after the SDK's own retries."""


class LLMBadOutput(LLMError):
    """The LLM answered, but not with a valid draft (invalid JSON, wrong shape, refusal, truncated),
    in every one of our bounded attempts."""
