"""`distill.arch: auto` in the pipeline: the search (edgekd.search.select) at the start of the
distill stage, the student it chose for the stages after it (and on --resume), and the
checks of preflight, before the run directory exists."""

from __future__ import annotations

import dataclasses
import json

from edgekd.io.artifacts import atomic_write_text
from edgekd.pipeline.layout import SEARCH_CANDIDATES, SEARCH_RECORD
from edgekd.search.config import AUTO

CALIB_IMAGES = 128  # a candidate is only timed: quantizing it must stay cheap (as prune.latency's)


def student_arch(cfg, distill_record: dict | None) -> tuple[str, dict]:
    """(arch, arch_args) of the distilled student: the recipe's, or with arch auto the one the
    search chose (the distill stage's record)."""
    if cfg.arch != AUTO:
        return cfg.arch, cfg.arch_args
    winner = ((distill_record or {}).get("search") or {}).get("winner")
    if not winner:
        from edgekd.errors import ConfigError

        raise ConfigError("distill.arch is auto and the distill stage recorded no chosen student: run the distill "
                          "stage again (edgekd compress --resume)")
    return winner["arch"], winner["arch_args"]


def planned_student(cfg) -> tuple[str, dict]:
    """For the checks before the run: the recipe's student, or with arch auto the largest
    candidate of the first space (what must fit in memory and build)."""
    if cfg.arch != AUTO:
        return cfg.arch, cfg.arch_args
    from edgekd.search.space import family_space

    def size(candidate):  # weights of the 3x3 convolutions, enough to order the family
        return sum(depth * width * width for depth, width, _ in candidate["arch_args"]["stages"])

    largest = max(family_space(0, cfg.search.blocks), key=size)
    return largest["arch"], largest["arch_args"]


def preflight_student(cfg, done) -> tuple[str, dict]:
    """The student preflight builds: the chosen one once the distill stage is done (--resume),
    else planned_student."""
    record = done.get("distill") if isinstance(done, dict) else None
    return student_arch(cfg, record) if record else planned_student(cfg)


def check(cfg, *, spec, opset: int) -> None:
    """preflight: the architecture of distill.search.as_fast_as builds for this data; a latency
    table given is read and checked against this run's first space (and that architecture),
    opset and input size (the search reads the same ids), before anything is trained."""
    if cfg.arch != AUTO:
        return
    from edgekd.errors import ConfigError
    from edgekd.search.space import budget_model, candidate_id, family_space

    space = family_space(0, cfg.search.blocks)
    if cfg.search.as_fast_as is not None:
        from edgekd.pipeline.context import build_arch

        try:
            build_arch(spec, cfg.search.as_fast_as, {})
        except ConfigError as exc:
            raise ConfigError(f"distill.search.as_fast_as: {exc}") from None
        space.append(budget_model(cfg.search.as_fast_as))
    if cfg.search.latency_table is None:
        return
    from edgekd.search.table import load_table

    shape = (spec.channels, spec.height, spec.width)
    ids = [candidate_id(c["arch"], c["arch_args"], shape, opset) for c in space]
    load_table(cfg.search.latency_table, ids=ids, opset=opset, input_shape=shape)


def choose_student(ctx, cfg, inputs) -> tuple:
    """The distill section with the chosen student's arch and arch_args, and the search's record
    (its candidates table). inputs: DistillInputs, with `deployed` {quant_cfg, opset}."""
    from edgekd.search.select import CandidateBuild, search_student
    from edgekd.train.tensors import to_tensor

    splits = inputs.splits
    spec = splits.spec
    if not inputs.teachers:
        from edgekd.errors import ConfigError

        raise ConfigError(f"distill.arch: auto ranks candidates by distillation from the teacher, and distill.scheme "
                          f"'{cfg.scheme}' trains without one: name a distill.arch")
    saved = ctx.path(SEARCH_RECORD)
    if ctx.resume and saved.is_file():  # the distill stage was interrupted: its checkpoint is of this student
        record = json.loads(saved.read_text(encoding="utf-8"))
        ctx.log(f"[search] resumed: {record['message']}")
        return dataclasses.replace(cfg, **record["winner"]), record
    calib = to_tensor(splits.calib_x[:CALIB_IMAGES], spec.mean, spec.std).numpy()
    build = CandidateBuild(spec, calib, opset=inputs.deployed["opset"], quant_cfg=inputs.deployed["quant_cfg"],
                           seed=ctx.seed)
    result = search_student(teacher=inputs.teachers[0], data=inputs.data, distill_cfg=cfg, cfg=cfg.search,
                            folder=ctx.path(SEARCH_CANDIDATES), build=build, log=ctx.log)
    atomic_write_text(saved, json.dumps(result.to_dict(), indent=2) + "\n")
    return dataclasses.replace(cfg, **result.winner), result.to_dict()
