"""``TransfinerRCNN``: Detectron2's ``GeneralizedRCNN`` with the attributes the package's
:class:`~mask2former.predictor.Predictor` reads from a model that runs its own eval forward
(``size_divisibility``; ``pixel_mean`` is already there). Parameters and checkpoint keys are
``GeneralizedRCNN``'s, so the reference's checkpoints load unchanged.
"""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

__all__ = ["TransfinerRCNN"]


@META_ARCH_REGISTRY.register()
class TransfinerRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` (R-CNN forward, training and inference unchanged)."""

    @property
    def size_divisibility(self) -> int:
        """Padded input sides are multiples of this (the backbone's; FPN: 32)."""
        return self.backbone.size_divisibility
