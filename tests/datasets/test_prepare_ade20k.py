"""datasets/prepare_ade20k_*.py on ADE20K miniatures in the real file formats."""

import json
import pickle

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from mask2former.data import MaskFormerPanopticDatasetMapper
from mask2former.data.datasets.ade20k_categories import ADE20K_150_CATEGORIES
from mask2former.data.datasets.common import load_panoptic_json, panoptic_metadata
from mask2former.data.datasets.register_ade20k_full import ade20k_full_categories
from mask2former.data.utils import rgb2id

H, W = 12, 16


def _write_ade(root):
    """Two training images, one validation image. Returns the raw arrays of the first."""
    ade = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for sub in ("images", "annotations", "annotations_instance"):
            (ade / sub / split).mkdir(parents=True)
    # Semantic (0 = other, v = class v - 1): wall (0), sky (2), and a bed (7, a thing).
    sem = np.zeros((H, W), np.uint8)
    sem[:4] = 1  # wall
    sem[4:8] = 3  # sky
    sem[8:, :8] = 8  # bed region in semantics
    # Instances: R = instance class (1 = bed -> semantic 7), G = instance id.
    ins = np.zeros((H, W, 3), np.uint8)
    ins[8:, :8] = (1, 1, 0)  # bed #1
    ins[2:6, 10:14] = (4, 2, 0)  # person (instance class 4 -> semantic 12), over wall/floor
    stems = [
        ("training", "ADE_train_00000001"),
        ("training", "ADE_train_00000002"),
        ("validation", "ADE_val_00000001"),
    ]
    for split, stem in stems:
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(
            ade / "images" / split / f"{stem}.jpg"
        )
        Image.fromarray(sem).save(ade / "annotations" / split / f"{stem}.png")
        Image.fromarray(ins).save(ade / "annotations_instance" / split / f"{stem}.png")
    # The second training image has no instances at all.
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        ade / "annotations_instance" / "training" / "ADE_train_00000002.png"
    )
    return ade, sem, ins


def test_prepare_ade20k_sem_seg(tmp_path, prepare_script):
    ade, sem, _ = _write_ade(tmp_path)
    prepare_script("prepare_ade20k_sem_seg").main(["--root", str(tmp_path)])
    out = np.asarray(
        Image.open(ade / "annotations_detectron2" / "training" / "ADE_train_00000001.png")
    )
    expected = sem.astype(np.int64) - 1
    expected[expected < 0] = 255
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    assert (ade / "annotations_detectron2" / "validation" / "ADE_val_00000001.png").exists()


def test_prepare_ade20k_pan_seg(tmp_path, prepare_script):
    ade, sem, ins = _write_ade(tmp_path)
    prepare_script("prepare_ade20k_pan_seg").main(["--root", str(tmp_path)])
    data = json.loads((ade / "ade20k_panoptic_train.json").read_text())
    assert [im["id"] for im in data["images"]] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert data["images"][0]["width"] == W and len(data["categories"]) == 150
    ann = data["annotations"][0]
    pan = rgb2id(np.asarray(Image.open(ade / "ade20k_panoptic_train" / ann["file_name"])))
    by_cat = {s["category_id"]: s for s in ann["segments_info"]}
    assert sorted(by_cat) == [0, 2, 7, 12]  # wall, sky (stuff); bed, person (things)
    assert not any(ADE20K_150_CATEGORIES[c]["isthing"] for c in (0, 2))
    for seg in ann["segments_info"]:  # areas and boxes describe the written PNG
        mask = pan == seg["id"]
        assert seg["area"] == mask.sum() > 0 and seg["iscrowd"] == 0
        x, y, w, h = seg["bbox"]
        assert mask[y : y + h, x : x + w].sum() == seg["area"]
    assert (pan[ins[..., 1] == 2] == by_cat[12]["id"]).all()  # things pasted over stuff
    assert by_cat[0]["area"] == 4 * W - 2 * 4  # wall minus the person's part
    assert (pan[8:, 8:] == 0).all()  # "other" stays void
    # The second image: stuff only, the bed region of the semantics is not a segment.
    cats2 = {s["category_id"] for s in data["annotations"][1]["segments_info"]}
    assert cats2 == {0, 2}

    # The output loads and maps like the registered ade20k_panoptic_* datasets.
    records = load_panoptic_json(
        str(ade / "ade20k_panoptic_train.json"),
        str(ade / "images" / "training"),
        str(ade / "ade20k_panoptic_train"),
        None,
        panoptic_metadata(ADE20K_150_CATEGORIES),
    )
    mapper = MaskFormerPanopticDatasetMapper(
        augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1
    )
    inst = mapper(records[0])["instances"]
    assert sorted(inst.gt_classes.tolist()) == [0, 2, 7, 12]
    assert inst.gt_masks.sum() == (pan > 0).sum() and inst.gt_masks.sum(0).max() == 1


def test_prepare_ade20k_ins_seg(tmp_path, prepare_script):
    ade, _, ins = _write_ade(tmp_path)
    prepare_script("prepare_ade20k_ins_seg").main(["--root", str(tmp_path)])
    data = json.loads((ade / "ade20k_instance_train.json").read_text())
    assert len(data["categories"]) == 100 and data["categories"][0] == {"id": 7, "name": "bed"}
    anns = [a for a in data["annotations"] if a["image_id"] == "ADE_train_00000001"]
    assert [a["category_id"] for a in anns] == [7, 12]
    assert [a["id"] for a in data["annotations"]] == [1, 2]  # the empty image adds none
    for a, inst_id in zip(anns, (1, 2)):
        mask = mask_util.decode(a["segmentation"]).astype(bool)
        assert np.array_equal(mask, ins[..., 1] == inst_id)
        assert a["area"] == mask.sum() and a["iscrowd"] == 0
    assert a["bbox"] == [10, 2, 4, 4]


def test_ade20k_instance_with_two_classes_is_refused(tmp_path, prepare_script):
    ade, _, ins = _write_ade(tmp_path)
    bad = ins.copy()
    bad[8, 0, 0] = 5  # bed instance #1 gets a second class on one pixel
    Image.fromarray(bad).save(ade / "annotations_instance" / "training" / "ADE_train_00000001.png")
    with pytest.raises(ValueError, match="ADE_train_00000001.png"):
        prepare_script("prepare_ade20k_ins_seg").main(["--root", str(tmp_path)])


def test_prepare_ade20k_full_sem_seg(tmp_path, prepare_script):
    ade = tmp_path / "ADE20K_2021_17_01"
    folder = "ADE20K_2021_17_01/images/ADE/training/home"
    (tmp_path / folder).mkdir(parents=True)
    cats = ade20k_full_categories()
    wall, bed = cats[0], cats[7]  # full index ids 2978 and 165
    seg = np.zeros((600, 700, 3), np.uint8)

    def encode(class_index):  # class index = R / 10 * 256 + G
        return (class_index // 256) * 10, class_index % 256

    seg[:300, :, :2] = encode(wall["id"])
    seg[300:, :350, :2] = encode(bed["id"])
    seg[300:, 350:, :2] = encode(5)  # a class outside the 847 -> ignore
    name = "ADE_train_00000009.jpg"
    Image.fromarray(np.full((600, 700, 3), 50, np.uint8)).save(tmp_path / folder / name)
    Image.fromarray(seg).save(tmp_path / folder / name.replace(".jpg", "_seg.png"))
    ade.mkdir(exist_ok=True)
    with open(ade / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": [folder], "filename": [name]}, f)

    prepare_script("prepare_ade20k_full_sem_seg").main(["--root", str(tmp_path)])
    img = Image.open(ade / "images_detectron2" / "training" / name)
    assert img.size == (597, 512)  # shorter side 600 -> 512
    label = np.asarray(
        Image.open(ade / "annotations_detectron2" / "training" / name.replace(".jpg", ".tif"))
    )
    assert label.dtype == np.uint16 and label.shape == (512, 597)
    assert set(np.unique(label).tolist()) == {0, 7, 65535}
    assert (
        (label[:250] == 0).all()
        and (label[300:, :290] == 7).all()
        and (label[300:, 310:] == 65535).all()
    )
