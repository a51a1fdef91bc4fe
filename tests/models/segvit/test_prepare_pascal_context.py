"""datasets/prepare_pascal_context.py on a PASCAL-Context miniature in the release's formats."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data.datasets import load_sem_seg
from PIL import Image

from mask2former.models.segvit.datasets import PASCAL_CONTEXT_59_CLASSES

SCRIPT = Path(__file__).resolve().parents[3] / "datasets" / "prepare_pascal_context.py"
H, W = 6, 8


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_pascal_context", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_set_ids():
    """Ids of the 59 classes in a made-up full label list: 3, 10, 17, ... (class c: 7c + 3)."""
    return {name: 7 * c + 3 for c, name in enumerate(PASCAL_CONTEXT_59_CLASSES)}


def write_release(root: Path, names: dict[str, int], splits: dict[str, list[str]]) -> dict:
    """VOC 2010 images and split lists, the .mat label maps and labels.txt; returns the maps."""
    voc, context = root / "VOCdevkit" / "VOC2010", root / "pascal_context"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (context / "trainval").mkdir(parents=True)
    lines = [f"{i}: {n}" for n, i in names.items()] + ["1: accordion", "2: airplane-other"]
    (context / "labels.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    pool = np.array([0, 1, 2, *names.values()], dtype=np.uint16)  # 0 unlabelled, 1-2 others
    maps = {}
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            label_map = rng.choice(pool, size=(H, W)).astype(np.uint16)
            scipy.io.savemat(context / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
                voc / "JPEGImages" / f"{image_id}.jpg"
            )
            maps[image_id] = label_map
    return maps


def test_labels_are_the_59_classes_in_order_and_the_rest_ignored(tmp_path):
    names = full_set_ids()
    maps = write_release(
        tmp_path, names, {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    )
    assert load_script().prepare(
        str(tmp_path), str(tmp_path / "VOCdevkit" / "VOC2010"), str(tmp_path / "pascal_context")
    ) == {"train": 2, "val": 1}
    out = tmp_path / "pascal_ctx_d2"
    expected_of = {i: c for c, i in enumerate(names.values())}  # full-set id -> 0..58
    for image_id, label_map in maps.items():
        folder = "validation" if image_id == "2008_000007" else "training"
        got = np.asarray(Image.open(out / "annotations_ctx59" / folder / f"{image_id}.png"))
        expected = np.vectorize(lambda v: expected_of.get(int(v), 255))(label_map)
        np.testing.assert_array_equal(got, expected)
    records = load_sem_seg(
        str(out / "annotations_ctx59" / "training"),
        str(out / "images" / "training"),
        gt_ext="png",
        image_ext="jpg",
    )
    assert [Path(r["file_name"]).stem for r in records] == ["2008_000002", "2008_000003"]


def test_other_spellings_are_accepted_and_missing_names_named(tmp_path):
    script = load_script()
    names = full_set_ids()
    names["diningtable"] = names.pop("table")  # as in 59_labels.txt
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i}: {n}\n" for n, i in names.items()))
    table = script.lookup_table(script.read_label_names(str(labels)), str(labels))
    assert table[full_set_ids()["table"]] == PASCAL_CONTEXT_59_CLASSES.index("table")
    names.pop("sofa")
    labels.write_text("".join(f"{i}: {n}\n" for n, i in names.items()))
    with pytest.raises(ValueError, match="no class named sofa"):
        script.lookup_table(script.read_label_names(str(labels)), str(labels))


def test_a_split_image_without_labels_and_a_wrong_size_are_errors(tmp_path):
    script = load_script()
    write_release(tmp_path, full_set_ids(), {"train": ["a"], "val": ["b"]})
    voc, context = tmp_path / "VOCdevkit" / "VOC2010", tmp_path / "pascal_context"
    (context / "trainval" / "b.mat").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 1 val images have no label file"):
        script.prepare(str(tmp_path), str(voc), str(context))
    scipy.io.savemat(context / "trainval" / "b.mat", {"LabelMap": np.zeros((H, W + 1), np.uint16)})
    with pytest.raises(ValueError, match=r"b.mat': LabelMap is 9x6, its image .* 8x6"):
        script.prepare(str(tmp_path), str(voc), str(context))
