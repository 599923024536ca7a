"""Typed run plumbing (edgekd.train.plumbing): TrainData over the Source protocol, RunOptions
made by the pipeline's Context, and one frozen dataclass of inputs per stage."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from edgekd.pipeline import stage_inputs
from edgekd.pipeline.context import Context
from edgekd.pipeline.epoch_log import EpochLogs
from edgekd.train.batches import InMemory
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData


def test_train_data_gives_back_what_it_was_made_from():
    x, y = torch.randn(6, 1, 2, 2), torch.arange(6) % 2
    data = TrainData.of(x, y, x[:2], y[:2])
    assert isinstance(data.train, InMemory) and isinstance(data.val, InMemory)
    assert data.train_x is x and data.train_y is y  # the same tensors: no copy, the same numbers
    assert len(data.val) == 2 and torch.equal(data.val_y, y[:2])
    # a streamed split is a source already: kept as it is, its labels read from it
    stream = SimpleNamespace(labels=y)
    streamed = TrainData.of(stream, None, x[:2], y[:2])
    assert streamed.train is stream and streamed.train_x is stream and streamed.train_y is y
    # another train split, the same val split
    fewer = data.with_train(x[:4], y[:4])
    assert len(fewer.train) == 4 and fewer.val is data.val


def test_run_options_are_frozen_and_replaced_per_call(tmp_path):
    assert DEFAULT_RUN == RunOptions(seed=0, desc="train", progress=True, checkpoint=None, resume=False, log=None)
    run = RunOptions(seed=3, progress=False)
    later = run.with_(desc="distill", checkpoint=tmp_path / "c.ckpt")
    assert (later.seed, later.progress, later.desc, later.checkpoint) == (3, False, "distill", tmp_path / "c.ckpt")
    assert run.desc == "train" and run.checkpoint is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 4


def test_the_context_makes_a_stage_s_run_options(tmp_path):
    lines = []
    ctx = Context(run_dir=tmp_path, seed=7, resume=True, progress=False, log=lines.append)
    run = ctx.run_options("teacher", ctx.path("state/teacher.ckpt"))
    assert run == RunOptions(seed=7, desc="teacher", progress=False, checkpoint=tmp_path / "state/teacher.ckpt",
                             resume=True, log=lines.append, epoch_log=EpochLogs(tmp_path, lines.append))
    assert ctx.run_options("qat").checkpoint is None


def test_stage_inputs_are_attributes_not_string_keys():
    data = TrainData.of(torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long),
                        torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long))
    inputs = stage_inputs.DistillInputs(splits=None, data=data, teachers=[])
    assert inputs.data is data
    with pytest.raises(AttributeError):
        inputs.tensors  # noqa: B018  (the old dict key is no attribute: a typo fails at once)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.teachers = [1]
    assert stage_inputs.QuantizeInputs(splits=None).data is None  # PTQ reads the splits only
