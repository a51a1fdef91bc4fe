"""Pixel decoder with a multi-scale deformable-attention encoder (Mask2Former's default).

The encoder (Deformable DETR, encoder only) refines the projected low-resolution backbone
levels (res3..res5 by default) jointly; a small FPN adds the higher-resolution levels down to
``COMMON_STRIDE`` (res2 by default) and a 1x1 conv gives the mask features. Parameter names
follow the official model (see spec section 11).
"""

import math

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from mask2former.layers import MSDeformAttn
from mask2former.layers.ms_deform_attn import SpatialShapes, level_sizes

from ....modeling.position_encoding import PositionEmbeddingSine
from .fpn import NUM_MULTI_SCALE_FEATURES, make_lateral_conv, make_output_conv


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + MSDeformAttn(x + pos)); x = LN(x + FFN(x)).

    ``deformable_attention_impl`` ("auto" or "pytorch") is the ``impl`` of the attention.

    Without autograd (inference), everything but the sampling is per token, so the layer runs
    the queries in blocks of ``token_block`` tokens: the block's intermediates (the FFN's
    (block, d_ffn) activations above all) stay in the CPU caches instead of being written out at
    full resolution (at 800x1216, S = 19,950 and the FFN activation alone is 80 MB). Same
    arithmetic, same result up to float rounding; ``token_block = 0`` turns it off. Training
    mode (dropout) and graph capture (tracing, ONNX and ``torch.export``, ``torch.compile``)
    always take the plain path.
    """

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        *,
        deformable_attention_impl: str = "auto",
        token_block: int = 1024,
    ):
        super().__init__()
        self.token_block = token_block
        self.self_attn = MSDeformAttn(
            d_model, n_levels, n_heads, n_points, impl=deformable_attention_impl
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """src, pos: (B, S, C); reference_points: (B, S, L, 2). Returns (B, S, C)."""
        if self._runs_in_blocks(src):
            return self._forward_blocks(
                src, pos, reference_points, spatial_shapes, level_start_index
            )
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        return self._token_wise(src, attn)

    def _token_wise(self, src: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The per-token rest of the layer: residual, norm, FFN, residual, norm. (B, n, C)."""
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))

    def _runs_in_blocks(self, src: torch.Tensor) -> bool:
        capturing = (
            torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
        )
        return (
            0 < self.token_block < src.shape[1]
            and not torch.is_grad_enabled()
            and not self.training  # the blocks leave out the dropouts
            and not capturing
        )

    def _forward_blocks(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`forward` with the values projected once and the queries in blocks; the FFN
        writes into one (B * block, d_ffn) buffer reused by every block, and adds its second
        bias and the residual in place (fresh large tensors per block cost a page fault per
        4 KiB on first touch)."""
        value = self.self_attn.project_value(src, spatial_shapes)  # (B, S, M, D)
        b, s, c = src.shape
        out = torch.empty_like(src)  # (B, S, C)
        hidden = src.new_empty((b * min(self.token_block, s), self.linear1.out_features))
        for start in range(0, s, self.token_block):
            block = slice(start, start + self.token_block)
            src_block = src[:, block]  # (B, n, C), n <= token_block
            n = src_block.shape[1]
            attn = self.self_attn.attend(
                src_block + pos[:, block],
                reference_points[:, block],
                value,
                spatial_shapes,
                level_start_index,
            )  # (B, n, C)
            x = self.norm1(src_block + attn).view(b * n, c)  # (B*n, C)
            h = torch.addmm(
                self.linear1.bias, x, self.linear1.weight.t(), out=hidden[: b * n]
            ).relu_()  # (B*n, d_ffn)
            x.add_(self.linear2.bias).addmm_(h, self.linear2.weight.t())  # x + FFN(x)
            out[:, block] = self.norm2(x).view(b, n, c)
        return out


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of encoder layers sharing reference points (pixel centres of every level)."""

    def __init__(self, layers: list[MSDeformAttnTransformerEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def get_reference_points(spatial_shapes: SpatialShapes, device: torch.device) -> torch.Tensor:
        """Normalised pixel centres ((i + 0.5) / size) of every level, (S, 2) as (x, y).

        No padding is masked, so valid ratios are 1 and a query's reference point is the same
        on every level.
        """
        points = []
        for h, w in level_sizes(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
                (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w,
                indexing="ij",
            )  # (H_l, W_l) each
            points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))  # (H_l*W_l, 2)
        return torch.cat(points, 0)  # (S, 2)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """src, pos: (B, S, C); spatial_shapes: (L, 2) or L (H_l, W_l) pairs. -> (B, S, C)."""
        ref = self.get_reference_points(spatial_shapes, src.device)  # (S, 2)
        # (S, 2) -> (B, S, L, 2)
        ref = ref[None, :, None, :].expand(src.shape[0], -1, len(spatial_shapes), -1)
        output = src
        for layer in self.layers:
            output = layer(output, pos, ref, spatial_shapes, level_start_index)
        return output


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable DETR encoder over a list of equally wide maps, with a level embedding.

    Args:
        d_model: channels C of every level.
        nhead: attention heads.
        num_encoder_layers: encoder depth (0 returns the inputs flattened).
        dim_feedforward: FFN hidden width.
        dropout: dropout of attention output and FFN.
        num_feature_levels: number of input maps L.
        enc_n_points: sampling points per head and level.
        deformable_attention_impl: implementation of every deformable attention, "auto" or
            "pytorch" (see :class:`MSDeformAttn`).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        *,
        deformable_attention_impl: str = "auto",
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = MSDeformAttnTransformerEncoder(
            [
                MSDeformAttnTransformerEncoderLayer(
                    d_model,
                    dim_feedforward,
                    dropout,
                    num_feature_levels,
                    nhead,
                    enc_n_points,
                    deformable_attention_impl=deformable_attention_impl,
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # Deformable attention has its own initialisation (offset directions, zero weights).
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            srcs: L maps (B, C, H_l, W_l).
            pos_embeds: L positional encodings (B, C, H_l, W_l).

        Returns:
            memory (B, S, C) with S = sum H_l*W_l (levels in input order), spatial_shapes (L, 2)
            int64 (H_l, W_l), level_start_index (L,) int64.
        """
        # (B, C, H, W) -> (B, H*W, C) per level, concatenated -> (B, S, C)
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flatten = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, pos in enumerate(pos_embeds)
            ],
            1,
        )
        spatial_shapes = torch.as_tensor(
            [src.shape[-2:] for src in srcs], dtype=torch.long, device=src_flatten.device
        )  # (L, 2)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )  # (L,)
        # The encoder gets the sizes as Python ints: static under torch.export / ONNX export.
        sizes = [(int(src.shape[-2]), int(src.shape[-1])) for src in srcs]
        memory = self.encoder(src_flatten, pos_flatten, sizes, level_start_index)
        return memory, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder over the low-resolution levels plus an FPN below them.

    Args:
        input_shape: backbone features the decoder reads (channels and stride).
        transformer_dropout: encoder dropout.
        transformer_nheads: encoder attention heads.
        transformer_n_points: encoder sampling points per head and level.
        transformer_dim_feedforward: encoder FFN width.
        transformer_enc_layers: encoder depth.
        conv_dim: channels of the encoder and FPN maps (a multiple of 32: GroupNorm(32)).
        mask_dim: channels of the mask features.
        norm: Detectron2 norm name of the FPN convs.
        transformer_in_features: backbone features fed to the encoder (>= 1).
        common_stride: stride of the mask features; the FPN covers the input levels from this
            stride up to (excluding) the finest encoder stride.
        deformable_attention_impl: implementation of the encoder's deformable attention, "auto"
            or "pytorch" (``MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL``; see
            :class:`MSDeformAttn`). Only these modules are affected, never other models.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_n_points: int = 4,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        transformer_in_features: list[str],
        common_stride: int,
        deformable_attention_impl: str = "auto",
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in shapes]  # highest resolution first
        enc_shapes = [(k, v) for k, v in shapes if k in transformer_in_features]
        if not enc_shapes:
            raise ValueError(
                f"None of the encoder features {transformer_in_features} is among the inputs "
                f"{self.in_features}"
            )
        self.transformer_in_features = [name for name, _ in enc_shapes]  # highest res. first
        self.transformer_num_feature_levels = len(enc_shapes)
        self.common_stride = common_stride
        self.mask_dim = mask_dim

        # One 1x1 conv + GroupNorm per encoder level, lowest resolution first (res5, res4, ...).
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim)
            )
            for _, v in enc_shapes[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
            deformable_attention_impl=deformable_attention_impl,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        # Extra FPN levels between the finest encoder stride and the common stride.
        min_enc_stride = enc_shapes[0][1].stride
        self.num_fpn_levels = int(round(math.log2(min_enc_stride) - math.log2(common_stride)))
        fpn_shapes = shapes[: self.num_fpn_levels]
        if self.num_fpn_levels < 0 or any(v.stride >= min_enc_stride for _, v in fpn_shapes):
            raise ValueError(
                f"Cannot build {self.num_fpn_levels} FPN levels below stride {min_enc_stride} "
                f"down to COMMON_STRIDE {common_stride} from inputs {self.in_features}"
            )
        lateral_convs, output_convs = [], []
        for idx, (_, shape) in enumerate(fpn_shapes):
            lateral_convs.append(make_lateral_conv(shape.channels, conv_dim, norm))
            output_convs.append(make_output_conv(conv_dim, conv_dim, norm))
            self.add_module(f"adapter_{idx + 1}", lateral_convs[-1])
            self.add_module(f"layer_{idx + 1}", output_convs[-1])
        # Plain lists (the modules are registered above): top-down order, lowest resolution first.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            # The official model hard-codes 1024 here and ignores MASK_FORMER.DIM_FEEDFORWARD.
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "deformable_attention_impl": head.DEFORMABLE_ATTENTION_IMPL,
        }

    def forward_features(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """
        Runs in float32 with autocast disabled (the deformable attention is not half-safe).

        Args:
            features: backbone maps by name, each (B, C_l, H_l, W_l).

        Returns:
            mask features (B, MASK_DIM, H/s, W/s) with s = COMMON_STRIDE; the encoder output at
            the lowest resolution (B, CONVS_DIM, H/32, W/32); the first 3 decoder maps, lowest
            resolution first (default [1/32, 1/16, 1/8]).
        """
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for proj, f in zip(self.input_proj, self.transformer_in_features[::-1]):
                x = features[f].float()  # (B, C_l, H_l, W_l)
                srcs.append(proj(x))  # (B, CONVS_DIM, H_l, W_l)
                pos.append(self.pe_layer(x))  # (B, CONVS_DIM, H_l, W_l)
            memory, _, _ = self.transformer(srcs, pos)  # (B, S, CONVS_DIM)

            # (B, S, C) -> per level (B, H_l*W_l, C) -> (B, C, H_l, W_l), lowest resolution first
            sizes = [src.shape[-2:] for src in srcs]
            out = [
                z.transpose(1, 2).reshape(z.shape[0], -1, h, w)
                for z, (h, w) in zip(memory.split([h * w for h, w in sizes], dim=1), sizes)
            ]

            fpn_features = self.in_features[: self.num_fpn_levels][::-1]
            for f, lateral_conv, output_conv in zip(
                fpn_features, self.lateral_convs, self.output_convs
            ):
                cur_fpn = lateral_conv(features[f].float())  # (B, CONVS_DIM, H_l, W_l)
                # The encoder maps are channels-last views of `memory`; upsampled in the
                # default layout (CPU: 54 ms against 274 ms at 100x152 -> 200x304, 256 channels).
                up = F.interpolate(
                    out[-1].contiguous(),
                    size=cur_fpn.shape[-2:],
                    mode="bilinear",
                    align_corners=False,
                )
                out.append(output_conv(cur_fpn.add_(up)))  # (B, CONVS_DIM, H_l, W_l)

            return self.mask_features(out[-1]), out[0], out[:NUM_MULTI_SCALE_FEATURES]
