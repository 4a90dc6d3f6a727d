"""The live stream: ingest hands each committed batch's new readings to the hub, which fans them out
to the Server-Sent Events subscribers whose filter they match, and gives the whole batch to its
in-process consumers (the site-topic republisher). A slow subscriber loses events (and they are
counted) rather than holding back ingest; a consumer must be as quick."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

QUEUE = 1000
KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class Event:
    device_id: str
    site_id: int
    data: dict


@dataclass(frozen=True)
class Filter:
    device_id: str | None = None
    site_ids: frozenset[int] | None = None  # None: every site
    metrics: frozenset[str] | None = None  # None: every metric

    def matches(self, event: Event) -> bool:
        return (
            (self.device_id is None or event.device_id == self.device_id)
            and (self.site_ids is None or event.site_id in self.site_ids)
            and (self.metrics is None or event.data["name"] in self.metrics)
        )


@dataclass
class Hub:
    subscribers: dict[asyncio.Queue, Filter] = field(default_factory=dict)
    consumers: list[Callable[[list[Event]], None]] = field(default_factory=list)
    dropped: int = 0

    def publish(self, events: list[Event]) -> None:
        """Called on the event loop that owns the subscribers' queues."""
        for consume in self.consumers:
            consume(events)
        for queue, wanted in self.subscribers.items():
            for event in events:
                if not wanted.matches(event):
                    continue
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self.dropped += 1

    async def sse(self, wanted: Filter, keepalive: float = KEEPALIVE_S) -> AsyncIterator[str]:
        """`reading` events as text/event-stream, with a comment line as keep-alive."""
        queue: asyncio.Queue = asyncio.Queue(QUEUE)
        self.subscribers[queue] = wanted
        try:
            yield ": maille stream\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: reading\ndata: {json.dumps(event.data)}\n\n"
        finally:
            del self.subscribers[queue]
