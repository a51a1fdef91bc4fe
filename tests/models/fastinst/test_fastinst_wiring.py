"""FastInst's hooks into the shared parts: its training mapper and its inference switches."""

from pathlib import Path

from mask2former.config import inference_switches, load_config
from mask2former.data.checks import _MAPPER_NEEDS
from mask2former.data.dataset_mappers.build import MAPPERS
from mask2former.models.fastinst.mapper import FastInstInstanceDatasetMapper

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_official_mapper_name_is_registered():
    assert MAPPERS["fastinst_instance"] is FastInstInstanceDatasetMapper
    assert _MAPPER_NEEDS["fastinst_instance"] == ("instance", "thing_classes")


def test_inference_switches_follow_the_family():
    fast = load_config(str(CONFIGS / "coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml"))
    assert fast.INPUT.DATASET_MAPPER_NAME == "fastinst_instance"
    assert inference_switches(fast) is fast.MODEL.FASTINST.TEST
    m2f = load_config(str(CONFIGS / "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml"))
    assert inference_switches(m2f) is m2f.MODEL.MASK_FORMER.TEST
