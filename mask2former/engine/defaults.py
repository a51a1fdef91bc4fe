"""Process set-up of ``train_net.py`` and the tools (config loading is in ``..config``)."""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import UnknownConfigKeyError, adjust_for_device, load_config

__all__ = ["UnknownConfigKeyError", "adjust_for_device", "load_config", "setup"]

logger = logging.getLogger(__name__)


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
