"""Mask Transfiner's config keys (``MODEL.TRANSFINER``), with the reference's values.

The reference (SysCV/transfiner) has no keys of its own: every value below is hard-coded there
(mostly in its edited ``mask_head.py`` and ``poolers.py``). The defaults reproduce it.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_transfiner_config"]


def add_transfiner_config(cfg: CN) -> None:
    """Add the ``MODEL.TRANSFINER`` keys to ``cfg`` (works next to the Mask2Former keys)."""
    cfg.MODEL.TRANSFINER = CN()
    t = cfg.MODEL.TRANSFINER
    # Side of the RoI grids of the three quadtree levels (each twice the previous one); the
    # coarse mask is predicted at LEVEL_SIZES[0] = 2 x ROI_MASK_HEAD.POOLER_RESOLUTION.
    t.LEVEL_SIZES = (28, 56, 112)
    # RoIs refined per image: the first foreground proposals in training, the top-scoring
    # detections at test time (the reference counts 30 / 10 over the whole batch).
    t.MAX_REFINE_ROIS_TRAIN = 30
    t.MAX_REFINE_ROIS_TEST = 10
    # Training: nodes drawn per quadtree level and RoI (tiled if fewer are selected) ...
    t.NODES_PER_LEVEL_TRAIN = 150
    # ... and a RoI with fewer selected nodes than this at any level gets no refine loss.
    t.MIN_NODES_PER_LEVEL = 10
    # Node selection: incoherence probability >= threshold, per level (28, 56, 112); the finer
    # levels compare the nearest-upsampled 28x28 incoherence map.
    t.INC_THRESH_TRAIN = (0.125, 0.5, 0.5)
    t.INC_THRESH_TEST = (1e-6, 0.125, 0.8)
    # Sequence encoder: layers, attention heads, token width, FFN width, dropout.
    t.ENC_LAYERS = 3
    t.NHEADS = 4
    t.HIDDEN_DIM = 256
    t.DIM_FEEDFORWARD = 2048
    t.DROPOUT = 0.1
    # Add each token's 3x3 neighbourhood features (a linear layer, encoder.context_fc), as the
    # paper describes; the reference's code and released weights have none (default off).
    t.NODE_CONTEXT_3X3 = False
    # Incoherence detector: widths of its 3x3 convs (the last one is also the deconv width).
    t.INC_CONV_DIMS = (256, 256, 256, 128)
    # 3x3 convs of the P2 refiner whose output is added to P2 before the 28/56/112 pooling.
    t.P2_REFINE_CONVS = 4
    # Incoherence ground truth: residue values >= GT_RESIDUE_THRESH count as 1, then cells
    # >= GT_CROP_THRESH of the 28x28 target are incoherent.
    t.GT_RESIDUE_THRESH = 0.01
    t.GT_CROP_THRESH = 0.05
    # Keep the sign of the residue mask - up(down(mask)) as the reference's code does (only the
    # inner side of a contour is incoherent); False: its absolute value (paper, spec section 1).
    t.GT_SIGNED_RESIDUE = True
    # Loss weights: coarse mask BCE, incoherence dice+BCE, refine L1, P2 foreground BCE,
    # boundary BCE (the reference adds the boundary BCE twice; the weight applies to the sum).
    t.COARSE_WEIGHT = 1.0
    t.INCOHERENT_WEIGHT = 0.5
    t.REFINE_WEIGHT = 1.0
    t.SEMANTIC_WEIGHT = 0.25
    t.BOUNDARY_WEIGHT = 0.5
    # Test-time post-processing: dilate the 112 node set 3x3 and blur the refined 112 mask with a
    # 7x7 binomial kernel (the reference does this only when VIS_PERIOD == 100).
    t.TEST_DILATE_AND_BLUR = False
    # align_corners of the bilinear 2x upsamplings between the quadtree levels at inference.
    # True is the reference's: it stretches the grid, so the cells no node refines move outwards
    # by up to half a coarse cell (a perfect 28x28 disc upsampled to 112 loses about 4 IoU
    # points against align_corners=False, the convention of RoIAlign's targets and of the
    # upsampled coarse mask of the other RoIs). False: keep the cell-centre geometry.
    t.UPSAMPLE_ALIGN_CORNERS = True
    # Evaluation: also report Boundary AP (faster-coco-eval's boundary IoU) next to Mask AP.
    t.BOUNDARY_AP = False
    # Boundary IoU's dilation ratio (fraction of the image diagonal), as in the Boundary IoU paper.
    t.BOUNDARY_DILATION_RATIO = 0.02
