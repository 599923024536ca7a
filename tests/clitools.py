"""The command line as the tests drive it: `cli(...)` runs `edgekd` in-process, `refused(...)`
asserts the project's promise for bad input: exit 2 and exactly one line, no traceback."""

from __future__ import annotations

from click.testing import CliRunner

from edgekd.cli import main

# the smallest whole run, for tests that need one: .format(data=NPZ_PATH_OR_DATASET_NAME)
TINY_RECIPE = """\
name: tiny
data: {{name: {data}, calib_size: 16}}
teacher: {{arch: tinycnn, arch_args: {{width: 4}}, epochs: 1, batch_size: 32}}
distill: {{arch: tinycnn, arch_args: {{width: 4}}, epochs: 1, batch_size: 32}}
quantize: {{max_drop: null}}
export: {{check_batch_sizes: [1, 3]}}
bench: {{warmup: 0, runs: 2, min_seconds: 0}}
"""


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, *expected: str) -> str:
    """Exit 2 and exactly one line, 'edgekd: error: ...', containing every `expected`. `result`:
    a CliRunner result or a finished subprocess (CompletedProcess)."""
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekd: error: "), output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]
