# Maille node application: runs unchanged on the ESP32, the MicroPython unix port and CPython.
VERSION = "0.1.0"
