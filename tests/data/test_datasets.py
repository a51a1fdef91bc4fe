"""Built-in dataset registrations: names, class counts, lazy loading with clear errors."""

import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import mask2former  # noqa: F401  (registers the datasets)
from mask2former.data.datasets.ade20k_categories import (
    ADE20K_150_CATEGORIES,
    ADE20K_INSTANCE_CATEGORIES,
)
from mask2former.data.datasets.common import check_dataset_paths
from mask2former.data.datasets.register_ade20k_full import ade20k_full_categories

# name -> (evaluator_type, #stuff_classes or None, #thing_classes or None)
EXPECTED = {
    "coco_2017_train_panoptic_with_sem_seg": ("coco_panoptic_seg", 133, 80),
    "coco_2017_val_panoptic_with_sem_seg": ("coco_panoptic_seg", 133, 80),
    "ade20k_panoptic_train": ("ade20k_panoptic_seg", 150, 100),
    "ade20k_panoptic_val": ("ade20k_panoptic_seg", 150, 100),
    "ade20k_instance_train": ("coco", None, 100),
    "ade20k_instance_val": ("coco", None, 100),
    "ade20k_sem_seg_train": ("sem_seg", 150, None),
    "ade20k_full_sem_seg_train": ("sem_seg", 847, None),
    "ade20k_full_sem_seg_val": ("sem_seg", 847, None),
    "mapillary_vistas_sem_seg_train": ("sem_seg", 65, None),
    "mapillary_vistas_sem_seg_val": ("sem_seg", 65, None),
    "mapillary_vistas_panoptic_train": ("mapillary_vistas_panoptic_seg", 65, 65),
    "mapillary_vistas_panoptic_val": ("mapillary_vistas_panoptic_seg", 65, 65),
    "coco_2017_train_stuff_10k_sem_seg": ("sem_seg", 171, None),
    "coco_2017_test_stuff_10k_sem_seg": ("sem_seg", 171, None),
    "coco_2017_train": ("coco", None, 80),
    "cityscapes_fine_sem_seg_train": ("cityscapes_sem_seg", 19, None),
    "cityscapes_fine_instance_seg_train": ("cityscapes_instance", None, 8),
    "cityscapes_fine_panoptic_train": ("cityscapes_panoptic_seg", 19, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_names_and_class_counts(name):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    evaluator, n_stuff, n_thing = EXPECTED[name]
    assert meta.evaluator_type == evaluator
    if n_stuff is not None:
        assert len(meta.stuff_classes) == n_stuff
    if n_thing is not None:
        assert len(meta.thing_classes) == n_thing


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_dataset_folder_is_a_clear_error(name):
    meta = MetadataCatalog.get(name)
    paths = [meta.get(k) for k in ("image_root", "image_dir") if meta.get(k)]
    if all(os.path.exists(p) for p in paths):
        pytest.skip(f"{name} is present on this machine")
    with pytest.raises(FileNotFoundError, match="datasets/README.md") as err:
        DatasetCatalog.get(name)
    assert name in str(err.value) and "does not exist" in str(err.value)


def test_check_dataset_paths_names_the_path(tmp_path):
    check_dataset_paths("x", {"image_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        check_dataset_paths("x", {"image_root": str(tmp_path / "missing_dir")})


def test_panoptic_metadata_maps():
    meta = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert len(meta.stuff_dataset_id_to_contiguous_id) == 133
    assert len(meta.thing_dataset_id_to_contiguous_id) == 80
    assert meta.sem_seg_root.endswith("panoptic_semseg_val2017")
    assert meta.ignore_label == 255 and meta.label_divisor == 1000


def test_ade20k_category_facts():
    things = [c for c in ADE20K_150_CATEGORIES if c["isthing"]]
    assert len(ADE20K_150_CATEGORIES) == 150 and len(things) == 100
    assert [c["id"] for c in things] == [c["id"] for c in ADE20K_INSTANCE_CATEGORIES]
    assert ADE20K_150_CATEGORIES[7]["name"] == "bed" and ADE20K_150_CATEGORIES[7]["isthing"]
    assert MetadataCatalog.get("ade20k_sem_seg_val").stuff_colors[0] == [120, 120, 120]
    inst_meta = MetadataCatalog.get("ade20k_instance_val")
    assert inst_meta.thing_dataset_id_to_contiguous_id[7] == 0


def test_ade20k_full_classes():
    cats = ade20k_full_categories()
    assert len(cats) == 847
    assert len({c["id"] for c in cats}) == 847 and len({c["name"] for c in cats}) == 847
    assert cats[0] == {"name": "wall", "id": 2978, "trainId": 0}
    assert cats[-1]["name"] == "adding machine, totalizer, totaliser"
    assert MetadataCatalog.get("ade20k_full_sem_seg_val").ignore_label == 65535


def test_mapillary_ignore_label():
    assert MetadataCatalog.get("mapillary_vistas_sem_seg_val").ignore_label == 65
    assert MetadataCatalog.get("mapillary_vistas_sem_seg_val").stuff_classes[-1] == "Ego Vehicle"
