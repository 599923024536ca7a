"""Training sources that decode or normalize batch by batch, for datasets too large for one
float tensor (edgekd.train.batches has the protocol and InMemory, the small-data path).

- FileSource: image files decoded, resized, cropped and augmented per sample by torch
  DataLoader workers (torchvision.transforms.v2 for RandomResizedCrop, flip and
  TrivialAugment on PIL images; edgekd.data.preprocess for the evaluation resize and crop,
  the arithmetic `edgekd bench` repeats without torch). Workers hand back uint8 batches, and
  the one normalizer (edgekd.data.normalize) makes them float in this process.
- ArraySource: uint8 arrays held in memory (a quarter of the float tensor), normalized and
  augmented per batch exactly as InMemory does.

Every random choice draws from the generator that batches() is given: the order, and one
seed per epoch from which each sample's augmentation is seeded as (seed, its index). A
sample's augmentation therefore depends neither on the number of workers nor on which
worker decodes it, and a checkpoint of the generator resumes the data exactly.

torch is imported inside the functions: `import edgekd.data...` loads no torch.
"""

from __future__ import annotations

import re

import numpy as np

from edgekd.data.image_files import FileSplit, decode, decode_fitted
from edgekd.data.memory import release_free_memory
from edgekd.data.normalize import normalize
from edgekd.data.preprocess import to_chw
from edgekd.errors import DataError

CHUNK_BYTES = 16 << 20  # images(): at most this many bytes of float32 images per chunk (activations are larger)
PREFETCH = 2  # batches each worker decodes ahead


def sources(splits):
    """(train source, val source) of streamed splits (Splits.stream)."""
    stream, spec = splits.stream, splits.spec
    if stream.kind == "arrays":
        return ArraySource(*stream.train, spec.mean, spec.std), ArraySource(*stream.val, spec.mean, spec.std)
    common = dict(mode=stream.mode, resize=stream.resize, crop=stream.crop, policy=stream.policy, mean=spec.mean,
                  std=spec.std, workers=stream.workers)
    return FileSource(stream.train, **common), FileSource(stream.val, **common)


def chunk_size(batch_size: int, image_shape) -> int:
    """Images per chunk of images(): batch_size, fewer when their float32 would exceed CHUNK_BYTES."""
    per_image = 4 * int(np.prod(image_shape))
    return max(1, min(int(batch_size), CHUNK_BYTES // per_image))


class ArraySource:
    """uint8 NCHW arrays held as they are; each batch normalized (and augmented) when drawn."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std):
        import torch

        self.x, self.mean, self.std = x, mean, std
        self.labels = torch.from_numpy(np.asarray(y, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        import torch

        return torch.from_numpy(normalize(self.x[key], self.mean, self.std))

    def take(self, index) -> ArraySource:
        """The samples at `index` (the labeled ones, say) as a source of their own."""
        index = np.asarray(index, dtype=np.int64)
        return ArraySource(self.x[index], self.labels.numpy()[index], self.mean, self.std)

    def batches(self, batch_size: int, generator, augment: bool):
        import torch

        from edgekd.train.augment import augment_batch

        order = torch.randperm(len(self.x), generator=generator)
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            if len(index) < 2:  # batch norm cannot train on one sample
                continue
            images = self[index.numpy()]
            if augment:
                images = augment_batch(images, generator)
            yield images, self.labels[index], index

    def images(self, batch_size: int = 1024):
        step = chunk_size(batch_size, self.x.shape[1:])
        for i in range(0, len(self.x), step):
            yield self[i : i + step]


class FileImages:
    """The map-style dataset the DataLoader workers read: key (index, seed, augment) -> uint8
    (C, H, W) tensor. Evaluation: edgekd.data.preprocess's resize and center crop. Training:
    RandomResizedCrop to the crop, horizontal flip, and TrivialAugment with policy
    'trivialaugment', drawn from torch's RNG seeded with (seed, index)."""

    def __init__(self, files: list, mode: str, resize: int | None, crop: tuple, policy: str | None):
        self.files, self.mode, self.resize, self.crop, self.policy = files, mode, resize, tuple(crop), policy
        self._train = None  # built in the process that uses it

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        import torch

        index, seed, augment = key
        if not augment:
            return torch.from_numpy(decode_fitted(self.files[index], self.mode, self.resize, self.crop))
        image = decode(self.files[index], self.mode, self.resize)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG (dropout, the checkpoint) stays as it was
            torch.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63 - 1))
            image = self.train_transform()(image)
        return torch.from_numpy(to_chw(image))

    def train_transform(self):
        if self._train is None:
            from torchvision.transforms import v2

            steps = [v2.RandomResizedCrop(list(self.crop), antialias=True), v2.RandomHorizontalFlip()]
            if self.policy == "trivialaugment":
                steps.append(v2.TrivialAugmentWide())
            self._train = v2.Compose(steps)
        return self._train


class FileSource:
    """Image files as a training source: batches decoded by `workers` DataLoader processes
    (0: in this process), normalized here."""

    def __init__(self, split: FileSplit, *, mode: str, resize: int | None, crop: tuple, policy: str | None,
                 mean, std, workers: int):
        import torch

        self.dataset = FileImages(split.files, mode, resize, crop, policy)
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        self.mean, self.std, self.workers = mean, std, int(workers)
        self.shape = (1 if mode == "L" else 3, *crop)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        """Images at `key` (a slice or an index array), un-augmented and normalized, as one tensor."""
        positions = np.arange(len(self))[key]
        if np.ndim(positions) == 0:
            return self[[int(positions)]][0]
        keys = [(int(i), 0, False) for i in positions]
        if not keys:
            import torch

            return torch.zeros((0, *self.shape))
        return self._float(next(iter(self._load([keys]))))

    def batches(self, batch_size: int, generator, augment: bool):
        import torch

        order = torch.randperm(len(self), generator=generator)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))  # the epoch's augmentation seed
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        groups = [g for g in groups if len(g) >= 2]  # batch norm cannot train on one sample
        keys = [[(int(j), seed, bool(augment)) for j in g] for g in groups]
        for images, index in zip(self._load(keys), groups):
            yield self._float(images), self.labels[index], index

    def images(self, batch_size: int = 1024):
        """Every image once, in order, un-augmented (predictions, accuracy), in chunks of bounded size."""
        step = chunk_size(batch_size, self.shape)
        keys = [[(j, 0, False) for j in range(i, min(i + step, len(self)))] for i in range(0, len(self), step)]
        for images in self._load(keys):
            yield self._float(images)

    def _float(self, images):
        import torch

        return torch.from_numpy(normalize(images.numpy(), self.mean, self.std))

    def _load(self, batches: list):
        """uint8 batches of the dataset's keys, in order."""
        import torch

        if self.workers == 0 or len(batches) <= 1:
            for keys in batches:
                yield torch.stack([self.dataset[k] for k in keys])
            return
        from torch.utils.data import DataLoader

        release_free_memory()  # the workers fork now: they count what this process holds
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=min(self.workers, len(batches)),
                            collate_fn=torch.stack, prefetch_factor=PREFETCH, persistent_workers=False)
        try:
            yield from loader
        except Exception as exc:  # a worker's error arrives re-raised with a traceback as its message
            converted = worker_error(exc)
            if converted is exc:
                raise
            raise converted from None


def worker_error(exc: Exception) -> Exception:
    """A worker's DataError (a file that became unreadable since the check) as its own one line."""
    text = str(exc)
    if not isinstance(exc, DataError) or "\n" not in text:
        return exc
    found = re.findall(r"DataError: (.+)", text)
    return DataError(found[-1].strip() if found else text.strip().splitlines()[-1])
