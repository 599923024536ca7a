"""Latency tables (issue 27): written by `edgekd bench CANDIDATES_DIR --latency-table` with
onnxruntime and numpy only, read back for the same candidates, opset and input size, and
refused (one line, exit 2) for anything else."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from search_kit import OPSET, TINY_SPACE, hand_table

from edgekd.errors import ConfigError
from edgekd.search.config import BLOCKS
from edgekd.search.space import candidate_id, family_space
from edgekd.search.table import load_table

REPO = Path(__file__).resolve().parents[2]


def _ids(manifest):
    return [e["id"] for e in manifest["candidates"]]


def test_id_is_a_digest_of_what_is_timed():
    c = TINY_SPACE[0]
    one = candidate_id(c["arch"], c["arch_args"], (1, 8, 8), OPSET)
    assert one == candidate_id(c["arch"], dict(reversed(list(c["arch_args"].items()))), [1, 8, 8], OPSET)
    assert one != candidate_id(c["arch"], c["arch_args"], (1, 8, 8), OPSET + 1)
    assert one != candidate_id(c["arch"], c["arch_args"], (1, 16, 16), OPSET)
    assert one != candidate_id(c["arch"], {**c["arch_args"], "stem": 32}, (1, 8, 8), OPSET)
    wider = family_space(1)
    assert len({json.dumps(x, sort_keys=True) for x in family_space(0) + wider}) == len(family_space(0)) + len(wider)


def test_counts_name_the_budget_model_apart_from_the_candidates():
    from edgekd.search.space import budget_model, count_in_words

    assert count_in_words(TINY_SPACE) == f"{len(TINY_SPACE)} candidates"
    assert count_in_words([*TINY_SPACE, budget_model("resnet8")]) == \
        f"{len(TINY_SPACE)} candidates and the budget model (resnet8)"


def test_every_candidate_of_the_space_has_its_own_name():
    # the name is what logs, the report and the plot show: two candidates never read alike
    from edgekd.search.space import describe

    for level in range(3):
        space = family_space(level, BLOCKS)
        names = [describe(c) for c in space]
        assert len(set(names)) == len(names) == len({json.dumps(c, sort_keys=True) for c in space})
    # plain and rep students are in the space when named, and only then, with the same shapes
    for block in ("plain", "rep"):
        named = [c for c in family_space(0, BLOCKS) if c["arch_args"]["block"] == block]
        assert named and not any(c["arch_args"]["block"] == block for c in family_space(0))
        assert all(c in family_space(0, [block]) for c in named)
    shapes = {block: [{**c["arch_args"], "block": None} for c in family_space(0, [block])] for block in ("plain", "rep")}
    assert shapes["plain"] == shapes["rep"]
    assert describe({"arch": "edgenet", "arch_args": {"stem": 48, "stem_stride": 2, "block": "basic",
                                                      "stages": [[1, 48, 1], [1, 96, 2]]}}) == \
        "edgenet basic stem48/2 48x1-96x1/2"
    assert describe({"arch": "resnet8", "arch_args": {}}) == "resnet8"


def test_bench_writes_a_table_torch_free(candidates_folder, tmp_path):
    folder, manifest, *_ = candidates_folder
    out = tmp_path / "table.json"
    # the device install: torch (and PyTorch-side edgekd) cannot be imported in this process
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgekd.cli import main\n"
            f"sys.argv = ['edgekd', 'bench', {str(folder)!r}, '--latency-table', {str(out)!r}, '--threads', '1']\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "latency table of 3 candidates written" in done.stdout
    table = load_table(out, ids=_ids(manifest), opset=OPSET, input_shape=(1, 8, 8))
    assert [r["id"] for r in table["candidates"]] == _ids(manifest)
    for row in table["candidates"]:
        assert 0 < row["int8_p50_ms"] <= row["int8_p90_ms"] and row["reference_p50_ms"] > 0
    assert (table["provider"], table["threads"], table["batch"], table["input_size"], table["in_channels"]) == \
        ("cpu", 1, 1, [8, 8], 1)
    assert table["machine"]["onnxruntime"]


def _write(tmp_path, table):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    return path


def test_round_trip(candidates_folder, tmp_path):
    _, manifest, *_ = candidates_folder
    table = hand_table(manifest, [0.1, 0.2, 0.3])
    assert load_table(_write(tmp_path, table), ids=_ids(manifest), opset=OPSET, input_shape=(1, 8, 8)) == table


@pytest.mark.parametrize("change, reason", [
    (dict(opset=13), "was made for opset 13, this run exports opset 17"),
    (dict(input_shape=[1, 28, 28]), "was made for 1x28x28 inputs, this run's are 1x8x8"),
    (dict(drop=1), "was made for other candidates: 1 of this run's 3 are not in it"),
    (dict(schema="edgekd.bench/1"), "is not a edgekd.latency-table/1 file"),
])
def test_refused_with_the_reason(candidates_folder, tmp_path, change, reason):
    _, manifest, *_ = candidates_folder
    table = hand_table(manifest, [0.1, 0.2, 0.3], opset=change.get("opset", OPSET),
                       input_shape=change.get("input_shape"))
    if "drop" in change:
        table["candidates"].pop(change["drop"])
    if "schema" in change:
        table["schema"] = change["schema"]
    with pytest.raises(ConfigError) as info:
        load_table(_write(tmp_path, table), ids=_ids(manifest), opset=OPSET, input_shape=(1, 8, 8))
    assert reason in str(info.value) and "edgekd bench CANDIDATES_DIR --latency-table" in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_bench_refuses_a_folder_without_manifest(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    result = CliRunner().invoke(main, ["bench", str(tmp_path), "--latency-table", str(tmp_path.parent / "x.json")])
    assert result.exit_code == 2 and "candidates manifest" in result.output


def test_search_modules_load_no_torch():
    code = ("import sys\n"
            "import edgekd.search.table, edgekd.search.timing, edgekd.search.space, edgekd.search.config\n"
            "import edgekd.search.select, edgekd.search.stage, edgekd.search.report\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
