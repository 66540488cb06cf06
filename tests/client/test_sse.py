"""The SDK's event-stream parser: however the bytes are split into chunks (inside a line, a
CRLF, a UTF-8 character), the events come out whole and the same."""

from __future__ import annotations

import random

from nerfsim_client import Event
from nerfsim_client._core import SSEDecoder

STREAM = (
    ": keep-alive\r\n\r\n"
    "event: status\r\nid: 1-0\r\ndata: {\"status\": \"queued\"}\r\n\r\n"
    "event: progress\nid: 2-0\ndata: {\"stage\": \"outer\",\n"
    "data:  \"message\": \"zoom ×2 — ok\"}\n\n"
    "retry: 5000\n"
    "data: plain text\r\r"
    "event: status\rid: 3-0\rdata: {\"status\": \"succeeded\"}\r\r"
).encode()
EXPECTED = [
    Event("status", {"status": "queued"}, "1-0"),
    Event("progress", {"stage": "outer", "message": "zoom ×2 — ok"}, "2-0"),
    Event("message", {"text": "plain text"}, "2-0"),
    Event("status", {"status": "succeeded"}, "3-0"),
]


def decode(chunks: list[bytes]) -> list[Event]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_events_are_the_same_however_the_stream_is_split() -> None:
    assert decode([STREAM]) == EXPECTED
    assert decode([STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(STREAM)), 12))
        assert decode([STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]) == EXPECTED
    assert EXPECTED[-1].is_final and not EXPECTED[1].is_final


def test_an_unfinished_event_is_not_emitted() -> None:
    assert decode([b"event: status\ndata: {\"status\": \"running\"}\n"]) == []
