"""Check, before training, that the config's class count and mapper fit the training datasets,
and that the files of the datasets declared in the config (``DATASETS.CUSTOM``) are sound."""

from __future__ import annotations

import logging

from detectron2.data import MetadataCatalog

from .file_checks import check_declared_files

__all__ = ["check_dataset_config", "dataset_tasks", "register_mapper_needs"]

logger = logging.getLogger(__name__)

# What each training mapper needs from a dataset, and which class list its labels index.
_MAPPER_NEEDS = {
    "mask_former_semantic": ("semantic", "stuff_classes"),
    "mask_former_panoptic": ("panoptic", "stuff_classes"),
    "coco_panoptic_lsj": ("panoptic", "stuff_classes"),
    "mask_former_instance": ("instance", "thing_classes"),
    "coco_instance_lsj": ("instance", "thing_classes"),
}



# Config key of the class count that a mapper's model reads, where it is not the MaskFormer
# head's MODEL.SEM_SEG_HEAD.NUM_CLASSES (e.g. MODEL.ROI_HEADS.NUM_CLASSES for R-CNN families).
_NUM_CLASSES_KEYS: dict[str, str] = {}
_DEFAULT_NUM_CLASSES_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def register_mapper_needs(
    name: str, task: str, classes_key: str, num_classes_key: str = _DEFAULT_NUM_CLASSES_KEY
) -> None:
    """Record what training mapper ``name`` needs (see ``register_train_mapper``)."""
    _MAPPER_NEEDS[name] = (task, classes_key)
    _NUM_CLASSES_KEYS[name] = num_classes_key


_SEMANTIC_EVALUATORS = {"sem_seg", "cityscapes_sem_seg"}
_INSTANCE_EVALUATORS = {"coco", "lvis", "cityscapes_instance"}


def dataset_tasks(meta) -> set[str]:
    """The annotation kinds a registered dataset provides, judged from its metadata:
    "panoptic" (panoptic PNGs + json), "semantic" (label maps), "instance" (per-object
    annotations). Empty when the metadata does not tell."""
    tasks = set()
    if meta.get("panoptic_root") or meta.get("panoptic_json"):
        tasks.add("panoptic")
    if meta.get("sem_seg_root") or meta.get("evaluator_type") in _SEMANTIC_EVALUATORS:
        tasks.add("semantic")
    if meta.get("evaluator_type") in _INSTANCE_EVALUATORS:
        tasks.add("instance")
    return tasks


def _source(meta) -> str:
    """Where a declared dataset's classes come from (a file or a config key), for messages."""
    source = meta.get("classes_from")
    return f", classes from '{source}'" if source else ""


def check_dataset_config(cfg) -> None:
    """Raise ValueError if ``cfg`` does not fit its training datasets.

    Checks, for every dataset in ``cfg.DATASETS.TRAIN``:
    - ``cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (or the key the mapper registered, e.g.
      ``MODEL.ROI_HEADS.NUM_CLASSES``) equals the number of classes the mapper's targets
      index: ``stuff_classes`` for the semantic and panoptic mappers, ``thing_classes`` for
      the instance mappers;
    - ``cfg.INPUT.DATASET_MAPPER_NAME`` fits the annotations (panoptic mappers need panoptic
      annotations, instance mappers instance annotations, the semantic mapper label maps).
    All problems are reported together, each naming the config key and the dataset (and, for a
    dataset declared in ``DATASETS.CUSTOM``, the file its classes come from). Then the files of
    the declared datasets in ``DATASETS.TRAIN`` and ``DATASETS.TEST`` are checked
    (:func:`~mask2former.data.file_checks.check_declared_files`).
    """
    mapper = cfg.INPUT.DATASET_MAPPER_NAME
    if mapper not in _MAPPER_NEEDS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME={mapper!r} is not a known mapper; valid names: "
            f"{sorted(_MAPPER_NEEDS)}"
        )
    needed_task, class_key = _MAPPER_NEEDS[mapper]
    num_classes_key = _NUM_CLASSES_KEYS.get(mapper, _DEFAULT_NUM_CLASSES_KEY)
    num_classes = cfg
    for part in num_classes_key.split("."):
        num_classes = num_classes[part]
    problems = []
    if not cfg.DATASETS.TRAIN:
        problems.append("DATASETS.TRAIN is empty")
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        classes = meta.get(class_key)
        if classes is None:
            problems.append(
                f"dataset '{name}' has no '{class_key}' in its metadata, which "
                f"INPUT.DATASET_MAPPER_NAME={mapper!r} needs to check {num_classes_key}="
                f"{num_classes} (is '{name}' registered, and for this task?)"
            )
        elif len(classes) != num_classes:
            problems.append(
                f"{num_classes_key}={num_classes} but dataset '{name}' has "
                f"{len(classes)} {class_key}{_listed(classes)} (used by "
                f"INPUT.DATASET_MAPPER_NAME={mapper!r}{_source(meta)})"
            )
        tasks = dataset_tasks(meta)
        if not tasks:
            logger.warning(
                f"Cannot tell which annotations dataset '{name}' has (no panoptic_root, "
                f"sem_seg_root or known evaluator_type); not checking the mapper {mapper!r}"
            )
        elif needed_task not in tasks:
            problems.append(
                f"INPUT.DATASET_MAPPER_NAME={mapper!r} needs {needed_task} annotations, but "
                f"dataset '{name}' has {sorted(tasks)} "
                f"(evaluator_type={meta.get('evaluator_type')!r}{_declared_files(meta)})"
            )
    if problems:
        raise ValueError("Dataset/config mismatch:\n  - " + "\n  - ".join(problems))
    check_declared_files(cfg)


def _listed(classes, most: int = 20) -> str:
    """`` [names]`` for a short class list, nothing for a long one."""
    return f" {list(classes)}" if len(classes) <= most else ""


def _declared_files(meta) -> str:
    """The annotation files of a dataset, for the mapper message."""
    files = [
        f"{key}='{meta.get(key)}'"
        for key in ("json_file", "panoptic_json", "sem_seg_root")
        if meta.get(key)
    ]
    return ", " + ", ".join(files) if files else ""
