"""Parameter groups and gradient clipping of mask2former.engine.optimizer."""

import pytest
import torch
from torch import nn

from mask2former.config import load_config
from mask2former.engine.optimizer import build_optimizer


class _WindowAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))  # Swin: no decay
        self.qkv = nn.Linear(4, 12)


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.attn = _WindowAttention()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))  # Swin APE: no decay


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_feat = nn.Embedding(5, 4)
        self.level_embed = nn.Parameter(torch.zeros(3, 4))  # raw Parameter: keeps weight decay
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.sem_seg_head = _Head()
        self.tied = nn.Linear(4, 4)
        self.tied.weight = self.sem_seg_head.proj.weight  # shared: optimized once


def _cfg(**solver):
    cfg = load_config()
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _hyperparams(optimizer, model):
    """{parameter name: (lr, weight_decay)} over every parameter in the optimizer."""
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert names[p] not in out
            out[names[p]] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups():
    model = _Model()
    optimizer = build_optimizer(_cfg(), model)
    assert isinstance(optimizer, torch.optim.AdamW)
    hp = _hyperparams(optimizer, model)
    expected = {
        "backbone.conv.weight": (1e-5, 0.05),
        "backbone.conv.bias": (1e-5, 0.05),
        "backbone.bn.weight": (1e-5, 0.0),
        "backbone.bn.bias": (1e-5, 0.0),
        "backbone.attn.relative_position_bias_table": (1e-5, 0.0),
        "backbone.attn.qkv.weight": (1e-5, 0.05),
        "backbone.attn.qkv.bias": (1e-5, 0.05),
        "backbone.absolute_pos_embed": (1e-5, 0.0),
        "sem_seg_head.query_feat.weight": (1e-4, 0.0),
        "sem_seg_head.level_embed": (1e-4, 0.05),
        "sem_seg_head.gn.weight": (1e-4, 0.0),
        "sem_seg_head.gn.bias": (1e-4, 0.0),
        "sem_seg_head.ln.weight": (1e-4, 0.0),
        "sem_seg_head.ln.bias": (1e-4, 0.0),
        "sem_seg_head.proj.weight": (1e-4, 0.05),
        "sem_seg_head.proj.bias": (1e-4, 0.05),
        "tied.bias": (1e-4, 0.05),
    }
    assert hp.keys() == expected.keys()  # frozen parameters left out, the tied one once
    for name, (lr, wd) in expected.items():
        assert hp[name] == (pytest.approx(lr), pytest.approx(wd)), name
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params})
    # Equal hyper-parameters share a group.
    assert len(optimizer.param_groups) == len(set(expected.values()))


def test_norm_and_embed_weight_decay_from_config():
    model = _Model()
    hp = _hyperparams(build_optimizer(_cfg(WEIGHT_DECAY_NORM=0.3, WEIGHT_DECAY_EMBED=0.2), model),
                      model)
    assert hp["sem_seg_head.gn.weight"][1] == pytest.approx(0.3)
    assert hp["backbone.bn.bias"][1] == pytest.approx(0.3)
    assert hp["sem_seg_head.query_feat.weight"][1] == pytest.approx(0.2)


def test_sgd_and_unknown_optimizer():
    model = _Model()
    optimizer = build_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.9), model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="Unknown SOLVER.OPTIMIZER 'ADAM'"):
        build_optimizer(_cfg(OPTIMIZER="ADAM"), model)


def _global_grad_norm(params):
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()


@pytest.mark.parametrize("name", ["ADAMW", "SGD"])
def test_full_model_clipping_clips_global_norm(name):
    torch.manual_seed(0)
    model = _Model()
    cfg = _cfg(OPTIMIZER=name)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    optimizer = build_optimizer(cfg, model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.randn_like(p)
    assert _global_grad_norm(params) > 1.0
    optimizer.step()
    # The step clipped the gradients in place: their global L2 norm is now the clip value.
    assert _global_grad_norm(params) == pytest.approx(0.01, rel=1e-4)


def test_per_parameter_clipping_is_detectron2s():
    model = _Model()
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    optimizer = build_optimizer(cfg, model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    optimizer.step()
    assert all(torch.all(p.grad == 0.5) for p in params)


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop():
    torch.manual_seed(0)
    model = _Model()
    reference = _Model()
    reference.load_state_dict(model.state_dict())
    optimizer = build_optimizer(_cfg(), model)
    assert all(group["fused"] for group in optimizer.param_groups)
    # The same groups through PyTorch's plain (for-loop) AdamW.
    names = {p: n for n, p in model.named_parameters()}
    ref_params = dict(reference.named_parameters())
    loop = torch.optim.AdamW(
        [
            {"lr": g["lr"], "weight_decay": g["weight_decay"], "params": [ref_params[names[p]]]}
            for g in optimizer.param_groups
            for p in g["params"]
        ],
        fused=False,
        foreach=False,
    )
    assert not any(group["fused"] or group["foreach"] for group in loop.param_groups)
    for _ in range(5):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        for m in (model, reference):
            for n, p in m.named_parameters():
                p.grad = grads[n].clone() if p.requires_grad else None
        optimizer.step()
        loop.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-6, atol=1e-7, msg=n)
