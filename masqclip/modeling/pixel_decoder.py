"""Mask2Former's multi-scale deformable-attention pixel decoder, in pure PyTorch.

Multi-scale deformable attention (Deformable DETR) is computed with a weighted gather
(``F.embedding_bag``) in eager and ``F.grid_sample`` in an ONNX export (``GridSample``),
instead of the custom CUDA op, so the module runs anywhere.
Module and parameter names follow upstream Mask2Former's ``MSDeformAttnPixelDecoder`` so that
an upstream state dict loads after stripping its prefix.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    'ConvNorm',
    'MSDeformAttn',
    'MSDeformAttnEncoder',
    'MSDeformAttnEncoderLayer',
    'MSDeformAttnPixelDecoder',
    'MSDeformAttnTransformer',
    'c2_xavier_fill',
    'deform_reference_points',
    'ms_deform_attn_sample',
    'position_embedding_sine',
]

# Upstream always feeds res5, res4, res3 to the deformable encoder, lowest resolution first.
TRANSFORMER_LEVELS = ('res5', 'res4', 'res3')


def position_embedding_sine(x: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine positional encoding of a feature map (no padding mask).

    :param x: feature map [B, C, H, W]; only its shape, device and dtype are used.
    :param num_pos_feats: features per axis; the result has ``2 * num_pos_feats`` channels.
    :param temperature: wavelength base of the sinusoids.
    :return: [B, 2 * num_pos_feats, H, W], y-encoding channels first, then x.
    """
    b, _, h, w = x.shape
    # Same arithmetic as upstream's cumsum of an all-valid mask: positions 1..n scaled to 2*pi.
    eps = 1e-6
    y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
    x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
    y_embed = y_embed / (y_embed[-1:] + eps) * (2 * math.pi)
    x_embed = x_embed / (x_embed[-1:] + eps) * (2 * math.pi)
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_pos_feats)
    pos_y = y_embed[:, None] / dim_t
    pos_x = x_embed[:, None] / dim_t
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat(
        (pos_y[:, None, :].expand(h, w, num_pos_feats), pos_x[None].expand(h, w, num_pos_feats)),
        dim=2,
    )
    return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1).to(x.dtype)


def ms_deform_attn_sample(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core: bilinear samples weighted per head.

    Locations are normalised to [0, 1] per level with (0, 0) the top-left corner of the
    top-left pixel and (1, 1) the bottom-right corner of the bottom-right one, so the centre
    of pixel (row i, column j) of an H x W level is ((j + 0.5) / W, (i + 0.5) / H). Samples
    outside the map read zeros.

    Eager runs one weighted gather over every level, point and neighbouring pixel
    (``F.embedding_bag``): on the CPU several times faster than ``grid_sample`` per level and
    a weighted sum over its output, which materialise every sample. An ONNX export keeps
    ``grid_sample`` (ONNX ``GridSample``): the exporter turns ``embedding_bag`` into a loop
    over bags. Both read the same pixels with the same weights.

    :param value: [N, S, M, D] values of M heads, the L levels flattened row-major and
        concatenated, S = sum of H_l * W_l.
    :param spatial_shapes: L pairs (H_l, W_l) as Python ints, in the order of ``value``.
    :param sampling_locations: [N, Lq, M, L, P, 2] (x, y) locations, P points per level.
    :param attention_weights: [N, Lq, M, L, P] weights (upstream soft-maxes over L * P).
    :return: [N, Lq, M * D], heads concatenated.
    """
    if torch.onnx.is_in_onnx_export():
        return _sample_per_level(value, spatial_shapes, sampling_locations, attention_weights)
    return _sample_by_gather(value, spatial_shapes, sampling_locations, attention_weights)


def _sample_per_level(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``ms_deform_attn_sample`` with one ``grid_sample`` per level (for ONNX export)."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        # [N, HW, M, D] -> [N * M, D, H, W]
        value_l = values[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N * M, Lq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(
                value_l, grid_l, mode='bilinear', padding_mode='zeros', align_corners=False
            )
        )
    # [N * M, D, Lq, L * P] weighted by [N * M, 1, Lq, L * P]
    stacked = torch.stack(samples, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (stacked * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2)


def _sample_by_gather(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``ms_deform_attn_sample`` as one ``embedding_bag``: for each query and head, the sum of
    its value rows at every level's, point's and neighbour's pixel, weighted by attention times
    bilinear weight (0 outside the map)."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    table = _zero_bordered(value, spatial_shapes)
    # Levels and points first, the N * Lq * M samples last: the elementwise work below then
    # runs along long contiguous rows (with a short innermost dimension it is several times
    # slower on the CPU). In float32, where pixel indices are exact whole numbers.
    locations = sampling_locations.float().permute(5, 3, 4, 0, 1, 2)
    x, y = locations.reshape(2, num_levels, num_points, -1)
    attention = attention_weights.permute(3, 4, 0, 1, 2).reshape(num_levels, num_points, -1)
    top_left, row_length, right, down = _bilinear_neighbours(x, y, spatial_shapes)
    # The row of each neighbour in the value table [N * S' * M, D], for sample (n, q, m).
    samples = torch.arange(n * lq * m, device=value.device)
    sample_rows = samples // (lq * m) * (table.shape[1] * m) + samples % m
    first = top_left.to(torch.int32) * m + sample_rows.to(torch.int32)
    below = (row_length * m).to(torch.int32)
    rows = torch.stack([first, first + m, first + below, first + below + m])
    lower = down * attention  # the attention split between the two rows of neighbours
    upper = attention - lower
    left = 1 - right
    weights = torch.stack([upper * left, upper * right, lower * left, lower * right])
    # One bag per sample: its 4 x L x P neighbours along a row. A 2-D transpose, which torch
    # copies in cache-sized blocks (a 4-D permute of the same data copies several times slower).
    bags = n * lq * m
    # Summed in float32 whatever the value's precision, as autocast runs grid_sample.
    out = F.embedding_bag(
        rows.view(-1, bags).t().contiguous(),
        table.reshape(-1, d).float(),
        per_sample_weights=weights.view(-1, bags).t().contiguous(),
        mode='sum',
    )
    return out.view(n, lq, m * d).to(value.dtype)


# Each level of the value table gets a border of zeros, one pixel before and two after along
# both axes. A sample's pixel coordinate clamped into [-1, size] then has its four neighbours
# inside the bordered level, and one outside the map reads zeros (grid_sample's zero padding)
# with no validity test per neighbour. Two after: a coordinate clamped to ``size`` has its
# right (lower) neighbour at size + 1.
BORDER_BEFORE, BORDER_AFTER = 1, 2


def _zero_bordered(value: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
    """[N, S, M, D] values -> [N, S', M, D] with each level bordered by zeros (see
    ``BORDER_BEFORE``), the levels flattened row-major and concatenated as before."""
    n, _, m, d = value.shape
    levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    border = (0, 0, BORDER_BEFORE, BORDER_AFTER, BORDER_BEFORE, BORDER_AFTER)
    return torch.cat(
        [
            F.pad(level.reshape(n, h, w, m * d), border).reshape(n, -1, m, d)
            for level, (h, w) in zip(levels, spatial_shapes, strict=True)
        ],
        dim=1,
    )


def _bilinear_neighbours(
    x: Tensor, y: Tensor, spatial_shapes: Sequence[tuple[int, int]]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four pixels around each sample in the zero-bordered levels (``_zero_bordered``),
    as ``grid_sample`` reads them (zero padding, ``align_corners=False``).

    :param x: [L, P, B] normalised x of B samples on every level (see
        :func:`ms_deform_attn_sample`); ``y`` likewise.
    :param spatial_shapes: L pairs (H_l, W_l).
    :return: the top-left neighbour's index into the bordered levels, concatenated, [L, P, B]
        (whole numbers in ``x``'s float dtype); the row length of each bordered level,
        [L, 1, 1], which is the step to the lower neighbours; and how far the sample lies
        towards the right and the lower neighbours, in [0, 1), each [L, P, B].
    """
    heights, widths = (
        torch.tensor(sides, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        for sides in zip(*spatial_shapes, strict=True)
    )
    row_length = widths + BORDER_BEFORE + BORDER_AFTER
    sizes = (heights + BORDER_BEFORE + BORDER_AFTER) * row_length
    starts = torch.cumsum(sizes, 0) - sizes
    lowest = torch.tensor(-BORDER_BEFORE, dtype=x.dtype, device=x.device)
    # Pixel coordinates, with pixel centres on whole numbers.
    column = (x * widths - 0.5).clamp_(lowest, widths)
    row = (y * heights - 0.5).clamp_(lowest, heights)
    left, top = column.floor(), row.floor()
    top_left = starts + (top + BORDER_BEFORE) * row_length + (left + BORDER_BEFORE)
    return top_left, row_length, column - left, row - top


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), pure-PyTorch sampling.

    :param d_model: channels of queries and values.
    :param n_levels: number of feature levels.
    :param n_heads: attention heads; ``d_model`` must be divisible by it.
    :param n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f'd_model ({d_model}) must be divisible by n_heads ({n_heads})')
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: head h starts sampling along direction h."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        # Scaled so the larger component is 1 pixel, then point k goes k + 1 pixels out.
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Attend from each query to points around its reference point on every level.

        :param query: [N, Lq, C] queries (with positional encoding added).
        :param reference_points: [N or 1, Lq, L, 2] (x, y) in [0, 1] per level, see
            :func:`ms_deform_attn_sample`.
        :param input_flatten: [N, S, C] the flattened levels, S = sum of H_l * W_l.
        :param spatial_shapes: L pairs (H_l, W_l) as Python ints.
        :return: [N, Lq, C].
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        value = self.value_proj(input_flatten).view(
            n, s, self.n_heads, self.d_model // self.n_heads
        )
        offsets = self.sampling_offsets(query).view(
            n, lq, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            n, lq, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level; (W, H) turns them into normalised units.
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        out = ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(out)


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention then a ReLU FFN, post-norm, no dropout.

    :param d_model: channels.
    :param d_ffn: hidden width of the FFN.
    :param n_levels: feature levels.
    :param n_heads: attention heads.
    :param n_points: sampling points per head and level.
    """

    def __init__(
        self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Run one layer.

        :param src: [N, S, C] flattened levels.
        :param pos: [N, S, C] positional plus level embedding.
        :param reference_points: [N or 1, S, L, 2], see :func:`deform_reference_points`.
        :param spatial_shapes: L pairs (H_l, W_l).
        :return: [N, S, C].
        """
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


def deform_reference_points(
    spatial_shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1], as encoder reference points.

    Without padding masks every level's valid ratio is 1, so a query's reference point is the
    same normalised location on every level.

    :param spatial_shapes: L pairs (H_l, W_l).
    :param device: device of the result.
    :param dtype: floating dtype of the result.
    :return: [1, S, L, 2] (x, y), S = sum of H_l * W_l.
    """
    points = []
    for h, w in spatial_shapes:
        ref_y = (torch.arange(h, dtype=dtype, device=device) + 0.5) / h
        ref_x = (torch.arange(w, dtype=dtype, device=device) + 0.5) / w
        ref = torch.stack(
            (ref_x[None, :].expand(h, w), ref_y[:, None].expand(h, w)), dim=-1
        ).reshape(h * w, 2)
        points.append(ref)
    ref_all = torch.cat(points, 0)
    return ref_all[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)


class MSDeformAttnEncoder(nn.Module):
    """A stack of :class:`MSDeformAttnEncoderLayer` (upstream ``transformer.encoder``).

    :param num_layers: number of layers.
    :param d_model: channels.
    :param d_ffn: FFN hidden width.
    :param n_levels: feature levels.
    :param n_heads: attention heads.
    :param n_points: sampling points per head and level.
    """

    def __init__(
        self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points)
            for _ in range(num_layers)
        )

    def forward(
        self, src: Tensor, pos: Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> Tensor:
        """Encode the flattened levels.

        :param src: [N, S, C].
        :param pos: [N, S, C].
        :param spatial_shapes: L pairs (H_l, W_l).
        :return: [N, S, C].
        """
        # In float32 whatever the features' precision: in bf16, (j + 0.5) / W would be off by
        # up to 0.2 pixel on an 80-pixel-wide level.
        reference_points = deform_reference_points(spatial_shapes, src.device, torch.float32)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MSDeformAttnTransformer(nn.Module):
    """Encoder-only deformable transformer with a learned per-level embedding.

    Upstream's ``MSDeformAttnTransformerEncoderOnly``.

    :param d_model: channels.
    :param n_heads: attention heads.
    :param num_encoder_layers: encoder layers.
    :param dim_feedforward: FFN hidden width.
    :param n_levels: feature levels.
    :param n_points: sampling points per head and level.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        num_encoder_layers: int,
        dim_feedforward: int,
        n_levels: int,
        n_points: int,
    ) -> None:
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            num_encoder_layers, d_model, dim_feedforward, n_levels, n_heads, n_points
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], pos: list[Tensor]) -> list[Tensor]:
        """Encode L feature maps jointly.

        :param srcs: L maps [N, C, H_l, W_l].
        :param pos: L positional encodings of the same shapes.
        :return: L encoded maps [N, C, H_l, W_l], in the input order.
        """
        spatial_shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                for i, p in enumerate(pos)
            ],
            1,
        )
        memory = self.encoder(src_flat, pos_flat, spatial_shapes)
        n, _, c = memory.shape
        chunks = memory.split([h * w for h, w in spatial_shapes], dim=1)
        return [
            z.transpose(1, 2).reshape(n, c, h, w)
            for z, (h, w) in zip(chunks, spatial_shapes, strict=True)
        ]


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill as detectron2 uses it: kaiming-uniform with a=1, zero bias.

    :param module: the convolution to initialise in place.
    """
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by GroupNorm(32) and optionally ReLU.

    detectron2's ``Conv2d`` with ``norm='GN'``, so the norm lives at ``<name>.norm``.

    :param in_channels: input channels.
    :param out_channels: output channels (a multiple of 32).
    :param kernel_size: square kernel size; padding keeps the spatial size.
    :param relu: apply ReLU after the norm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = nn.GroupNorm(32, out_channels)
        self.relu = relu
        c2_xavier_fill(self)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv, norm and the optional ReLU.

        :param x: [B, in_channels, H, W].
        :return: [B, out_channels, H, W].
        """
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable encoder on res3..res5 plus one FPN step to stride 4 (Mask2Former).

    :param in_channels: channels of res2, res3, res4, res5 (in that order).
    :param conv_dim: channels of the encoder and FPN (a multiple of 32, for GroupNorm(32)).
    :param mask_dim: channels of the per-pixel mask embedding.
    :param num_encoder_layers: deformable encoder layers.
    :param num_heads: deformable attention heads.
    :param num_points: sampling points per head and level.
    :param dim_feedforward: encoder FFN hidden width.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        conv_dim: int,
        mask_dim: int,
        num_encoder_layers: int,
        num_heads: int,
        num_points: int,
        dim_feedforward: int,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f'in_channels must give res2..res5 channels, got {in_channels}')
        if conv_dim % 32 != 0:
            raise ValueError(
                f'pixel decoder conv_dim must be a multiple of 32 (GroupNorm(32)), got {conv_dim}'
            )
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        res2_ch, res3_ch, res4_ch, res5_ch = in_channels
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for c in (res5_ch, res4_ch, res3_ch)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnTransformer(
            d_model=conv_dim,
            n_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            dim_feedforward=dim_feedforward,
            n_levels=len(TRANSFORMER_LEVELS),
            n_points=num_points,
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        self.adapter_1 = ConvNorm(res2_ch, conv_dim, kernel_size=1, relu=False)
        self.layer_1 = ConvNorm(conv_dim, conv_dim, kernel_size=3, relu=True)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Build the per-pixel embedding and the three multi-scale maps.

        :param features: backbone maps ``'res2'`` [B, C2, H/4, W/4] .. ``'res5'``
            [B, C5, H/32, W/32].
        :return: ``(mask_features, multi_scale_features)``: mask_features
            [B, mask_dim, H/4, W/4]; multi_scale_features three maps [B, conv_dim, h, w] at
            strides 32, 16, 8 (lowest resolution first).
        """
        srcs = [
            proj(features[name])
            for proj, name in zip(self.input_proj, TRANSFORMER_LEVELS, strict=True)
        ]
        pos = [position_embedding_sine(s, self.conv_dim // 2) for s in srcs]
        multi_scale = self.transformer(srcs, pos)
        lateral = self.adapter_1(features['res2'])
        # Upstream uses bilinear here despite its "nearest, as in FPN" comment.
        top_down = F.interpolate(
            multi_scale[-1], size=lateral.shape[-2:], mode='bilinear', align_corners=False
        )
        fpn = self.layer_1(lateral + top_down)
        return self.mask_features(fpn), multi_scale
