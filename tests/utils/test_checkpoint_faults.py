"""Checkpoint writing that survives a kill, and resuming past unreadable checkpoints
(mask2former.utils.checkpoint)."""

import logging
import os

import pytest
import torch
from torch import nn

import mask2former.utils.checkpoint as checkpoint_module
from mask2former.utils.checkpoint import SafeCheckpointer, UnreadableCheckpointError


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _assert_same_weights(model, reference):
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def _last(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


def _save_two(folder):
    """model_0000001.pth (weights of seed 1), then model_0000003.pth (seed 3)."""
    SafeCheckpointer(_net(1), str(folder)).save("model_0000001", iteration=1)
    SafeCheckpointer(_net(3), str(folder)).save("model_0000003", iteration=3)
    # Distinct modification times, newest last, whatever the file system's resolution.
    os.utime(folder / "model_0000001.pth", (1_000_000, 1_000_000))
    os.utime(folder / "model_0000003.pth", (2_000_000, 2_000_000))


def test_checkpoint_is_written_to_a_temp_file_then_renamed(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def record(src, dst):
        assert os.path.getsize(src) > 0  # complete before it takes the final name
        renames.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", record)
    SafeCheckpointer(_net(0), str(tmp_path)).save("model_0000004", iteration=4)
    assert renames == [
        ("model_0000004.pth.tmp", "model_0000004.pth"),
        ("last_checkpoint.tmp", "last_checkpoint"),
    ]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]
    assert torch.load(tmp_path / "model_0000004.pth", weights_only=True)["iteration"] == 4


def test_a_save_cut_short_leaves_the_previous_checkpoint_named_and_loadable(tmp_path, monkeypatch):
    SafeCheckpointer(_net(1), str(tmp_path)).save("model_0000001", iteration=1)
    real_save = torch.save

    def die_halfway(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # what a process killed mid-write leaves
        raise KeyboardInterrupt  # and it never gets to the rename

    monkeypatch.setattr(checkpoint_module.torch, "save", die_halfway)
    with pytest.raises(KeyboardInterrupt):
        SafeCheckpointer(_net(3), str(tmp_path)).save("model_0000003", iteration=3)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)

    assert _last(tmp_path) == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists()
    # The partial file is removed when the save fails with an exception; a SIGKILL leaves it,
    # under a name that is not a checkpoint's (tools/kill_anywhere.py checks that case).
    assert not (tmp_path / "model_0000003.pth.tmp").exists()
    model = _net(0)
    assert SafeCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True) == {
        "iteration": 1
    }
    _assert_same_weights(model, _net(1))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "delete"])
def test_resume_skips_an_unreadable_last_checkpoint_with_a_warning(tmp_path, caplog, damage):
    _save_two(tmp_path)
    bad = tmp_path / "model_0000003.pth"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    elif damage == "garbage":
        bad.write_bytes(b"\x00not a checkpoint" * 50)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.unlink()
    model = _net(0)
    with caplog.at_level(logging.WARNING, logger="mask2former.utils.checkpoint"):
        extra = SafeCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra == {"iteration": 1}
    _assert_same_weights(model, _net(1))
    assert f"Cannot resume from {bad}" in caplog.text
    assert f"Resuming from {tmp_path / 'model_0000001.pth'}" in caplog.text


def test_resume_stops_when_no_checkpoint_can_be_read(tmp_path):
    _save_two(tmp_path)
    for name in ("model_0000001.pth", "model_0000003.pth"):
        path = tmp_path / name
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UnreadableCheckpointError) as info:
        SafeCheckpointer(_net(0), str(tmp_path)).resume_or_load("", resume=True)
    message = str(info.value)
    assert str(tmp_path / "model_0000001.pth") in message
    assert str(tmp_path / "model_0000003.pth") in message
    assert "last_checkpoint" in message


def test_a_readable_checkpoint_that_does_not_fit_is_not_skipped(tmp_path):
    # Falling back is for unreadable files only; a model mismatch is the user's to fix.
    _save_two(tmp_path)
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1))
    with pytest.raises(ValueError, match="do not fit the model"):
        SafeCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
