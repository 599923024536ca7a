"""edgekd.distill.baseline: the student alone trains on the labeled images, repeated to as
many optimizer steps as the distilled student's, and leaves the chain's RNG as it was."""

from __future__ import annotations

import numpy as np
import torch

from edgekd.distill.baseline import optimizer_steps, train_alone
from edgekd.distill.config import DistillConfig
from edgekd.train.labels import labeled_repeated
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData


def test_the_labeled_images_are_repeated_in_turn_to_the_train_split_s_size():
    x = torch.arange(7.0).view(7, 1, 1, 1)
    y = torch.tensor([-1, 1, -1, 0, -1, -1, 2])
    alone_x, alone_y = labeled_repeated(x, y)
    assert alone_x.flatten().tolist() == [1.0, 3.0, 6.0, 1.0, 3.0, 6.0, 1.0]
    assert alone_y.tolist() == [1, 0, 2, 1, 0, 2, 1]
    labeled = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert labeled_repeated(x, labeled)[0] is x  # full labels: the very same images


def test_a_streamed_array_source_is_repeated_too():
    from edgekd.data.stream import ArraySource

    source = ArraySource(np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1), np.array([-1, 0, -1, 1]), (0.0,), (1.0,))
    part, labels = labeled_repeated(source, source.labels)
    assert len(part) == 4 and labels.tolist() == [0, 1, 0, 1] and part.x.flatten().tolist() == [1, 3, 1, 3]


def test_optimizer_steps_skip_a_last_batch_of_one():
    assert optimizer_steps(270, 64, 3) == 3 * 5
    assert optimizer_steps(257, 64, 2) == 2 * 4  # 4 batches of 64 and one of 1, skipped (batch norm)
    assert optimizer_steps(600, 128, 1) == 5


def test_train_alone_is_the_cross_entropy_fit_and_leaves_the_global_rng(make_tiny_cnn, tiny_images):
    x, val_x = tiny_images(40, seed=0), tiny_images(9, seed=1)
    y, val_y = torch.arange(40) % 3, torch.arange(9) % 3
    cfg = DistillConfig(epochs=2, batch_size=16, augment=True)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    alone = make_tiny_cnn(seed=3)
    torch.set_rng_state(before)
    result = train_alone(alone, TrainData.of(x, y, val_x, val_y), cfg, RunOptions(seed=4, progress=False))
    assert torch.equal(torch.get_rng_state(), before)
    reference = make_tiny_cnn(seed=3)
    expected = fit(reference, cross_entropy_step(reference), TrainData.of(x, y, val_x, val_y), cfg,
                   RunOptions(seed=4, desc="distill", progress=False))
    assert [e["loss"] for e in result.epochs] == [e["loss"] for e in expected.epochs]
    for a, b in zip(alone.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
