"""Every HTTP request the fleet refuses (a 4xx answer from the API or the dashboard), counted by route
and status for `/metrics`: an operator sees refused calls and forms as ingest's rejects are seen."""

from __future__ import annotations

from collections import Counter

UNMATCHED = "unmatched"  # no route matched (404 on an unknown path)


class RefusalCounter:
    """ASGI middleware: reads the status of each response as it starts; streaming is untouched."""

    def __init__(self, app, counts: Counter) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                route = getattr(scope.get("route"), "path", UNMATCHED)  # set by routing, in place
                self.counts[(route, message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


def samples(counts: Counter) -> list[tuple[str, float]]:
    return [(f'{{route="{route}",status="{status}"}}', n) for (route, status), n in sorted(counts.items())]
