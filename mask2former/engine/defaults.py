"""Config loading and process set-up shared by ``train_net.py`` and the tools."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_maskformer2_config

__all__ = ["UnknownConfigKeyError", "adjust_for_device", "load_config", "setup"]

logger = logging.getLogger(__name__)

_BASE_KEY = "_BASE_"


class UnknownConfigKeyError(KeyError):
    """A config file or command-line override names a key that the config does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def _yaml_has_key(node: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _file_with_key(config_file: str, key: str) -> str | None:
    """The file among ``config_file`` and its ``_BASE_`` ancestors that sets ``key``."""
    try:
        with open(config_file) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return None
    if _yaml_has_key(data, key):
        return config_file
    bases = data.get(_BASE_KEY) or []
    for base in [bases] if isinstance(bases, str) else bases:
        if not base.startswith(("/", "~")) and "://" not in base:
            base = os.path.join(os.path.dirname(config_file), base)
        found = _file_with_key(os.path.expanduser(base), key)
        if found:
            return found
    return None


def _has_key(cfg: CfgNode, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2 defaults + DeepLab + Mask2Former keys, then ``config_file``, then ``opts``.

    Raises:
        UnknownConfigKeyError: naming the unknown key and the file (or override) setting it.
    """
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            message = str(e.args[0]) if e.args else ""
            if not message.startswith("Non-existent config key"):
                raise
            key = message.split(":", 1)[1].strip()
            source = _file_with_key(config_file, key) or config_file
            raise UnknownConfigKeyError(
                f"Unknown config key '{key}' set in {source}"
                + (f" (a _BASE_ of {config_file})" if source != config_file else "")
                + ". Check its spelling, or whether it belongs to another project."
            ) from None
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd list: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        if not _has_key(cfg, key):
            raise UnknownConfigKeyError(
                f"Unknown config key '{key}' in the command-line override '{key} {value}'."
            )
    cfg.merge_from_list(opts)
    return cfg


def adjust_for_device(cfg: CfgNode) -> list[str]:
    """Run on the CPU when CUDA is absent; AMP only on CUDA. Returns messages to log."""
    notes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        notes.append(f"AMP is off: SOLVER.AMP.ENABLED is only used on CUDA "
                     f"(MODEL.DEVICE {cfg.MODEL.DEVICE}).")
        cfg.SOLVER.AMP.ENABLED = False
    return notes


def setup(args) -> CfgNode:
    """Frozen config from ``args`` (Detectron2's command line) and the usual process set-up:
    output folder, logging, environment info, seeding (:func:`default_setup`)."""
    cfg = load_config(args.config_file, args.opts)
    notes = adjust_for_device(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    for note in notes:
        logger.warning(note)
    return cfg
