"""Fine-tuning with another number of classes: the class head is re-initialised and named in one
log line (``MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH True``)."""

import logging

import torch
from torch import nn

from mask2former.utils.checkpoint import SafeCheckpointer


class _Net(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.class_embed = nn.Linear(4, num_classes + 1)


def test_skipped_class_head_is_named_in_one_log_line(tmp_path, caplog):
    path = tmp_path / "eight_classes.pth"
    source = _Net(num_classes=8).state_dict()
    torch.save({"model": source}, path)
    target = _Net(num_classes=3)
    head_before = target.class_embed.weight.clone()
    with caplog.at_level(logging.INFO):
        SafeCheckpointer(target, allow_shape_mismatch=True).load(str(path))
    torch.testing.assert_close(target.backbone.weight, source["backbone.weight"])
    torch.testing.assert_close(target.class_embed.weight, head_before)  # kept its init
    naming = [r.getMessage() for r in caplog.records if "class_embed" in r.getMessage()]
    assert len(naming) == 1, naming
    assert "\n" not in naming[0]
    assert "class_embed.weight (9, 4) -> (4, 4)" in naming[0]
    assert "class_embed.bias (9,) -> (4,)" in naming[0]
