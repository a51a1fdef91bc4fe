"""Config loading of mask2former.engine.defaults: unknown keys give clear errors."""

import pytest

from mask2former.engine.defaults import UnknownConfigKeyError, load_config


def test_defaults_and_overrides():
    cfg = load_config("", ["SOLVER.BASE_LR", "0.5", "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH", "True"])
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH is True
    assert cfg.SOLVER.POLY_LR_POWER == 0.9  # DeepLab keys are there
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100


def test_unknown_key_in_base_file_names_key_and_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERIE: 5\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(UnknownConfigKeyError) as info:
        load_config(str(child))
    message = str(info.value)
    assert "'MODEL.MASK_FORMER.NUM_OBJECT_QUERIE'" in message
    assert str(base) in message and str(child) in message
    assert isinstance(info.value, KeyError)


def test_unknown_key_in_override():
    with pytest.raises(UnknownConfigKeyError, match="'SOLVER.BASE_LRR' in the command-line "
                                                    "override 'SOLVER.BASE_LRR 0.1'"):
        load_config("", ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        load_config("", ["SOLVER.BASE_LR"])
