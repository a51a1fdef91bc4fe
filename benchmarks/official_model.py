"""Loads the official Mask2Former code (facebookresearch/Mask2Former) next to this package, for
side-by-side measurements on the CPU. Nothing of the official code is part of this project: the
caller points at a checkout of it (``--official-root``, the folder holding its ``mask2former/``
package).

How it is loaded, without touching the checkout:

- under another top-level name (:data:`OFFICIAL_PACKAGE`), because its package is also called
  ``mask2former``; its top-level and ``modeling`` ``__init__`` files are not run (they import
  its datasets, evaluation and Swin, which a CPU timing of the R50 model does not need);
- its compiled deformable-attention op (``MultiScaleDeformableAttention``, CUDA only) is
  replaced, while its function module is imported, by a stand-in whose forward is the official
  pure-PyTorch ``ms_deform_attn_core_pytorch`` (and whose backward differentiates that
  function), which is what the official code runs on a machine without the op;
- its Detectron2 registrations (``MaskFormer``, ``MaskFormerHead``,
  ``MSDeformAttnPixelDecoder``) clash with this package's names, so they are taken out of the
  registries after the import and put back only while :func:`build_official_model` builds.

    official = load_official("/path/to/Mask2Former")
    model = build_official_model(official, cfg)   # cfg: this package's config (a superset)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from dataclasses import dataclass, field

import torch
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

__all__ = ["OFFICIAL_PACKAGE", "OfficialCode", "build_official_model", "load_official"]

OFFICIAL_PACKAGE = "official_mask2former"
# Official modules imported, in order (relative to its ``mask2former`` package).
_MODULES = (
    "modeling.pixel_decoder.ops.functions.ms_deform_attn_func",
    "modeling.pixel_decoder.msdeformattn",
    "modeling.transformer_decoder.mask2former_transformer_decoder",
    "modeling.meta_arch.mask_former_head",
    "maskformer_model",
)
# Packages whose ``__init__`` is not run (a bare package module stands in).
_BARE_PACKAGES = ("", "modeling")
_REGISTRIES = (META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY)


@dataclass
class OfficialCode:
    """The loaded official modules and what they registered."""

    root: str
    modules: dict[str, types.ModuleType]
    # registry -> {name: class} registered by the official code
    registrations: dict[object, dict[str, type]] = field(default_factory=dict)

    @property
    def maskformer_model(self) -> types.ModuleType:
        return self.modules["maskformer_model"]

    @property
    def config(self) -> types.ModuleType:
        return importlib.import_module(f"{OFFICIAL_PACKAGE}.config")


def _msda_stand_in() -> types.ModuleType:
    """A ``MultiScaleDeformableAttention`` module that runs the official pure-PyTorch core."""

    def core():
        name = f"{OFFICIAL_PACKAGE}.{_MODULES[0]}"
        return sys.modules[name].ms_deform_attn_core_pytorch

    def ms_deform_attn_forward(value, shapes, level_start_index, locations, weights, im2col_step):
        return core()(value, shapes, locations, weights)

    def ms_deform_attn_backward(
        value, shapes, level_start_index, locations, weights, grad_output, im2col_step
    ):
        inputs = [t.detach().requires_grad_(True) for t in (value, locations, weights)]
        with torch.enable_grad():
            output = core()(inputs[0], shapes, inputs[1], inputs[2])
            return torch.autograd.grad(output, inputs, grad_output)

    module = types.ModuleType("MultiScaleDeformableAttention")
    module.ms_deform_attn_forward = ms_deform_attn_forward
    module.ms_deform_attn_backward = ms_deform_attn_backward
    return module


def load_official(root: str) -> OfficialCode:
    """Imports the official model code from ``root`` (a checkout of facebookresearch/
    Mask2Former, or a folder with the same ``mask2former/`` layout). Loads once per process."""
    package_dir = os.path.join(os.path.abspath(root), "mask2former")
    missing = [
        m for m in _MODULES if not os.path.isfile(os.path.join(package_dir, *m.split(".")) + ".py")
    ]
    if missing:
        raise FileNotFoundError(
            f"--official-root {root!r}: no official Mask2Former code there "
            f"(missing {', '.join(m.replace('.', '/') + '.py' for m in missing)} under "
            f"{package_dir})"
        )
    loaded = sys.modules.get(OFFICIAL_PACKAGE)
    if loaded is not None:
        if getattr(loaded, "__official_root__", None) != os.path.abspath(root):
            raise RuntimeError(
                f"official code already loaded from {loaded.__official_root__}, not {root}"
            )
        return loaded.__official_code__

    for rel in _BARE_PACKAGES:
        name = OFFICIAL_PACKAGE + (f".{rel}" if rel else "")
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(package_dir, *rel.split(".")) if rel else package_dir]
        package.__package__ = name
        sys.modules[name] = package
    sys.modules[OFFICIAL_PACKAGE].__official_root__ = os.path.abspath(root)

    saved_maps = {r: dict(r._obj_map) for r in _REGISTRIES}
    previous_op = sys.modules.get("MultiScaleDeformableAttention")
    sys.modules["MultiScaleDeformableAttention"] = _msda_stand_in()
    modules = {}
    try:
        for r in _REGISTRIES:
            r._obj_map.clear()
        for rel in _MODULES:
            modules[rel] = importlib.import_module(f"{OFFICIAL_PACKAGE}.{rel}")
        registrations = {r: dict(r._obj_map) for r in _REGISTRIES}
    finally:
        for r, saved in saved_maps.items():
            r._obj_map.clear()
            r._obj_map.update(saved)
        if previous_op is None:
            del sys.modules["MultiScaleDeformableAttention"]
        else:
            sys.modules["MultiScaleDeformableAttention"] = previous_op
    code = OfficialCode(os.path.abspath(root), modules, registrations)
    sys.modules[OFFICIAL_PACKAGE].__official_code__ = code
    return code


@contextlib.contextmanager
def official_registrations(code: OfficialCode):
    """The official classes in the Detectron2 registries (this package's ones afterwards)."""
    saved_maps = {r: dict(r._obj_map) for r in _REGISTRIES}
    try:
        for r, entries in code.registrations.items():
            r._obj_map.update(entries)
        yield
    finally:
        for r, saved in saved_maps.items():
            r._obj_map.clear()
            r._obj_map.update(saved)


def build_official_model(code: OfficialCode, cfg) -> torch.nn.Module:
    """The official ``MaskFormer`` built from ``cfg`` (this package's config: it has every key
    the official one reads), on ``cfg.MODEL.DEVICE``, in eval mode."""
    with official_registrations(code):
        model = code.maskformer_model.MaskFormer(cfg)
    return model.to(torch.device(cfg.MODEL.DEVICE)).eval()
