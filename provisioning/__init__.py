"""The technician's bench: node filesystem trees, virtual boards, and (later) flashing real boards."""
