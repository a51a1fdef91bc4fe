"""Datasets declared in the config (mask2former.data.declared) and the checks run before training
(mask2former.data.checks, mask2former.data.file_checks): one test per bad input, each asserting
that the message names the file and the value."""

import json
import uuid

import numpy as np
import pytest
from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mask2former.config import UnknownConfigKeyError, load_config
from mask2former.data.checks import check_dataset_config
from mask2former.data.declared import register_declared_datasets
from mask2former.data.utils import id2rgb


def _name(prefix: str = "decl") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _image(path, h=20, w=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _config(name: str, spec: dict, mapper: str, num_classes: int):
    cfg = load_config()
    cfg.DATASETS.CUSTOM[name] = CN(spec)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg


def _coco(tmp_path, categories=None, category_id=7, images=("a.jpg",)):
    for file_name in images:
        _image(tmp_path / "images" / file_name)
    data = {
        "images": [
            {"id": i + 1, "file_name": f, "height": 20, "width": 30} for i, f in enumerate(images)
        ],
        "annotations": [{
            "id": 1, "image_id": 1, "category_id": category_id, "bbox": [1, 1, 5, 5],
            "area": 25, "iscrowd": 0, "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]],
        }],
        "categories": categories or [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
    }  # fmt: skip
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    spec = {"FORMAT": "coco_instance", "JSON_FILE": str(path),
            "IMAGE_ROOT": str(tmp_path / "images")}
    return spec, path


def _semantic(tmp_path, labels: np.ndarray, image_size=(20, 30), categories=None):
    _image(tmp_path / "images" / "a.jpg", *image_size)
    (tmp_path / "labels").mkdir()
    Image.fromarray(labels).save(tmp_path / "labels" / "a.png")
    cats = tmp_path / "categories.json"
    categories = categories or [{"id": 0, "name": "road"}, {"id": 1, "name": "car"}]
    cats.write_text(json.dumps({"categories": categories}))
    spec = {"FORMAT": "sem_seg", "IMAGE_ROOT": str(tmp_path / "images"),
            "SEM_SEG_ROOT": str(tmp_path / "labels"), "CATEGORIES_JSON": str(cats)}
    return spec, tmp_path / "labels" / "a.png", cats


def _panoptic(tmp_path, segment_category=1, png_size=(20, 30)):
    _image(tmp_path / "images" / "a.jpg")
    (tmp_path / "pan").mkdir()
    pan = np.zeros(png_size, np.int64)  # (H, W) segment ids
    pan[2:8, 2:8] = 5
    Image.fromarray(id2rgb(pan)).save(tmp_path / "pan" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
        "annotations": [{"image_id": 1, "file_name": "a.png",
                         "segments_info": [{"id": 5, "category_id": segment_category,
                                            "iscrowd": 0}]}],
        "categories": [{"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
                       {"id": 2, "name": "sky", "isthing": 0, "color": [70, 130, 180]}],
    }
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(data))
    spec = {"FORMAT": "coco_panoptic", "IMAGE_ROOT": str(tmp_path / "images"),
            "PANOPTIC_ROOT": str(tmp_path / "pan"), "PANOPTIC_JSON": str(path)}
    return spec, path, tmp_path / "pan" / "a.png"


def _check(cfg) -> None:
    register_declared_datasets(cfg)
    check_dataset_config(cfg)


# ------------------------------------------------------------------------------- good input


def test_declared_datasets_get_metadata_and_evaluator_from_the_files(tmp_path):
    name_i, name_p, name_s = _name(), _name(), _name()
    spec_i, _ = _coco(tmp_path / "i")
    spec_p, _, _ = _panoptic(tmp_path / "p")
    spec_s, _, _ = _semantic(tmp_path / "s", np.zeros((20, 30), np.uint8))
    cfg = _config(name_i, spec_i, "coco_instance_lsj", 2)
    cfg.DATASETS.CUSTOM[name_p] = CN(spec_p)
    cfg.DATASETS.CUSTOM[name_s] = CN(spec_s)
    cfg.DATASETS.TEST = (name_p, name_s)
    _check(cfg)
    instance, panoptic, semantic = (MetadataCatalog.get(n) for n in (name_i, name_p, name_s))
    assert instance.thing_classes == ["cat", "dog"] and instance.evaluator_type == "coco"
    assert panoptic.thing_classes == ["person"] and panoptic.stuff_classes == ["person", "sky"]
    assert panoptic.stuff_colors == [[220, 20, 60], [70, 130, 180]]
    assert panoptic.evaluator_type == "coco_panoptic_seg"
    assert semantic.stuff_classes == ["road", "car"] and semantic.evaluator_type == "sem_seg"
    assert len(DatasetCatalog.get(name_s)) == 1


def test_registration_is_idempotent_and_follows_the_declaration(tmp_path):
    name = _name()
    spec, _ = _coco(tmp_path)
    cfg = _config(name, spec, "coco_instance_lsj", 2)
    assert register_declared_datasets(cfg) == [name]
    assert register_declared_datasets(cfg) == [name]  # same declaration: left alone
    other, _ = _coco(tmp_path / "other", categories=[{"id": 7, "name": "tiger"}])
    cfg.DATASETS.CUSTOM[name] = CN(other)
    register_declared_datasets(cfg)  # another declaration: replaced
    assert MetadataCatalog.get(name).thing_classes == ["tiger"]


# ------------------------------------------------------------------------- bad declarations


def test_unknown_format_names_the_key_and_value(tmp_path):
    spec, _ = _coco(tmp_path)
    name = _name()
    cfg = _config(name, dict(spec, FORMAT="coco_instances"), "coco_instance_lsj", 2)
    with pytest.raises(ValueError, match=rf"DATASETS.CUSTOM.{name}.FORMAT='coco_instances'"):
        register_declared_datasets(cfg)


def test_missing_field_names_the_key(tmp_path):
    spec, _ = _coco(tmp_path)
    del spec["JSON_FILE"]
    name = _name()
    with pytest.raises(ValueError, match=rf"DATASETS.CUSTOM.{name}.JSON_FILE"):
        register_declared_datasets(_config(name, spec, "coco_instance_lsj", 2))


def test_built_in_name_is_refused(tmp_path):
    spec, _ = _coco(tmp_path)
    cfg = _config("coco_2017_val", spec, "coco_instance_lsj", 2)
    with pytest.raises(ValueError, match="'coco_2017_val' is already registered"):
        register_declared_datasets(cfg)


# ----------------------------------------------------------------- bad input: one test each


def test_class_count_that_does_not_match_num_classes(tmp_path):
    spec, path = _coco(tmp_path)
    cfg = _config(_name(), spec, "coco_instance_lsj", 5)
    with pytest.raises(ValueError) as info:
        _check(cfg)
    message = str(info.value)
    assert "NUM_CLASSES=5" in message and "2 thing_classes ['cat', 'dog']" in message
    assert str(path) in message


def test_non_contiguous_category_ids(tmp_path):
    categories = [{"id": 0, "name": "road"}, {"id": 2, "name": "car"}]
    spec, _, cats = _semantic(tmp_path, np.zeros((20, 30), np.uint8), categories=categories)
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "mask_former_semantic", 2))
    message = str(info.value)
    assert str(cats) in message and "id 1 is missing" in message


def test_unknown_category_id_in_coco_annotations(tmp_path):
    spec, path = _coco(tmp_path, category_id=3)
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "coco_instance_lsj", 2))
    message = str(info.value)
    assert str(path) in message and "category id(s) [3]" in message


def test_unknown_category_id_in_panoptic_segments(tmp_path):
    spec, path, _ = _panoptic(tmp_path, segment_category=8)
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "coco_panoptic_lsj", 2))
    message = str(info.value)
    assert str(path) in message and "category id(s) [8]" in message


def test_unknown_class_id_in_a_semantic_label_png(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[0, 0] = 7
    labels[1, 1] = 255  # the ignore label is fine
    spec, png, _ = _semantic(tmp_path, labels)
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "mask_former_semantic", 2))
    message = str(info.value)
    assert str(png) in message and "value(s) [7]" in message


def test_missing_image(tmp_path):
    spec, path = _coco(tmp_path, images=("a.jpg", "b.jpg"))
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "coco_instance_lsj", 2))
    assert f"image '{tmp_path / 'images' / 'b.jpg'}' does not exist" in str(info.value)


def test_empty_annotation_file(tmp_path):
    spec, path = _coco(tmp_path)
    path.write_text("")
    with pytest.raises(ValueError, match=rf"'{path}' is empty \(0 bytes\)"):
        _check(_config(_name(), spec, "coco_instance_lsj", 2))


def test_unreadable_annotation_file(tmp_path):
    spec, path = _coco(tmp_path)
    path.write_text('{"images": [')
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "coco_instance_lsj", 2))
    message = str(info.value)
    assert str(path) in message and "is not valid JSON" in message and "char 12" in message


def test_annotation_file_without_images(tmp_path):
    spec, path = _coco(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, images=[])))
    with pytest.raises(ValueError, match=rf"'{path}' lists no images"):
        _check(_config(_name(), spec, "coco_instance_lsj", 2))


def test_unreadable_label_png(tmp_path):
    spec, png, _ = _semantic(tmp_path, np.zeros((20, 30), np.uint8))
    png.write_bytes(b"not a png")
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "mask_former_semantic", 2))
    assert f"semantic label '{png}' cannot be read" in str(info.value)


def test_semantic_label_png_of_another_size_than_its_image(tmp_path):
    spec, png, _ = _semantic(tmp_path, np.zeros((10, 30), np.uint8))
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "mask_former_semantic", 2))
    message = str(info.value)
    assert f"semantic label '{png}' is 10x30 (HxW)" in message
    assert str(tmp_path / "images" / "a.jpg") in message and "is 20x30" in message


def test_panoptic_png_of_another_size_than_its_image(tmp_path):
    spec, _, png = _panoptic(tmp_path, png_size=(20, 31))
    with pytest.raises(ValueError) as info:
        _check(_config(_name(), spec, "coco_panoptic_lsj", 2))
    assert f"panoptic PNG '{png}' is 20x31 (HxW)" in str(info.value)


def test_mapper_that_does_not_fit_the_dataset(tmp_path):
    spec, path = _coco(tmp_path)
    cfg = _config(_name(), spec, "mask_former_semantic", 2)
    with pytest.raises(ValueError) as info:
        _check(cfg)
    message = str(info.value)
    assert "INPUT.DATASET_MAPPER_NAME='mask_former_semantic' needs semantic" in message
    assert f"json_file='{path}'" in message


def test_a_dataset_can_be_declared_on_the_command_line():
    cfg = load_config("", [
        "DATASETS.CUSTOM.cli_train.FORMAT", "coco_instance",
        "DATASETS.CUSTOM.cli_train.IMAGE_ROOT", "data/images",
        "DATASETS.CUSTOM.cli_train.JSON_FILE", "data/train.json",
        "DATASETS.TRAIN", "('cli_train',)",
    ])
    assert dict(cfg.DATASETS.CUSTOM.cli_train) == {
        "FORMAT": "coco_instance", "IMAGE_ROOT": "data/images", "JSON_FILE": "data/train.json",
    }
    assert tuple(cfg.DATASETS.TRAIN) == ("cli_train",)
    with pytest.raises(UnknownConfigKeyError, match="DATASETS.CUSTOMS.x.FORMAT"):
        load_config("", ["DATASETS.CUSTOMS.x.FORMAT", "sem_seg"])
