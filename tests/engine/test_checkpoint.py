"""Safe loading of weight files (mask2former.utils.checkpoint)."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.projects.deeplab import build_lr_scheduler
from torch import nn

from mask2former.config import load_config
from mask2former.engine.optimizer import build_optimizer
from mask2former.utils.checkpoint import SafeCheckpointer, load_pickle_safely


class _Net(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4)))
        self.class_embed = nn.Linear(4, num_classes + 1)


def _numpy_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class _RunsCommand:
    """Unpickling this would run a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_crafted_pkl_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    payload = {"model": {"w": np.zeros(2)}, "__author__": _RunsCommand(f"touch {marker}")}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError) as info:
        SafeCheckpointer(_Net()).load(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "system" in message  # the refused global, e.g. 'posix.system'
    assert not marker.exists()


def test_pkl_refuses_other_globals(tmp_path):
    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "x": print}))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_pickle_safely(str(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pkl_loads(tmp_path, protocol):
    source = _Net()
    data = {"model": OrderedDict(_numpy_state(source)), "__author__": "test",
            "scalar": np.float32(1.5)}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    target = _Net()
    SafeCheckpointer(target).load(str(path))
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_pkl_name_matching_heuristics(tmp_path):
    # Backbone weights named without the model's prefix, as in an ImageNet R-50.pkl.
    source = _Net()
    state = {k[len("backbone."):]: v for k, v in _numpy_state(source).items() if "backbone" in k}
    path = tmp_path / "R-toy.pkl"
    path.write_bytes(pickle.dumps(
        {"model": state, "__author__": "torchvision", "matching_heuristics": True}))
    target = _Net()
    SafeCheckpointer(target).load(str(path))
    torch.testing.assert_close(target.backbone.conv.weight, source.backbone.conv.weight)

    state["conv.weight"] = np.zeros((8, 3, 3, 3), np.float32)
    path.write_bytes(pickle.dumps(
        {"model": state, "__author__": "torchvision", "matching_heuristics": True}))
    with pytest.raises(ValueError, match=r"backbone\.conv\.weight: \(8, 3, 3, 3\) in the "
                                         r"checkpoint, \(4, 3, 3, 3\) in the model"):
        SafeCheckpointer(_Net()).load(str(path))


def test_pth_is_read_weights_only(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": _Net().state_dict(), "iteration": 3}, good)
    extra = SafeCheckpointer(_Net()).load(str(good))
    assert extra["iteration"] == 3

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _RunsCommand(f"touch {marker}")}, evil)
    with pytest.raises(pickle.UnpicklingError):
        SafeCheckpointer(_Net()).load(str(evil))
    assert not marker.exists()


def test_shape_mismatch_names_keys(tmp_path):
    path = tmp_path / "other_classes.pth"
    torch.save({"model": _Net(num_classes=7).state_dict()}, path)
    target = _Net(num_classes=3)
    with pytest.raises(ValueError) as info:
        SafeCheckpointer(target).load(str(path))
    message = str(info.value)
    assert "class_embed.weight: (8, 4) in the checkpoint, (4, 4) in the model" in message
    assert "class_embed.bias: (8,) in the checkpoint, (4,) in the model" in message
    assert "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH" in message

    # Allowed: the tensors that fit are loaded, the others skipped.
    source = torch.load(path, weights_only=True)["model"]
    bias_before = target.class_embed.bias.clone()
    SafeCheckpointer(target, allow_shape_mismatch=True).load(str(path))
    torch.testing.assert_close(target.backbone.conv.weight, source["backbone.conv.weight"])
    torch.testing.assert_close(target.class_embed.bias, bias_before)


@pytest.mark.parametrize("schedule", ["WarmupPolyLR", "WarmupMultiStepLR"])
def test_training_state_round_trips_weights_only(tmp_path, schedule):
    cfg = load_config()
    cfg.SOLVER.LR_SCHEDULER_NAME = schedule
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"

    def make():
        model = _Net()
        optimizer = build_optimizer(cfg, model)
        return model, optimizer, build_lr_scheduler(cfg, optimizer)

    model, optimizer, scheduler = make()
    for _ in range(7):
        model.class_embed(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    SafeCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save(
        "model_0000006", iteration=6)

    model2, optimizer2, scheduler2 = make()
    checkpointer = SafeCheckpointer(model2, str(tmp_path), optimizer=optimizer2,
                                    scheduler=scheduler2)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 6
    assert scheduler2.last_epoch == scheduler.last_epoch == 7
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]
    state, state2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert state.keys() == state2.keys()
    for k in state:
        torch.testing.assert_close(state2[k]["exp_avg"], state[k]["exp_avg"])
