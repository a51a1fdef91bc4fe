"""Custom-dataset helpers (mask2former.data.custom) and config checks (mask2former.data.checks)."""

import json
import logging
import uuid

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mask2former.config import add_maskformer2_config
from mask2former.data import (
    MaskFormerPanopticDatasetMapper,
    check_dataset_config,
    register_coco_instances_dataset,
    register_coco_panoptic_dataset,
    register_semantic_folder,
)
from mask2former.data.utils import id2rgb


def _name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _coco_json(tmp_path, annotations=True):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [1, 1, 5, 5],
                "area": 25,
                "iscrowd": 0,
                "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]],
            }
        ]
        if annotations
        else [],
        "categories": [{"id": 9, "name": "dog"}, {"id": 7, "name": "cat"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path / "images")


def test_register_coco_instances_dataset(tmp_path):
    json_file, image_root = _coco_json(tmp_path)
    name = _name("custom_coco")
    register_coco_instances_dataset(name, json_file, image_root)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"] and meta.evaluator_type == "coco"
    records = DatasetCatalog.get(name)
    assert len(records) == 1 and records[0]["annotations"][0]["category_id"] == 0


def test_register_coco_instances_empty_annotations_warns(tmp_path, caplog):
    json_file, image_root = _coco_json(tmp_path, annotations=False)
    name = _name("custom_empty")
    with caplog.at_level(logging.WARNING):
        register_coco_instances_dataset(name, json_file, image_root)
    assert "no annotations" in caplog.text
    assert DatasetCatalog.get(name)[0]["annotations"] == []


def test_register_coco_instances_errors_name_the_file(tmp_path):
    _, image_root = _coco_json(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        register_coco_instances_dataset(_name("x"), str(bad), image_root)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"partial.json.*\['annotations', 'categories'\]"):
        register_coco_instances_dataset(_name("x"), str(partial), image_root)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        register_coco_instances_dataset(_name("x"), str(tmp_path / "absent.json"), image_root)
    good, _ = _coco_json(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_images"):
        register_coco_instances_dataset(_name("x"), good, str(tmp_path / "no_images"))


def _semantic_folder(tmp_path, stems, label_stems):
    img_dir, lab_dir = tmp_path / "img", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    for s in stems:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img_dir / f"{s}.jpg")
    for s in label_stems:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(lab_dir / f"{s}.png")
    return str(img_dir), str(lab_dir)


def test_register_semantic_folder(tmp_path):
    img_dir, lab_dir = _semantic_folder(tmp_path, ["a", "b"], ["a", "b"])
    name = _name("custom_sem")
    register_semantic_folder(name, img_dir, lab_dir, ["bg", "fg"], ignore_label=255)
    records = DatasetCatalog.get(name)
    assert [r["sem_seg_file_name"].endswith(f"{s}.png") for r, s in zip(records, "ab")] == [1, 1]
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["bg", "fg"] and meta.evaluator_type == "sem_seg"


def test_register_semantic_folder_lists_unmatched_files(tmp_path):
    img_dir, lab_dir = _semantic_folder(tmp_path, ["a", "b"], ["a", "c"])
    with pytest.raises(ValueError, match=r"b\.jpg.*c\.png"):
        register_semantic_folder(_name("x"), img_dir, lab_dir, ["bg"])


def _panoptic_files(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "pan").mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "img" / "p.jpg")
    pan = np.zeros((10, 12), np.int64)
    pan[:5] = 5
    pan[6:, 3:9] = 6
    Image.fromarray(id2rgb(pan)).save(tmp_path / "pan" / "p.png")
    data = {
        "images": [{"id": 3, "file_name": "p.jpg", "height": 10, "width": 12}],
        "annotations": [
            {
                "image_id": 3,
                "file_name": "p.png",
                "segments_info": [
                    {"id": 5, "category_id": 20, "iscrowd": 0},
                    {"id": 6, "category_id": 10, "iscrowd": 0},
                ],
            }
        ],
    }
    (tmp_path / "pan.json").write_text(json.dumps(data))
    categories = [{"id": 10, "name": "car", "isthing": 1}, {"id": 20, "name": "sky", "isthing": 0}]
    return categories, str(tmp_path / "img"), str(tmp_path / "pan"), str(tmp_path / "pan.json")


def test_register_coco_panoptic_dataset_and_map(tmp_path):
    categories, img, pan, pan_json = _panoptic_files(tmp_path)
    name = _name("custom_pan")
    register_coco_panoptic_dataset(name, categories, img, pan, pan_json)
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["car", "sky"] and meta.thing_classes == ["car"]
    (record,) = DatasetCatalog.get(name)
    assert [s["category_id"] for s in record["segments_info"]] == [1, 0]
    mapper = MaskFormerPanopticDatasetMapper(
        augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1
    )
    inst = mapper(record)["instances"]
    assert inst.gt_classes.tolist() == [1, 0]
    assert inst.gt_masks.sum(dim=(1, 2)).tolist() == [60, 24]


def test_register_coco_panoptic_dataset_unknown_category(tmp_path):
    categories, img, pan, pan_json = _panoptic_files(tmp_path)
    with pytest.raises(ValueError, match=r"\[20\]"):
        register_coco_panoptic_dataset(_name("x"), categories[:1], img, pan, pan_json)


def _cfg(mapper, dataset, num_classes):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg


def test_check_dataset_config_accepts_official_settings():
    check_dataset_config(_cfg("coco_panoptic_lsj", "coco_2017_train_panoptic_with_sem_seg", 133))
    check_dataset_config(_cfg("coco_instance_lsj", "coco_2017_train", 80))
    check_dataset_config(_cfg("mask_former_semantic", "ade20k_sem_seg_train", 150))
    check_dataset_config(_cfg("mask_former_panoptic", "ade20k_panoptic_train", 150))
    check_dataset_config(_cfg("mask_former_instance", "ade20k_instance_train", 100))
    check_dataset_config(_cfg("mask_former_semantic", "cityscapes_fine_sem_seg_train", 19))
    check_dataset_config(_cfg("mask_former_instance", "cityscapes_fine_instance_seg_train", 8))


def test_check_dataset_config_class_count_message():
    with pytest.raises(ValueError) as err:
        check_dataset_config(_cfg("mask_former_semantic", "ade20k_sem_seg_train", 171))
    msg = str(err.value)
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES=171" in msg and "150 stuff_classes" in msg
    assert "ade20k_sem_seg_train" in msg


def test_check_dataset_config_mapper_mismatch_message():
    with pytest.raises(ValueError) as err:
        check_dataset_config(_cfg("coco_panoptic_lsj", "ade20k_sem_seg_train", 150))
    msg = str(err.value)
    assert "INPUT.DATASET_MAPPER_NAME='coco_panoptic_lsj'" in msg and "panoptic" in msg
    with pytest.raises(ValueError, match="instance annotations"):
        check_dataset_config(_cfg("coco_instance_lsj", "coco_2017_train_panoptic_with_sem_seg", 80))
    with pytest.raises(ValueError, match="valid names"):
        check_dataset_config(_cfg("nope", "coco_2017_train", 80))
