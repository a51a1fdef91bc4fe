"""Training dataset mappers on tiny records written to tmp_path."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from mask2former.config import add_maskformer2_config
from mask2former.data import MAPPERS, build_train_mapper, read_image_checked
from mask2former.data.dataset_mappers import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from mask2former.data.utils import id2rgb

H, W = 30, 40


def _cfg(mapper_name="mask_former_semantic"):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.DATASETS.TRAIN = ("unregistered_test_dataset",)
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (24, 24)
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.IMAGE_SIZE = 64
    return cfg


def _write_image(path, mode="RGB"):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    img = img.convert(mode) if mode != "RGB" else img
    img.save(path)
    return str(path)


def _sem_label():
    sem = np.full((H, W), 255, dtype=np.uint8)
    sem[:, :20] = 0
    sem[10:20, 20:35] = 3
    return sem


def _panoptic_record(tmp_path):
    pan = np.zeros((H, W), dtype=np.int64)
    pan[:, :20] = 11  # stuff
    pan[5:15, 25:35] = 22  # thing
    pan[20:28, 25:35] = 33  # crowd thing
    Image.fromarray(id2rgb(pan)).save(tmp_path / "pan.png")
    return {
        "file_name": _write_image(tmp_path / "img.jpg"),
        "height": H,
        "width": W,
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": [
            {"id": 11, "category_id": 4, "iscrowd": 0, "isthing": False},
            {"id": 22, "category_id": 1, "iscrowd": 0, "isthing": True},
            {"id": 33, "category_id": 1, "iscrowd": 1, "isthing": True},
        ],
    }


def _instance_record(tmp_path, annotations=None):
    rle_mask = np.zeros((H, W), dtype=np.uint8, order="F")
    rle_mask[20:28, 5:15] = 1
    rle = mask_util.encode(rle_mask)
    default = [
        {  # polygon
            "bbox": [2, 2, 10, 10],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 2,
            "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
            "iscrowd": 0,
        },
        {  # RLE
            "bbox": [5, 20, 10, 8],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 5,
            "segmentation": rle,
            "iscrowd": 0,
        },
        {  # crowd: dropped
            "bbox": [20, 20, 5, 5],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "segmentation": [[20, 20, 25, 20, 25, 25]],
            "iscrowd": 1,
        },
    ]
    return {
        "file_name": _write_image(tmp_path / "img.jpg"),
        "height": H,
        "width": W,
        "annotations": default if annotations is None else annotations,
    }


def _semantic_mapper(**kw):
    args = {
        "augmentations": [],
        "image_format": "RGB",
        "ignore_label": 255,
        "size_divisibility": -1,
    }
    args.update(kw)
    return MaskFormerSemanticDatasetMapper(**args)


def _check_instances(out, with_boxes):
    inst = out["instances"]
    h, w = out["image"].shape[-2:]
    assert inst.image_size == (h, w)
    assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape[-2:] == (h, w)
    assert inst.gt_classes.dtype == torch.int64
    assert len(inst.gt_classes) == inst.gt_masks.shape[0]
    if with_boxes:
        boxes = inst.gt_boxes.tensor
        assert boxes.shape == (len(inst), 4)
        for m, b in zip(inst.gt_masks, boxes):
            ys, xs = torch.where(m)
            if len(xs):
                assert b.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            else:  # a segment emptied by the crop
                assert b.tolist() == [0, 0, 0, 0]
    return inst


def test_semantic_mapper_targets_match_labels(tmp_path):
    Image.fromarray(_sem_label()).save(tmp_path / "sem.png")
    record = {
        "file_name": _write_image(tmp_path / "img.jpg"),
        "sem_seg_file_name": str(tmp_path / "sem.png"),
    }
    out = _semantic_mapper()(record)
    assert out["image"].shape == (3, H, W) and out["image"].dtype == torch.uint8
    sem = out["sem_seg"]
    assert sem.shape == (H, W) and sem.dtype == torch.int64
    inst = _check_instances(out, with_boxes=False)
    assert inst.gt_classes.tolist() == [0, 3]
    for c, m in zip(inst.gt_classes, inst.gt_masks):
        assert torch.equal(m, sem == c)
    assert "sem_seg_file_name" not in out and "sem_seg_file_name" in record  # input untouched


def test_semantic_mapper_from_config_crops_and_pads(tmp_path):
    Image.fromarray(_sem_label()).save(tmp_path / "sem.png")
    record = {
        "file_name": _write_image(tmp_path / "img.jpg"),
        "sem_seg_file_name": str(tmp_path / "sem.png"),
    }
    out = MaskFormerSemanticDatasetMapper(_cfg(), is_train=True)(record)
    assert out["image"].shape == (3, 32, 32)
    sem = out["sem_seg"]
    assert (sem[24:, :] == 255).all() and (sem[:, 24:] == 255).all()  # label padding
    assert (out["image"][:, 24:, :] == 128).all()  # image padding
    inst = _check_instances(out, with_boxes=False)
    for c, m in zip(inst.gt_classes, inst.gt_masks):
        assert torch.equal(m, sem == c)


def test_semantic_mapper_all_ignored_gives_empty_instances(tmp_path):
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(tmp_path / "sem.png")
    record = {
        "file_name": _write_image(tmp_path / "img.jpg"),
        "sem_seg_file_name": str(tmp_path / "sem.png"),
    }
    inst = _semantic_mapper()(record)["instances"]
    assert inst.gt_masks.shape == (0, H, W) and len(inst.gt_classes) == 0


def test_semantic_mapper_is_training_only():
    with pytest.raises(ValueError, match="training"):
        _semantic_mapper(is_train=False)


def test_maskformer_panoptic_mapper(tmp_path):
    record = _panoptic_record(tmp_path)
    mapper = MaskFormerPanopticDatasetMapper(
        augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=48
    )
    out = mapper(record)
    assert out["image"].shape == (3, 48, 48) and "sem_seg" not in out
    inst = _check_instances(out, with_boxes=False)
    assert inst.gt_classes.tolist() == [4, 1]  # the crowd segment is dropped
    assert inst.gt_masks[0, :, :20][:H].all() and inst.gt_masks[1].sum() == 100
    assert not inst.gt_masks[:, H:, :].any()  # padding is void


def test_maskformer_instance_mapper(tmp_path):
    out = MaskFormerInstanceDatasetMapper(_cfg("mask_former_instance"))(_instance_record(tmp_path))
    assert out["image"].shape == (3, 32, 32) and "sem_seg" not in out
    inst = _check_instances(out, with_boxes=False)
    assert len(inst) <= 2 and set(inst.gt_classes.tolist()) <= {2, 5}

    plain = MaskFormerInstanceDatasetMapper(
        augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1
    )
    inst = plain(_instance_record(tmp_path))["instances"]
    assert inst.gt_classes.tolist() == [2, 5]
    assert inst.gt_masks[1].sum() == 80 and inst.gt_masks[0, 5, 5]


def test_instance_mappers_empty_annotations(tmp_path):
    plain = MaskFormerInstanceDatasetMapper(
        augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1
    )
    inst = plain(_instance_record(tmp_path, annotations=[]))["instances"]
    assert inst.gt_masks.shape == (0, H, W)
    lsj = COCOInstanceNewBaselineDatasetMapper(_cfg("coco_instance_lsj"))
    inst = lsj(_instance_record(tmp_path, annotations=[]))["instances"]
    assert inst.gt_masks.shape == (0, 64, 64) and inst.gt_boxes.tensor.shape == (0, 4)


def test_lsj_instance_mapper(tmp_path):
    cfg = _cfg("coco_instance_lsj")
    cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 1.0  # 40 wide -> 64: scale 1.6, 48 x 64 padded
    out = COCOInstanceNewBaselineDatasetMapper(cfg)(_instance_record(tmp_path))
    assert out["image"].shape == (3, 64, 64)
    pad = out["padding_mask"]
    assert pad.dtype == torch.bool and pad[48:].all() and not pad[:48].any()
    inst = _check_instances(out, with_boxes=True)
    assert inst.gt_classes.tolist() == [2, 5]
    assert not (inst.gt_masks & pad).any()


def test_lsj_panoptic_mapper(tmp_path):
    cfg = _cfg("coco_panoptic_lsj")
    out = COCOPanopticNewBaselineDatasetMapper(cfg)(_panoptic_record(tmp_path))
    assert out["image"].shape == (3, 64, 64)
    inst = _check_instances(out, with_boxes=True)
    # Whatever the random crop keeps, both non-crowd segments are targets (maybe empty).
    assert inst.gt_classes.tolist() == [4, 1]
    assert not (inst.gt_masks & out["padding_mask"]).any()


def test_lsj_crop_keeps_emptied_panoptic_segments_and_drops_emptied_instances(tmp_path):
    # A fixed crop of the top-left 20 x 15 pixels instead of the random large-scale jitter.
    crop = T.CropTransform(0, 0, 20, 15)  # x0, y0, w, h
    lsj = {"augmentations": [crop], "image_format": "RGB"}

    # Panoptic: stuff 11 fills x < 20, thing 22 (x 25..34) is cut away; crowd 33 is no target.
    out = COCOPanopticNewBaselineDatasetMapper(**lsj)(_panoptic_record(tmp_path))
    inst = _check_instances(out, with_boxes=True)
    assert out["image"].shape == (3, 15, 20)
    assert inst.gt_classes.tolist() == [4, 1]  # as the official mapper: emptied thing kept
    assert inst.gt_masks[0].all()
    assert inst.gt_masks[1].shape == (15, 20) and not inst.gt_masks[1].any()

    # Instance, same crop: the polygon (y 2..12) stays, the RLE mask (y 20..27) is cut away
    # and dropped, as Detectron2's filter_empty_instances does in the official mapper.
    out = COCOInstanceNewBaselineDatasetMapper(**lsj)(_instance_record(tmp_path))
    inst = _check_instances(out, with_boxes=True)
    assert inst.gt_classes.tolist() == [2]
    assert inst.gt_masks.shape == (1, 15, 20) and inst.gt_masks[0, 5, 5]


def test_lsj_mapper_inference_returns_image_only(tmp_path):
    mapper = COCOInstanceNewBaselineDatasetMapper(_cfg("coco_instance_lsj"), is_train=False)
    out = mapper(_instance_record(tmp_path))
    assert out["image"].shape == (3, 64, 64) and "instances" not in out


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_palette_and_rgba_images_become_three_channels(tmp_path, mode):
    path = _write_image(tmp_path / "img.png", mode=mode)
    assert read_image_checked(path, "RGB").shape == (H, W, 3)
    assert read_image_checked(path, "BGR").shape == (H, W, 3)
    Image.fromarray(_sem_label()).save(tmp_path / "sem.png")
    out = _semantic_mapper()({"file_name": path, "sem_seg_file_name": str(tmp_path / "sem.png")})
    assert out["image"].shape == (3, H, W)


def test_missing_and_corrupt_files_are_named(tmp_path):
    Image.fromarray(_sem_label()).save(tmp_path / "sem.png")
    missing = str(tmp_path / "nope.jpg")
    mapper = _semantic_mapper()
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        mapper({"file_name": missing, "sem_seg_file_name": str(tmp_path / "sem.png")})
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        mapper(
            {"file_name": str(tmp_path / "bad.jpg"), "sem_seg_file_name": str(tmp_path / "sem.png")}
        )
    img = _write_image(tmp_path / "img.jpg")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        mapper({"file_name": img, "sem_seg_file_name": str(tmp_path / "gone.png")})
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="bad.png"):
        mapper({"file_name": img, "sem_seg_file_name": str(tmp_path / "bad.png")})
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        mapper({"file_name": img})
    # An RGB label image is refused rather than misread.
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        mapper({"file_name": img, "sem_seg_file_name": str(tmp_path / "rgb.png")})


def test_truncated_image_is_a_clear_error(tmp_path):
    path = _write_image(tmp_path / "img.jpg")
    data = open(path, "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="cut.jpg"):
        read_image_checked(str(tmp_path / "cut.jpg"))


def test_build_train_mapper():
    for name, cls in MAPPERS.items():
        assert isinstance(build_train_mapper(_cfg(name)), cls)
    with pytest.raises(ValueError, match="mask_former_semantic"):
        build_train_mapper(_cfg("no_such_mapper"))
