"""Mask2Former's multi-scale masked-attention transformer decoder, class-agnostic.

MasQCLIP's proposer hard-codes a 2-way class head (index 0 "object", 1 "no-object"), whatever
the dataset's number of classes. Module and parameter names follow upstream Mask2Former's
``MultiScaleMaskedTransformerDecoder`` so that an upstream state dict loads after stripping
its prefix.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from masqclip.modeling.pixel_decoder import c2_xavier_fill, position_embedding_sine

__all__ = [
    'NUM_PROPOSER_CLASSES',
    'CrossAttentionLayer',
    'FFNLayer',
    'MLP',
    'MultiScaleMaskedTransformerDecoder',
    'SelfAttentionLayer',
    'masked_attention_mask',
]

# "object" and "no-object" (method.md, trap 12).
NUM_PROPOSER_CLASSES = 2

# The decoder cycles over the pixel decoder's three scales, lowest resolution first.
NUM_FEATURE_LEVELS = 3


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries, post-norm, no dropout.

    :param d_model: channels.
    :param nhead: attention heads.
    """

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        _xavier_matrices(self)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        """Attend among queries.

        :param tgt: [Q, B, C] query features (sequence first, as upstream).
        :param query_pos: [Q, B, C] query positional embedding.
        :return: [Q, B, C].
        """
        q = k = tgt + query_pos
        out = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        return self.norm(tgt + out)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from queries to one feature level, post-norm, no dropout.

    :param d_model: channels.
    :param nhead: attention heads.
    """

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        _xavier_matrices(self)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        """Attend from queries to the pixels their mask allows.

        :param tgt: [Q, B, C] query features.
        :param memory: [HW, B, C] flattened feature level.
        :param memory_mask: bool [B * heads, Q, HW], True where attention is blocked; no row
            may be fully True (see :func:`masked_attention_mask`).
        :param pos: [HW, B, C] positional plus level embedding of the pixels.
        :param query_pos: [Q, B, C] query positional embedding.
        :return: [Q, B, C].
        """
        out = self.multihead_attn(
            query=tgt + query_pos,
            key=memory + pos,
            value=memory,
            attn_mask=memory_mask,
            need_weights=False,
        )[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    """ReLU feed-forward block, post-norm, no dropout.

    :param d_model: channels.
    :param dim_feedforward: hidden width.
    """

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_matrices(self)

    def forward(self, tgt: Tensor) -> Tensor:
        """Apply the FFN with a residual connection.

        :param tgt: [..., C].
        :return: [..., C].
        """
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last).

    :param input_dim: input features.
    :param hidden_dim: hidden features.
    :param output_dim: output features.
    :param num_layers: number of linear layers.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layers.

        :param x: [..., input_dim].
        :return: [..., output_dim].
        """
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def masked_attention_mask(mask_logits: Tensor, size: tuple[int, int], num_heads: int) -> Tensor:
    """Turn predicted mask logits into a masked-attention mask for the next feature level.

    The logits are resized bilinearly to ``size``; a pixel is blocked where its sigmoid is
    below 0.5. A query whose whole row would be blocked (an empty mask) is left fully open
    instead, which keeps the softmax defined. Written with ``&`` rather than in-place
    boolean indexing so that it traces to ONNX.

    :param mask_logits: [B, Q, H, W] mask logits.
    :param size: target (h, w) of the feature level.
    :param num_heads: attention heads; the mask is repeated per head.
    :return: bool [B * num_heads, Q, h * w], True = blocked, batch-major then head, as
        ``nn.MultiheadAttention`` expects.
    """
    resized = F.interpolate(mask_logits, size=size, mode='bilinear', align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    b, q, hw = blocked.shape
    return blocked[:, None].expand(b, num_heads, q, hw).reshape(b * num_heads, q, hw).detach()


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Learnable queries refined by masked cross-attention over three feature scales.

    :param in_channels: channels of the pixel decoder's multi-scale maps.
    :param hidden_dim: query and attention width.
    :param num_queries: number of queries (mask proposals).
    :param num_heads: attention heads.
    :param dim_feedforward: FFN hidden width.
    :param dec_layers: decoder layers; the model makes ``dec_layers + 1`` predictions (one
        from the learnable queries, one after each layer). Upstream ``DEC_LAYERS`` minus 1.
    :param mask_dim: channels of the per-pixel mask embedding.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int,
        num_queries: int,
        num_heads: int,
        dim_feedforward: int,
        dec_layers: int,
        mask_dim: int,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f'decoder hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})'
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_layers = dec_layers
        self.num_queries = num_queries
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(NUM_FEATURE_LEVELS, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(NUM_FEATURE_LEVELS):
            if in_channels == hidden_dim:
                self.input_proj.append(nn.Sequential())
            else:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
        self.class_embed = nn.Linear(hidden_dim, NUM_PROPOSER_CLASSES)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward_prediction_heads(
        self, output: Tensor, mask_features: Tensor, attn_mask_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predict class logits, mask logits and the next layer's attention mask.

        :param output: [Q, B, C] query features.
        :param mask_features: [B, mask_dim, H, W] per-pixel embedding.
        :param attn_mask_size: (h, w) of the feature level the next layer attends to.
        :return: class logits [B, Q, 2], mask logits [B, Q, H, W], attention mask bool
            [B * heads, Q, h * w].
        """
        decoded = self.decoder_norm(output).transpose(0, 1)
        logits = self.class_embed(decoded)
        masks = (self.mask_embed(decoded) @ mask_features.flatten(2)).view(
            *decoded.shape[:2], *mask_features.shape[-2:]
        )
        return logits, masks, masked_attention_mask(masks, attn_mask_size, self.num_heads)

    def forward(
        self, multi_scale_features: list[Tensor], mask_features: Tensor
    ) -> dict[str, Tensor | list[dict[str, Tensor]]]:
        """Decode mask proposals.

        :param multi_scale_features: three maps [B, in_channels, h_l, w_l], lowest
            resolution first.
        :param mask_features: [B, mask_dim, H, W] per-pixel embedding (stride 4).
        :return: ``{'pred_logits': [B, Q, 2], 'pred_masks': [B, Q, H, W], 'aux_outputs':
            [...]}``: the final prediction, and ``dec_layers`` dicts with the same two keys
            holding the earlier predictions (first from the learnable queries), for deep
            supervision. Class index 0 is "object", 1 "no-object"; masks are logits.
        """
        if len(multi_scale_features) != NUM_FEATURE_LEVELS:
            raise ValueError(
                f'expected {NUM_FEATURE_LEVELS} feature maps, got {len(multi_scale_features)}'
            )
        src, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            sizes.append((int(x.shape[2]), int(x.shape[3])))
            # [B, C, h, w] -> [hw, B, C], sequence first as nn.MultiheadAttention expects.
            pos.append(
                position_embedding_sine(x, self.hidden_dim // 2).flatten(2).permute(2, 0, 1)
            )
            proj = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(proj.permute(2, 0, 1))
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight[:, None].expand(-1, batch, -1)
        output = self.query_feat.weight[:, None].expand(-1, batch, -1)

        logits, masks, attn_mask = self.forward_prediction_heads(output, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i in range(self.num_layers):
            level = i % NUM_FEATURE_LEVELS
            output = self.transformer_cross_attention_layers[i](
                output, src[level], attn_mask, pos[level], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            logits, masks, attn_mask = self.forward_prediction_heads(
                output, mask_features, sizes[(i + 1) % NUM_FEATURE_LEVELS]
            )
            predictions.append((logits, masks))
        return {
            'pred_logits': predictions[-1][0],
            'pred_masks': predictions[-1][1],
            'aux_outputs': [{'pred_logits': c, 'pred_masks': m} for c, m in predictions[:-1]],
        }
