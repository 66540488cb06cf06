"""Per-key request rate limits, shared by every API replica through Redis.

The generic cell rate algorithm (GCRA): each API key may make ``rate_per_s`` requests a second
on average and ``burst`` at once. One Redis key per API key holds the "theoretical arrival
time" of its next request; a request that would move it more than ``burst`` intervals ahead
of now is refused with the time to wait. The check is one Lua script (atomic, and timed by
the Redis server's clock, so replicas with skewed clocks agree).
"""

from __future__ import annotations

import math

import redis

from service.errors import ServiceError

# TAT (microseconds) -> allowed?; on refusal the microseconds until the next allowed request.
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - interval * burst
if allowed_at > now then
    return {0, allowed_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return {1, 0}
"""


class RateLimited(ServiceError):
    """An API key over its request rate (answered with 429 and ``Retry-After``)."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    """Checks one request of an API key against its limit (``rate_per_s`` <= 0: no limit)."""

    def __init__(self, connection: redis.Redis, rate_per_s: float, burst: int) -> None:
        self.rate_per_s, self.burst = rate_per_s, max(1, burst)
        self._script = connection.register_script(_GCRA)

    def check(self, key_id: str) -> None:
        """Count a request of ``key_id``; raise :class:`RateLimited` if it is over the limit."""
        if self.rate_per_s <= 0:
            return
        interval_us = 1e6 / self.rate_per_s
        allowed, wait_us = self._script(keys=[f"nerfsim:ratelimit:{key_id}"], args=[interval_us, self.burst])
        if not allowed:
            retry_after_s = max(1, math.ceil(wait_us / 1e6))
            raise RateLimited(f"rate limit of this API key exceeded ({self.rate_per_s:g} requests/s, bursts of "
                              f"{self.burst}); retry in {retry_after_s} s", retry_after_s)
