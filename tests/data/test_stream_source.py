"""The streaming sources (edgekd.data.stream) follow the training loop's source protocol:
every random choice comes from the generator batches() is given (the same seed gives the
same batches whatever the number of workers, and a restored generator resumes exactly), the
global RNG is left alone, and images() gives the in-memory val images' exact floats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.data.stream import ArraySource, FileSource, sources, worker_error
from edgekd.errors import DataError
from edgekd.train.batches import InMemory
from edgekd.train.tensors import to_tensor


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    from imagefiles import write_folder

    folder = write_folder(tmp_path_factory.mktemp("stream") / "f", per_class=6, test_per_class=1)
    return load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=16, calib_size=4, workers=0,
                                  eval_size=100), seed=0)


def epoch(source, seed: int, augment: bool = True, batch_size: int = 5) -> list:
    generator = torch.Generator().manual_seed(seed)
    return list(source.batches(batch_size, generator, augment))


def with_workers(splits, workers: int, policy=None) -> FileSource:
    s = splits.stream
    return FileSource(s.train, mode=s.mode, resize=s.resize, crop=s.crop, policy=policy, mean=splits.spec.mean,
                      std=splits.spec.std, workers=workers)


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_same_seed_same_batches_whatever_the_workers(streamed):
    one = epoch(with_workers(streamed, 0), seed=7)
    assert same(one, epoch(with_workers(streamed, 0), seed=7))
    assert same(one, epoch(with_workers(streamed, 2), seed=7))  # per-sample seeds: not the worker's
    assert not same(one, epoch(with_workers(streamed, 0), seed=8))
    images, labels, index = one[0]
    assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16)
    assert torch.equal(labels, with_workers(streamed, 0).labels[index])
    assert sum(len(b[2]) for b in one) == len(streamed.train_y)  # no batch of one sample here


def test_a_restored_generator_resumes_the_data_exactly(streamed):
    source = with_workers(streamed, 0)
    generator = torch.Generator().manual_seed(3)
    list(source.batches(4, generator, True))  # epoch 1
    saved = generator.get_state()
    second = list(source.batches(4, generator, True))
    resumed = torch.Generator()
    resumed.set_state(saved)
    assert same(second, list(source.batches(4, resumed, True)))


def test_the_global_rng_is_left_alone(streamed):
    source = with_workers(streamed, 0, policy="trivialaugment")
    torch.manual_seed(11)
    state = torch.get_rng_state()
    epoch(source, seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_images_are_the_in_memory_val_set_exactly(streamed):
    train, val = sources(streamed)
    assert len(val) == len(streamed.val_y) and torch.equal(val.labels, torch.from_numpy(streamed.val_y))
    expected = to_tensor(streamed.val_x, streamed.spec.mean, streamed.spec.std)
    assert torch.equal(torch.cat(list(val.images(batch_size=2))), expected)
    assert torch.equal(val[:2], expected[:2]) and torch.equal(val[1], expected[1])
    assert torch.equal(train[np.arange(2)], train[:2])
    plain = epoch(train, seed=5, augment=False)
    for images, _, index in plain:  # without augmentation: the evaluation images
        assert torch.equal(images, train[index.numpy()])


def test_array_source_batches_like_in_memory():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (23, 1, 6, 6), dtype=np.uint8), np.arange(23) % 3
    arrays = ArraySource(x, y, (0.4,), (0.2,))
    memory = InMemory(to_tensor(x, (0.4,), (0.2,)), torch.from_numpy(y.astype(np.int64)))
    for augment in (False, True):
        assert same(epoch(arrays, 4, augment), epoch(memory, 4, augment))
    assert torch.equal(torch.cat(list(arrays.images(4))), memory.x)


def test_a_worker_data_error_becomes_one_line():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File ...\nedgekd.errors.DataError: cannot decode image /x.png (broken)")
    assert str(worker_error(wrapped)) == "cannot decode image /x.png (broken)"
    other = ValueError("x")
    assert worker_error(other) is other


def test_a_file_broken_after_the_check_is_a_data_error(streamed, tmp_path):
    s = streamed.stream
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    from edgekd.data.image_files import FileSplit

    source = FileSource(FileSplit([broken] * 4, np.zeros(4, dtype=np.int64)), mode=s.mode, resize=s.resize,
                        crop=s.crop, policy=None, mean=streamed.spec.mean, std=streamed.spec.std, workers=2)
    with pytest.raises(DataError) as info:
        list(source.images(batch_size=1))
    assert "broken.png" in str(info.value) and "\n" not in str(info.value)
