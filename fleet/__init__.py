"""Maille fleet service: registry, ingest, presence and API for ESP32 sensor nodes."""

__version__ = "0.1.0"
