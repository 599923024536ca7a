"""Extension points edgekd.distill.scheme_registry.SCHEMES and edgekd.distill.responses.RESPONSES:
a scheme and a response loss registered from outside edgekd (a plugin module named in the
recipe) are valid `distill.scheme` / `distill.response` values, the recipe's errors list them,
and a tiny `edgekd compress` trains through both."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.distill.config import DistillConfig
from edgekd.distill.offline import distill
from edgekd.distill.responses import RESPONSES
from edgekd.distill.scheme_registry import SCHEMES, Scheme
from edgekd.errors import ConfigError
from edgekd.pipeline.stages.distill import learns_from_teacher, teacher_outputs_seen
from edgekd.recipe import Recipe
from edgekd.train.plumbing import RunOptions, TrainData

PLUGIN = "toy_distill_plugin"
# a user's module: a scheme that distills two students and keeps the better, a response loss
# (MSE between the softened outputs, plus cross-entropy) and a scheme without a teacher
PLUGIN_SOURCE = textwrap.dedent('''
    import dataclasses

    import torch
    from torch.nn import functional as F

    from edgekd.distill.responses import RESPONSES
    from edgekd.distill.scheme_registry import SCHEMES, Scheme
    from edgekd.distill.schemes import SchemeResult
    from edgekd.train.labels import labeled_cross_entropy

    CALLS = {"scheme": [], "response": []}


    @RESPONSES.register("toy-mse")
    def toy_mse(logits, teacher_probs, labels, cfg):
        CALLS["response"].append({"shape": tuple(teacher_probs.shape),
                                  "probabilities": bool(torch.allclose(teacher_probs.sum(1),
                                                                       torch.ones(len(teacher_probs))))})
        soft = F.softmax(logits / cfg.temperature, dim=1)
        return (1 - cfg.alpha) * labeled_cross_entropy(logits, labels) + cfg.alpha * F.mse_loss(soft, teacher_probs)


    @SCHEMES.register("toy-best-of-two")
    class BestOfTwo(Scheme):
        """two students distilled from the teachers; the better on val continues"""

        def train(self, run):
            CALLS["scheme"].append({"teachers": len(run.teachers), "data": type(run.data).__name__, "cfg": run.cfg})
            offline = SCHEMES.get("offline")()
            first = offline.train(run)
            other = dataclasses.replace(run, new_student=lambda seed=None: run.new_student(seed=run.ctx.seed + 7))
            second = offline.train(other)
            candidates = [first, second]
            top1 = [c.fit.best_val_top1 for c in candidates]
            best = max(range(2), key=lambda i: top1[i])
            details = {"scheme": "toy-best-of-two", "candidates_val_top1": top1, "continues": best,
                       "teachers": len(run.teachers)}
            return SchemeResult(student=candidates[best].student, fit=candidates[best].fit, details=details)


    @SCHEMES.register("toy-alone")
    class Alone(Scheme):
        """no teacher"""

        learns_from_teacher = False
''')

TINY = {
    "name": "tiny-toy-scheme",
    "seed": 1,
    "plugins": [PLUGIN],
    "data": {"name": "fashion-mnist-subset", "limit_train": 300, "limit_test": 60, "calib_size": 16},
    "teacher": {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 32, "lr": 0.01,
                "augment": False},
    "distill": {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 32, "lr": 0.01,
                "augment": False, "scheme": "toy-best-of-two", "response": "toy-mse"},
    "quantize": {"max_drop": None},
    "bench": {"warmup": 1, "runs": 3, "min_seconds": 0.0},
}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin module, importable from the working directory (as `plugins:` finds it);
    afterwards its registrations are removed and the registries are as before."""
    (tmp_path / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("toy-best-of-two", "toy-alone"):
        SCHEMES.unregister(name)
    RESPONSES.unregister("toy-mse")
    sys.modules.pop(PLUGIN, None)


def test_the_recipe_knows_the_plugins_scheme_and_response(plugin):
    recipe = Recipe.from_dict({"plugins": [PLUGIN], "distill": {"scheme": "toy-best-of-two", "response": "toy-mse"}})
    assert (recipe.distill.scheme, recipe.distill.response) == ("toy-best-of-two", "toy-mse")
    assert learns_from_teacher(recipe.distill)
    with pytest.raises(ConfigError, match=r"^unknown distill.scheme 'toy'; available: offline, online, born-again, "
                                          r"ema, toy-best-of-two, toy-alone \(in x\)$"):
        Recipe.from_dict({"distill": {"scheme": "toy"}}, source="x")
    with pytest.raises(ConfigError, match=r"^unknown distill.response 'toy'; available: hinton, dkd, toy-mse"):
        Recipe.from_dict({"distill": {"response": "toy"}})
    for field in ("scheme", "response"):  # not a name: a ConfigError, not the registry's TypeError
        with pytest.raises(ConfigError, match=rf"^unknown distill.{field} \['toy-mse'\]"):
            DistillConfig(**{field: ["toy-mse"]})


def test_a_scheme_without_a_teacher_refuses_the_teacher_keys(plugin):
    recipe = Recipe.from_dict({"plugins": [PLUGIN], "distill": {"scheme": "toy-alone"}})
    assert not learns_from_teacher(recipe.distill) and teacher_outputs_seen(recipe.distill) is None
    with pytest.raises(ConfigError, match=r"distill.terms needs the teacher, and distill.scheme 'toy-alone' trains "
                                          r"without one; remove distill.terms or use scheme offline, born-again or "
                                          r"toy-best-of-two"):
        Recipe.from_dict({"distill": {"scheme": "toy-alone", "terms": [{"kind": "rkd"}]}})
    with pytest.raises(ConfigError, match="distill.response needs the teacher, and distill.scheme 'toy-alone'"):
        Recipe.from_dict({"distill": {"scheme": "toy-alone", "response": "toy-mse"}})


def test_unregistered_they_are_unknown_again(plugin):
    Recipe.from_dict({"plugins": [PLUGIN]})
    SCHEMES.unregister("toy-best-of-two")
    RESPONSES.unregister("toy-mse")
    with pytest.raises(ConfigError, match=r"unknown distill.scheme 'toy-best-of-two'; available: offline, online, "
                                          r"born-again, ema, toy-alone \(in x\)$"):
        Recipe.from_dict({"distill": {"scheme": "toy-best-of-two"}}, source="x")
    with pytest.raises(ConfigError, match=r"unknown distill.response 'toy-mse'; available: hinton, dkd \(in x\)$"):
        Recipe.from_dict({"distill": {"response": "toy-mse"}}, source="x")


def test_compress_trains_through_the_plugins_scheme_and_response(plugin):
    (plugin / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    out = plugin / "run"
    result = CliRunner().invoke(main, ["compress", "recipe.yaml", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    calls = sys.modules[PLUGIN].CALLS
    # the scheme ran once, with the teacher stage's teacher and the recipe's settings
    assert len(calls["scheme"]) == 1
    assert calls["scheme"][0]["teachers"] == 1 and calls["scheme"][0]["data"] == "TrainData"
    assert calls["scheme"][0]["cfg"].response == "toy-mse"
    # the response loss at every step of both students, against softened probabilities of the 10 classes
    assert calls["response"] and all(c["probabilities"] and c["shape"][1] == 10 for c in calls["response"])
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"]["distill"]
    assert stage["scheme"] == "toy-best-of-two" and stage["teachers"] == 1
    assert len(stage["candidates_val_top1"]) == 2 and stage["continues"] in (0, 1)
    assert stage["teacher_outputs"] == "cached (plain images)"  # it learns from the teacher
    assert [m["stage"] for m in report["models"]] == ["teacher", "student", "int8"]
    assert "toy-best-of-two: tinycnn val top-1" in result.output


# -- a response with and without from_logits, in both of offline KD's paths ----------------


@pytest.fixture
def data(tiny_images):
    g = torch.Generator().manual_seed(1)
    return {"train_x": tiny_images(24, seed=0), "train_y": torch.randint(0, 3, (24,), generator=g),
            "val_x": tiny_images(8, seed=1), "val_y": torch.randint(0, 3, (8,), generator=g)}


@pytest.fixture
def spy_response():
    seen = []

    def spy(logits, teacher_probs, labels, cfg):
        seen.append(("probs", teacher_probs.detach().clone()))
        return RESPONSES.get("hinton")(logits, teacher_probs, labels, cfg)

    def spy_from_logits(logits, teacher_logits, labels, cfg):
        seen.append(("logits", teacher_logits.detach().clone()))
        return RESPONSES.get("hinton").from_logits(logits, teacher_logits, labels, cfg)

    RESPONSES.register("toy-spy", spy)
    yield spy, spy_from_logits, seen
    RESPONSES.unregister("toy-spy")


def test_one_teacher_gives_its_logits_where_the_response_takes_them(spy_response, make_tiny_cnn, data):
    spy, spy_from_logits, seen = spy_response
    cfg = dataclasses.replace(Recipe.from_dict({"distill": {"response": "toy-spy"}}).distill, epochs=1, batch_size=8)
    teacher = make_tiny_cnn(seed=0)
    distill(make_tiny_cnn(seed=1), teacher, TrainData.of(**data), cfg, RunOptions(progress=False))
    assert [kind for kind, _ in seen] == ["probs"] * 3  # 24 images in batches of 8, softened first
    assert all(torch.allclose(p.sum(1), torch.ones(8)) for _, p in seen)
    seen.clear()
    spy.from_logits = spy_from_logits
    distill(make_tiny_cnn(seed=1), teacher, TrainData.of(**data), cfg, RunOptions(progress=False))
    assert [kind for kind, _ in seen] == ["logits"] * 3
    assert not all(torch.allclose(z.sum(1), torch.ones(8)) for _, z in seen)


def test_several_teachers_give_their_averaged_probabilities(spy_response, make_tiny_cnn, data):
    spy, spy_from_logits, seen = spy_response
    spy.from_logits = spy_from_logits  # one teacher's logits only: unused with two teachers
    cfg = dataclasses.replace(Recipe.from_dict({"distill": {"response": "toy-spy"}}).distill, epochs=1, batch_size=8)
    distill(make_tiny_cnn(seed=1), [make_tiny_cnn(seed=0), make_tiny_cnn(seed=2)], TrainData.of(**data), cfg,
            RunOptions(progress=False))
    assert [kind for kind, _ in seen] == ["probs"] * 3
    assert all(torch.allclose(p.sum(1), torch.ones(8)) for _, p in seen)


def test_the_built_in_responses_are_the_losses_they_name(make_tiny_cnn, data):
    from edgekd.distill.losses import dkd_loss, kd_loss, soft_target_loss

    cfg = Recipe.from_dict({"distill": {"response": "dkd", "dkd_beta": 2.0}}).distill
    logits, teacher_logits = torch.randn(4, 3), torch.randn(4, 3)
    probs, labels = torch.softmax(teacher_logits / cfg.temperature, 1), torch.tensor([0, 1, -1, 2])
    assert torch.equal(RESPONSES.get("dkd")(logits, probs, labels, cfg),
                       dkd_loss(logits, probs, labels, temperature=4.0, alpha=0.9, beta=2.0))
    hinton = RESPONSES.get("hinton")
    assert torch.equal(hinton(logits, probs, labels, cfg),
                       soft_target_loss(logits, probs, labels, temperature=4.0, alpha=0.9))
    assert torch.equal(hinton.from_logits(logits, teacher_logits, labels, cfg),
                       kd_loss(logits, teacher_logits, labels, temperature=4.0, alpha=0.9))
    assert not hasattr(RESPONSES.get("dkd"), "from_logits")
    assert issubclass(SCHEMES.get("offline"), Scheme) and SCHEMES.names() == ("offline", "online", "born-again",
                                                                                "ema")
