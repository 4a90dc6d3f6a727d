# boot.py: runs first on every start. Kept tiny and never updated over the air.
