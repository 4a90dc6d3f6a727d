"""Settings of the integrations (`MAILLE_INTEGRATIONS__…`), apart so fleet.settings can hold them
without importing the MQTT side."""

from __future__ import annotations

from pydantic import BaseModel, Field


class IntegrationSettings(BaseModel):
    enabled: bool = True  # site topics and availability (and discovery, unless hass is false)
    hass: bool = True  # Home Assistant discovery documents
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # How often the registry is read again (rooms, names, firmware, retirements, online/offline);
    # a device or channel the republisher does not know yet triggers a read at once (at most 1/s).
    interval_s: float = Field(10.0, gt=0)
