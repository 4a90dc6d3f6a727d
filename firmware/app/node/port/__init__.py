# The only place that knows which runtime we are on; everything else imports `port` from here.
import sys

if sys.platform == "esp32":
    from node.port import esp32 as port  # noqa: F401
else:
    from node.port import host as port  # noqa: F401
