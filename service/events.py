"""Job events through Redis: a stream per job (status changes and progress reports, in order,
each with a stream id that doubles as the SSE event id), and a cancellation flag.

A stream, unlike pub/sub, keeps what was said while nobody listened: a client that connects
late or reconnects (``Last-Event-ID``) gets every event from where it stopped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

log = logging.getLogger(__name__)


def events_key(job_id: str) -> str:
    return f"nerfsim:events:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"nerfsim:cancel:{job_id}"


def publish(connection: redis.Redis, job_id: str, event: str, data: dict[str, Any], max_length: int = 10_000) -> str | None:
    """Append an event (``status`` or ``progress``) to the job's stream; returns its id. A Redis
    outage loses the event but not the job (its record keeps the latest state)."""
    try:
        event_id = connection.xadd(events_key(job_id), {"event": event, "data": json.dumps(data, default=str)},
                                   maxlen=max_length, approximate=True)
    except redis.RedisError as error:
        log.warning("could not publish a job event", extra={"job_id": job_id, "event": event, "error": str(error)})
        return None
    return event_id.decode() if isinstance(event_id, bytes) else event_id


def decode(entry: dict) -> tuple[str, dict[str, Any]]:
    fields = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
              for k, v in entry.items()}
    return fields["event"], json.loads(fields["data"])
