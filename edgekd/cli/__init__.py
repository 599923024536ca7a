"""The `edgekd` command: compress, export, bench, list.

Each command is a thin layer (cli/<command>.py): parse the flags, call the Python API
(edgekd.api), print. group.py turns every error into one line and its exit code.
"""

from edgekd.cli.bench import bench
from edgekd.cli.compress import compress
from edgekd.cli.export import export
from edgekd.cli.group import main
from edgekd.cli.list import list_registries

for _command in (compress, export, bench, list_registries):
    main.add_command(_command)

__all__ = ["main"]
