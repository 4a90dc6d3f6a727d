"""Site-scoped topics: where the fleet republishes readings so third parties never read device topics.

    maille/sites/<site>/<room>/<metric>                    the room's newest reading (retained)
    maille/sites/<site>/<room>/<metric>/<device>           that device's newest reading (retained)
    maille/sites/<site>/_devices/availability/<device>     `online` or `offline` (retained)

`<site>` is the site slug; `<room>` is the room's name made a topic segment (`segment`), or
`<building>-<floor>-<name>` for rooms whose name another room of the site shares. A device without a
room publishes only its own topics, under `_unplaced`. Payload: {"value", "unit", "ts", "device"}
(docs/contract.md, docs/schemas/site_value.schema.json).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ROOT = "maille/sites"
UNPLACED = "_unplaced"  # segments made by `segment` never start with "_", so no room can be named so
AVAILABILITY = "_devices/availability"
ONLINE, OFFLINE = "online", "offline"


def segment(name: str) -> str:
    """A name as one topic level: ASCII a-z, 0-9 and '-', so never `+`, `#`, `/` nor a leading `_`
    or `$` ("Salle 2.14" → "salle-2-14", "Réfectoire" → "refectoire"); "" when nothing is left."""
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")


@dataclass(frozen=True)
class RoomName:
    """A room as the registry names it, to choose its topic segment among the site's rooms."""

    id: int
    site: str
    building: str
    floor: str
    name: str


def room_segments(rooms: Iterable[RoomName]) -> dict[int, str]:
    """Room id → topic segment: the name alone where it is unique in its site, else qualified by
    building and floor; `room-<id>` when the name has no usable character."""
    rooms = list(rooms)
    taken = Counter((r.site, segment(r.name)) for r in rooms)
    out = {}
    for r in rooms:
        short = segment(r.name)
        if not short:
            out[r.id] = f"room-{r.id}"
        elif taken[(r.site, short)] == 1:
            out[r.id] = short
        else:
            out[r.id] = segment(f"{r.building}-{r.floor}-{r.name}") or f"room-{r.id}"
    return out


@dataclass(frozen=True)
class Placement:
    """Where a device's readings go: its site slug and room segment (None: no room)."""

    site: str
    room: str | None

    def room_topic(self, metric: str) -> str | None:
        return None if self.room is None else f"{ROOT}/{self.site}/{self.room}/{metric}"

    def device_topic(self, metric: str, device_id: str) -> str:
        return f"{ROOT}/{self.site}/{self.room or UNPLACED}/{metric}/{device_id}"

    def availability_topic(self, device_id: str) -> str:
        return availability_topic(self.site, device_id)


def availability_topic(site: str, device_id: str) -> str:
    return f"{ROOT}/{site}/{AVAILABILITY}/{device_id}"


def reader_acl(
    sites: Sequence[str] | None, metrics: Sequence[str] | None, discovery_prefix: str
) -> list[str]:
    """The topic filters a token's broker account may read: its sites' topics (every metric, or the
    chosen ones and the availability topics) and, with every metric, its sites' discovery documents.
    `sites` None: every site."""
    site_levels = ["+"] if sites is None else list(sites)
    out = []
    for site in site_levels:
        if metrics is None:
            out += [f"{ROOT}/{site}/#", f"{discovery_prefix}/sensor/{site}/#"]
            continue
        for metric in metrics:
            out += [f"{ROOT}/{site}/+/{metric}", f"{ROOT}/{site}/+/{metric}/+"]
        out.append(f"{ROOT}/{site}/{AVAILABILITY}/+")
    return out
