"""pyserial URL handler: `fakeesp://NAME` is the fake board registered as NAME (see fakeesp.py)."""

from tests.provisioning.fakeesp import FakeSerial as Serial  # noqa: F401
