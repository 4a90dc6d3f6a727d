"""The technician's bench: board files, node filesystem images, flashing, consoles, labels.

boards (board files), tree (the node's files), image (compiled app, LittleFS and merged images),
flash (`provision_board`: esptool session, mpremote push, sim:DIR), serial_log (console diagnosis),
label (QR stickers), virtual (virtual boards). See docs/technicians.md.
"""
