"""Students shaped for the device (issue 27): the edgenet family's search space (space.py),
latency tables (table.py, timing.py: torch-free, they run on the device), the search
itself (select.py) and its recipe section (config.py)."""
