"""When to try a request again, and how long to wait first."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Optional

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers worth repeating: rate limited, or a server-side failure that may pass."""
SAFE_RETRY_STATUSES = frozenset({429, 503})
"""Answers after which even a request that is not idempotent (an upload) may be repeated: the
service refused it before doing anything."""


@dataclass
class RetryPolicy:
    """Retries on 429, 5xx and broken connections, with exponential backoff and jitter.

    The wait before retry ``n`` (0-based) is drawn uniformly from ``[d/2, d]`` with
    ``d = min(backoff_max_s, backoff_base_s * 2**n)`` ("equal jitter": clients that failed
    together do not retry together, and no retry comes sooner than half the backoff). When the
    answer says ``Retry-After``, that wait is used instead (capped at ``retry_after_max_s``).
    """

    max_retries: int = 4
    """Retries after the first attempt (0: never retry)."""
    backoff_base_s: float = 0.5
    """Backoff before the first retry, before jitter."""
    backoff_max_s: float = 30.0
    """Longest backoff, before jitter."""
    retry_after_max_s: float = 300.0
    """Longest wait a ``Retry-After`` header may ask for."""
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    """Source of the jitter (pass ``random.Random(seed)`` for repeatable waits)."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"RetryPolicy.max_retries: must be >= 0, got {self.max_retries}")
        if not 0 <= self.backoff_base_s <= self.backoff_max_s:
            raise ValueError(f"RetryPolicy: need 0 <= backoff_base_s <= backoff_max_s, got "
                             f"{self.backoff_base_s} and {self.backoff_max_s}")

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max_s)
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        return self.rng.uniform(backoff / 2, backoff)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds of a ``Retry-After`` header (delay seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
