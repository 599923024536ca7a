"""Memory is estimated before it is used (issue 25, class 4).

The budget honours cgroup v1 / v2 limits and RLIMIT_AS, not only the host's MemAvailable;
resize sides, the export's parity batches and the teacher-logit cache are estimated before
they are allocated, and refused over the budget with one line (exit 2) naming the estimate,
the budget and the setting to change; image decoding threads are admitted by the bytes they
hold, not by the CPU count.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.errors import ConfigError, DataError

MiB = 1 << 20


# -- the budget: cgroup v2, cgroup v1, RLIMIT_AS, the operator's limit -------------------------------


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """Point the budget's /proc files at fakes: a host with 64 GiB available and no limit."""
    from edgekd.io import membudget

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(f"MemTotal: {128 << 20} kB\nMemAvailable: {64 << 20} kB\n")
    (proc / "status").write_text("Name: python\nVmSize:\t  1024 kB\n")
    (proc / "cgroup").write_text("0::/\n")
    (proc / "mountinfo").write_text("")
    for name, file in (("MEMINFO", "meminfo"), ("SELF_STATUS", "status"), ("SELF_CGROUP", "cgroup"),
                       ("MOUNTINFO", "mountinfo")):
        monkeypatch.setattr(membudget, name, str(proc / file))
    monkeypatch.delenv(membudget.ENV_LIMIT, raising=False)
    return proc


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_cgroup_v2_limit_of_the_process_and_its_parents(fake_proc, tmp_path):
    from edgekd.io import membudget

    root = tmp_path / "sys fs cgroup"  # a space: mountinfo writes it as \040
    escaped = str(root).replace(" ", "\\040")
    (fake_proc / "mountinfo").write_text(
        "25 1 0:22 / /proc rw - proc proc rw\n"
        f"30 25 0:26 / {escaped} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    (fake_proc / "cgroup").write_text("0::/jobs/job1\n")
    # the job may use 1 GiB and uses 300 MiB, 100 MiB of it page cache the kernel drops first
    _write(root / "jobs" / "job1", memory_max=str(1 << 30), memory_current=str(300 * MiB),
           memory_stat=f"anon {200 * MiB}\ninactive_file {100 * MiB}\n")
    _write(root / "jobs", memory_max="max", memory_current=str(900 * MiB))
    assert membudget.cgroup_headroom() == {"cgroup v2": (1 << 30) - 200 * MiB}
    assert membudget.available_memory() == (1 << 30) - 200 * MiB
    # a parent's tighter limit binds the child too
    _write(root / "jobs", memory_max=str(1 << 30), memory_current=str(900 * MiB))
    assert membudget.available_memory() == (1 << 30) - 900 * MiB
    assert membudget.memory_budget() == ((1 << 30) - 900 * MiB) // 2
    # every read of the memory available goes through it (bench's feed limit, the ONNX size check)
    from edgekd.runtime.machine import available_memory_bytes

    assert available_memory_bytes() == (1 << 30) - 900 * MiB


def test_cgroup_v1_limit_and_a_container_view(fake_proc, tmp_path):
    from edgekd.io import membudget

    root = tmp_path / "memory"
    (fake_proc / "mountinfo").write_text(
        f"31 25 0:28 / {tmp_path}/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"35 25 0:32 / {root} rw,relatime - cgroup cgroup rw,memory\n")
    (fake_proc / "cgroup").write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    _write(root / "docker" / "abc", memory_limit_in_bytes=str(512 * MiB), memory_usage_in_bytes=str(200 * MiB),
           memory_stat=f"cache {50 * MiB}\ntotal_inactive_file {40 * MiB}\n")
    _write(root, memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes=str(5 << 30))  # no limit
    assert membudget.cgroup_headroom() == {"cgroup v1": 512 * MiB - 160 * MiB}
    assert membudget.available_memory() == 352 * MiB
    # in a container the process's path names the host's hierarchy; the mount shows only its own cgroup
    (fake_proc / "cgroup").write_text("4:memory:/host/slice/container\n")
    assert membudget.available_memory() is not None and membudget.cgroup_headroom() == {}
    _write(root, memory_limit_in_bytes=str(256 * MiB), memory_usage_in_bytes=str(56 * MiB))
    assert membudget.available_memory() == 200 * MiB


def test_rlimit_as_counts_the_address_space_already_taken(fake_proc, monkeypatch):
    import resource

    from edgekd.io import membudget

    monkeypatch.setattr(resource, "getrlimit", lambda which: (3 << 30, resource.RLIM_INFINITY))
    (fake_proc / "status").write_text(f"Name: python\nVmSize:\t{1 << 20} kB\n")  # 1 GiB mapped already
    assert membudget.address_space_headroom() == 2 << 30
    assert membudget.memory_sources()["RLIMIT_AS (ulimit -v)"] == 2 << 30
    assert membudget.available_memory() == 2 << 30
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert membudget.address_space_headroom() is None and membudget.available_memory() == 64 << 30


def test_a_real_ulimit_v_lowers_the_memory_available():
    """RLIMIT_AS set in a child process (as `ulimit -v` does): the memory that every check reads
    drops below the limit, whatever the host's MemAvailable says."""
    code = ("import resource, sys\n"
            "if sys.argv[1] != 'unlimited':\n"
            "    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
            "from edgekd.runtime.machine import available_memory_bytes\n"
            "print(available_memory_bytes())\n")

    def available(limit: str) -> int:
        return int(subprocess.run([sys.executable, "-c", code, limit], capture_output=True, text=True, timeout=60,
                                  check=True).stdout)

    limit = 1536 * MiB
    assert available(str(limit)) < limit < available("unlimited")


def test_the_operators_limit_only_lowers_the_budget(fake_proc, monkeypatch):
    from edgekd.io import membudget

    monkeypatch.setenv(membudget.ENV_LIMIT, "512M")
    assert membudget.available_memory() == 512 * MiB and membudget.memory_budget() == 256 * MiB
    monkeypatch.setenv(membudget.ENV_LIMIT, "1T")  # more than the machine has: the machine wins
    assert membudget.available_memory() == 64 << 30
    monkeypatch.setenv(membudget.ENV_LIMIT, "lots")
    with pytest.raises(ConfigError, match="EDGEKD_MEMORY_LIMIT"):
        membudget.available_memory()


def test_the_refusal_names_the_estimate_the_budget_its_limit_and_the_setting(fake_proc, monkeypatch):
    from edgekd.io import membudget

    monkeypatch.setenv(membudget.ENV_LIMIT, "100M")
    with pytest.raises(DataError) as refused:
        membudget.check_memory(80 * MiB, "the thing", "lower some.setting")
    line = str(refused.value)
    assert "\n" not in line
    assert "80 MiB" in line and "50 MiB" in line and "EDGEKD_MEMORY_LIMIT" in line and "lower some.setting" in line
    membudget.check_memory(40 * MiB, "the thing", "lower some.setting")


# -- resize sides -------------------------------------------------------------------------------------


def _one_line_exit_2(result):
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    return result.output


def test_a_tiny_crop_fraction_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["compress", "--out", str(out), "--no-progress", "--set", "data.image_size=16",
                                       "--set", "data.crop_fraction=0.0001"])
    line = _one_line_exit_2(result)
    assert "160,000" in line and "data.crop_fraction" in line and "memory budget" in line
    assert not out.exists() and time.perf_counter() - start < 30
    from edgekd.data.config import DataConfig

    assert DataConfig(image_size=16).resize == 18  # the default fraction is fine


def test_bench_and_export_crop_fraction_use_the_same_check():
    from edgekd.runtime.preprocessing import geometry, metadata_entries, resolve

    with pytest.raises(ConfigError, match=r"160,000 pixels.*--crop-fraction"):
        geometry(resolve({"crop_fraction": 0.0001}, {}), [1, 3, 16, 16])
    with pytest.raises(ConfigError, match="--crop-fraction"):
        metadata_entries({"crop_fraction": 0.0001}, channels=1, height=16, width=16)
    assert geometry(resolve({"crop_fraction": 0.875}, {}), [1, 3, 16, 16])[1] == 18


def test_a_long_thin_image_is_not_resized_beyond_the_budget(monkeypatch):
    """A 2 x 40,000 image whose shorter side goes to 224 would become 224 x 4,480,000."""
    from PIL import Image

    from edgekd.data.preprocess import fit_image

    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "1G")
    with pytest.raises(DataError, match="4480000x224"):
        fit_image(Image.new("L", (40_000, 2)), 224, (224, 224))


# -- the parity batches of `edgekd export --input-size` -----------------------------------------------


def _weights(path):
    import torch

    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    save_weights(build_model("tinycnn", in_channels=1, num_classes=10, width=4), path)
    return path


def test_export_at_a_huge_input_size_is_estimated_and_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "4G")  # the same on every machine (and no real 4096^2 forward)
    weights = _weights(tmp_path / "w.safetensors")
    args = ["export", "--onnx", "--weights", str(weights), "--arch", "tinycnn", "--arch-args", "{width: 4}",
            "--no-progress"]
    start = time.perf_counter()
    result = CliRunner().invoke(main, [*args, "--input-size", "4096,4096", "-o", str(tmp_path / "big.onnx")])
    line = _one_line_exit_2(result)
    assert "1x4096x4096" in line and "--input-size" in line and "memory budget of 2 GiB" in line
    assert not (tmp_path / "big.onnx").exists() and time.perf_counter() - start < 30
    # what fits is exported as before
    result = CliRunner().invoke(main, [*args, "--input-size", "64,64", "-o", str(tmp_path / "ok.onnx")])
    assert result.exit_code == 0, result.output


def test_the_forward_estimate_is_never_below_what_a_forward_holds():
    import torch

    from edgekd.models.activations import _PeakBytes, forward_bytes
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", in_channels=1, num_classes=10).eval()
    with torch.no_grad(), _PeakBytes() as seen:
        model(torch.zeros(3, 1, 96, 96))
    held = sum(seen.peak) + 3 * 96 * 96 * 4  # with the input
    estimate = forward_bytes(model, (1, 96, 96), (1, 28, 28), 3)  # measured at the data's 28x28
    assert held <= estimate <= 3 * held


def test_a_model_that_takes_only_the_export_size_is_estimated_from_its_input(monkeypatch):
    import torch

    from edgekd.onnx_export import ExportConfig, check_parity_memory

    head_fixed_to_64 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 64, 10))  # fails at 28x28
    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "6M")  # budget 3 MiB
    cfg = ExportConfig(check_batch_sizes=[1, 7])
    check_parity_memory(head_fixed_to_64, (1, 8, 8), (1, 28, 28), cfg, "lower it")
    with pytest.raises(ConfigError, match="1x64x64.*lower it"):  # 7 x 16 KiB inputs, 16x for activations, twice: 3.5 MiB
        check_parity_memory(head_fixed_to_64, (1, 64, 64), (1, 28, 28), cfg, "lower it")


# -- the decode pool: bounded by the bytes in flight, not by the CPUs ---------------------------------


def _fresh_decode_gate():
    """The decode gate re-reads the budget at most once a second: a test that changes the
    limit starts the gate afresh."""
    from edgekd.data import image_files as files

    gate = getattr(files, "DECODE_GATE", None)  # the process's one gate, as the decoders see it
    if gate is not None:
        gate.reset()


@pytest.fixture
def big_pngs(tmp_path):
    from PIL import Image

    files = []
    for i in range(8):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (512, 512), (i * 30, 0, 0)).save(path)  # 1 MiB decoded (PIL keeps RGB in 4 bytes)
        files.append(str(path))
    return files


@pytest.fixture
def concurrent_pixels(monkeypatch):
    """The most pixels PIL decoded at once, counted around every ImageFile.load (the test hook)."""
    from PIL import ImageFile

    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    original = ImageFile.ImageFile.load

    def load(image):
        if getattr(image, "_im", None) is not None:  # already decoded
            return original(image)
        pixels = image.width * image.height
        with lock:
            state["now"] += pixels
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.05)  # long enough for every thread of the pool to get here together
            return original(image)
        finally:
            with lock:
                state["now"] -= pixels

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    yield state
    _fresh_decode_gate()  # the next test's decodes read the budget without this test's limit


def test_decoding_threads_are_bounded_by_a_pixel_budget(big_pngs, concurrent_pixels, monkeypatch):
    from edgekd.data import image_files as files_module
    from edgekd.data.image_file_splits import decode_many
    from edgekd.data.image_files import scan

    monkeypatch.setattr(files_module, "CHUNK", 1)  # a pool even for 8 files
    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "6M")  # budget 3 MiB, decodes in flight 1.5 MiB: one 1 MiB image
    _fresh_decode_gate()
    out = decode_many(big_pngs, "RGB", None, (512, 512), workers=8)  # 8 threads, as on an 8-core machine
    assert out.shape == (8, 3, 512, 512) and [int(x[0, 0, 0]) for x in out] == [i * 30 for i in range(8)]
    assert concurrent_pixels["peak"] == 512 * 512
    concurrent_pixels["peak"] = 0
    found = scan(big_pngs, crop=None, workers=8)
    assert len(found.good) == 8 and concurrent_pixels["peak"] == 512 * 512
    # with room for all of them, the pool still decodes in parallel
    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "64M")
    _fresh_decode_gate()
    concurrent_pixels["peak"] = 0
    decode_many(big_pngs, "RGB", None, (512, 512), workers=8)
    assert concurrent_pixels["peak"] > 512 * 512


def test_an_image_larger_than_the_budget_is_refused_or_skipped_with_the_reason(big_pngs, concurrent_pixels,
                                                                            monkeypatch):
    from edgekd.data.image_files import decode_fitted, file_split, refuse_or_skip, scan

    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "1M")  # budget 512 KiB: one image of 1 MiB is too large
    _fresh_decode_gate()
    found = scan(big_pngs[:2], crop=None, workers=1)
    assert list(found.bad) == ["too_large"] and len(found.good) == 0
    split = file_split([(f, 0) for f in big_pngs[:2]])
    with pytest.raises(DataError, match=r"img0.png.*memory budget.*data.skip_bad"):
        refuse_or_skip(found, split, skip_bad=False, what="train")
    kept, skipped = refuse_or_skip(found, split, skip_bad=True, what="train")
    assert len(kept) == 0 and skipped == {"too_large": 2}
    with pytest.raises(DataError, match="memory budget"):
        decode_fitted(big_pngs[0], "RGB", None, (512, 512))
    assert concurrent_pixels["peak"] == 0  # refused before a pixel was decoded


# -- the teacher-logit cache ---------------------------------------------------------------------------


def test_the_logit_cache_is_estimated(monkeypatch):
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.offline import caches_logits, logit_cache_bytes

    monkeypatch.setenv("EDGEKD_MEMORY_LIMIT", "1G")  # budget 512 MiB
    assert logit_cache_bytes(1_000_000, 1000) == 8 * 10**9  # float32, twice while the batches are joined
    cached = DistillConfig(augment=False, teacher_outputs="cached")
    with pytest.raises(ConfigError, match=r"1,000,000 images x 1,000 outputs.*distill.teacher_outputs: per_batch"):
        caches_logits(cached, 1_000_000, 1000)
    assert caches_logits(cached, 10_000, 10)
    said = []
    assert not caches_logits(DistillConfig(augment=False), 1_000_000, 1000, said.append)  # auto: per batch
    assert "teacher runs at every step" in said[0]
    assert caches_logits(DistillConfig(augment=False), 10_000, 10)


def test_auto_runs_the_teacher_per_step_when_its_logits_do_not_fit(monkeypatch, make_tiny_cnn, tiny_images):
    import torch

    from edgekd.distill import offline
    from edgekd.distill.config import DistillConfig
    from edgekd.train.plumbing import RunOptions, TrainData

    g = torch.Generator().manual_seed(1)
    data = {"train_x": tiny_images(24), "train_y": torch.randint(0, 3, (24,), generator=g),
            "val_x": tiny_images(8, seed=1), "val_y": torch.randint(0, 3, (8,), generator=g)}
    cfg = DistillConfig(epochs=1, batch_size=8, lr=0.01, augment=False)
    monkeypatch.setattr(offline, "logit_cache_bytes", lambda images, outputs: 1 << 50)
    cache = {}
    offline.distill(make_tiny_cnn(seed=1), make_tiny_cnn(seed=0), TrainData.of(**data), cfg, RunOptions(progress=False),
                    teacher_cache=cache)
    assert cache == {}  # nothing cached: the teacher ran at every step


def test_a_cached_logit_cache_over_the_budget_is_refused_in_preflight(tmp_path, monkeypatch, tiny_run_inputs):
    from edgekd.distill import offline

    monkeypatch.setattr(offline, "logit_cache_bytes", lambda images, outputs: 1 << 50)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(tiny_run_inputs / "tiny.yaml"), "--out", str(out),
                                       "--no-progress", "--set", "distill.teacher_outputs=cached",
                                       "--set", "distill.augment=false"])
    line = _one_line_exit_2(result)
    assert "teacher-logit cache" in line and "distill.teacher_outputs" in line
    assert not out.exists()  # before the run directory, before the teacher trained
