"""Multi-scale deformable attention (Deformable DETR), pure-PyTorch path and module.

Notation: N batch, S = sum of H_l * W_l value positions over the L levels, Lq queries,
M heads, D channels per head, P sampling points per head and level.

``ms_deform_attn`` is the single entry point used by the model; it runs the implementation it is
given ("auto" or "pytorch", see ``mask2former.layers.ms_deform_attn_dispatch``). Each
``MSDeformAttn`` module carries its own choice (``impl``); :func:`ms_deform_attn_impl` changes
it for every such module of a model inside a ``with`` block.
``ms_deform_attn_pytorch`` is the reference implementation: bilinear sampling with
``grid_sample`` (align_corners=False, zero padding), which runs on every device.
"""

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ms_deform_attn_dispatch import (
    active_impl,
    check_impl,
    ms_deform_attn_compiled,
    use_compiled,
)

SpatialShapes = torch.Tensor | Sequence[tuple[int, int]]


def level_sizes(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """(H_l, W_l) of each level as Python ints, from an (L, 2) tensor or a sequence of pairs.

    Pass Python pairs where the shapes must stay static (``torch.export``, ONNX export): reading
    them from a tensor there is a data-dependent operation.
    """
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference multi-scale deformable attention.

    Args:
        value: (N, S, M, D) values of all levels, flattened and concatenated.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level, or the L pairs as Python ints.
        level_start_index: (L,) int64, start of each level in S (unused here, kept so that all
            implementations share one signature).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1] (outside: zeros).
        attention_weights: (N, Lq, M, L, P), already softmax-normalised over L * P.

    Returns:
        (N, Lq, M * D)
    """
    del level_start_index
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = level_sizes(spatial_shapes)
    value_levels = value.split([h * w for h, w in shapes], dim=1)  # L x (N, H_l*W_l, M, D)
    grids = 2 * sampling_locations - 1  # (N, Lq, M, L, P, 2) in [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N, M, D, H*W) -> (N*M, D, H, W)
        v = value_levels[lvl].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # (N*M, D, Lq, P)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N, Lq, M, L, P) -> (N, M, Lq, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    # (N*M, D, Lq, L*P) * weights, summed over L*P -> (N*M, D, Lq)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    # (N*M, D, Lq) -> (N, M*D, Lq) -> (N, Lq, M*D)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention with implementation ``impl``: "auto" (the compiled op
    when it can run the inputs, else pure PyTorch) or "pytorch" (always pure PyTorch).

    Other arguments and result as :func:`ms_deform_attn_pytorch`.
    """
    if use_compiled(value, sampling_locations, attention_weights, impl):
        if not isinstance(spatial_shapes, torch.Tensor):
            spatial_shapes = torch.as_tensor(
                spatial_shapes, dtype=torch.long, device=value.device
            )  # (L, 2)
        return ms_deform_attn_compiled(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return ms_deform_attn_pytorch(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (parameter names as in the official model).

    Args:
        d_model: channels C of queries and values.
        n_levels: number of feature levels L.
        n_heads: attention heads M (C must be divisible by M).
        n_points: sampling points P per head and level.
        impl: implementation, "auto" (compiled op when built and the inputs fit, else pure
            PyTorch) or "pytorch" (always pure PyTorch). A plain attribute, not in the
            state_dict; :func:`ms_deform_attn_impl` changes it temporarily.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        *,
        impl: str = "auto",
    ):
        super().__init__()
        self.impl = impl
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    @property
    def impl(self) -> str:
        """Implementation of this module: "auto" or "pytorch"."""
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        self._impl = check_impl(impl)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # Each head starts looking in its own direction, point k at distance k + 1.
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        # (M, 1, 1, 2) -> (M, L, P, 2), scaled by the point index
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: SpatialShapes,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1].
            input_flatten: (N, S, C) values of all levels, flattened and concatenated.
            input_spatial_shapes: (L, 2) int64 (H_l, W_l), or the L pairs as Python ints
                (static shapes: what ``torch.export`` needs).
            input_level_start_index: (L,) int64.
            input_padding_mask: (N, S) bool, True at padded positions (zeroed), or None.

        Returns:
            (N, Lq, C)
        """
        value = self.project_value(input_flatten, input_spatial_shapes, input_padding_mask)
        return self.attend(
            query, reference_points, value, input_spatial_shapes, input_level_start_index
        )

    def project_value(
        self,
        input_flatten: torch.Tensor,
        input_spatial_shapes: SpatialShapes,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The values, (N, S, C) -> (N, S, M, D); zeros at padded positions.

        Split from :meth:`attend` so that a caller can project the values once and attend
        with the queries in blocks (see ``MSDeformAttnTransformerEncoderLayer``)."""
        n, s, _ = input_flatten.shape
        if sum(h * w for h, w in level_sizes(input_spatial_shapes)) != s:
            raise ValueError("input_flatten length does not match input_spatial_shapes")
        value = self.value_proj(input_flatten)  # (N, S, C)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        return value.view(n, s, self.n_heads, self.d_model // self.n_heads)  # (N, S, M, D)

    def attend(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        input_spatial_shapes: SpatialShapes,
        input_level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """Queries (N, Lq, C) with reference points (N, Lq, L, 2) attend to projected values
        (N, S, M, D) from :meth:`project_value`. Returns (N, Lq, C)."""
        n, lq, _ = query.shape
        if reference_points.shape[-1] != 2:
            raise ValueError(
                f"reference_points must end in 2 (x, y), got {tuple(reference_points.shape)}"
            )
        sizes = level_sizes(input_spatial_shapes)
        # One GEMM for the offsets and the weights: (N, Lq, M*L*P*2 + M*L*P)
        num_offsets = self.sampling_offsets.out_features
        projected = F.linear(
            query,
            torch.cat((self.sampling_offsets.weight, self.attention_weights.weight)),
            torch.cat((self.sampling_offsets.bias, self.attention_weights.bias)),
        )
        # (N, Lq, M, L, P, 2)
        offsets = projected[..., :num_offsets].view(
            n, lq, self.n_heads, self.n_levels, self.n_points, 2
        )
        # (N, Lq, M, L*P) softmax over all levels and points -> (N, Lq, M, L, P)
        weights = projected[..., num_offsets:].reshape(
            n, lq, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: multiply by (1/W_l, 1/H_l). (L, 2) as (x, y)
        inverse_size = torch.as_tensor(
            [(1.0 / w, 1.0 / h) for h, w in sizes], dtype=offsets.dtype, device=offsets.device
        )  # (L, 2)
        # (N, Lq, 1, L, 1, 2) + (N, Lq, M, L, P, 2) * (1, 1, 1, L, 1, 2)
        locations = torch.addcmul(
            reference_points[:, :, None, :, None, :],
            offsets,
            inverse_size[None, None, None, :, None, :],
        )
        out = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights, self.impl
        )  # (N, Lq, C)
        return self.output_proj(out)


@contextlib.contextmanager
def ms_deform_attn_impl(module: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Sets ``impl`` on every :class:`MSDeformAttn` inside ``module`` (itself included) for the
    duration of the ``with`` block, then restores each one's previous value (also on error).

    Example: ``with ms_deform_attn_impl(model, "pytorch"): torch.onnx.export(model, ...)``.
    """
    check_impl(impl)
    attns = [m for m in module.modules() if isinstance(m, MSDeformAttn)]
    previous = [m.impl for m in attns]
    try:
        for m in attns:
            m.impl = impl
        yield module
    finally:
        for m, old in zip(attns, previous):
            m.impl = old


def active_impl_of(module: nn.Module, device_type: str) -> str:
    """What the :class:`MSDeformAttn` modules inside ``module`` run for float32 inputs on this
    device type ("cpu", "cuda"): "compiled", "pytorch", "compiled+pytorch" when they differ, or
    "none" when there is no such module."""
    attns = [m for m in module.modules() if isinstance(m, MSDeformAttn)]
    return "+".join(sorted({active_impl(device_type, m.impl) for m in attns})) or "none"
