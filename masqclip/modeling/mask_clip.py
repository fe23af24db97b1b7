"""CLIP with mask class tokens: the classification half of MasQCLIP (method.md 1.2-1.5, 3.1).

One extra token per proposal mask runs beside CLIP's own tokens through every block of a
frozen open_clip ``VisionTransformer``. In each block the mask tokens query with their own
trainable projection (``new_q_proj``) and attend only to CLS and to the patches their mask
covers, using CLIP's keys and values; the CLIP tokens never see the mask tokens, so CLIP's
image features are exactly vanilla CLIP's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

__all__ = ['MaskCLIPVisual', 'attention_blocked', 'build_clip']


def build_clip(clip_cfg: Mapping) -> open_clip.CLIP:
    """Build a randomly initialised open_clip CLIP with QuickGELU from a model config's section.

    QuickGELU is forced because OpenAI's CLIP weights were trained with it; open_clip would
    otherwise use ``nn.GELU`` for a config built by hand. ``open_clip_name`` (if present) is
    informative only: the architecture comes from ``embed_dim``, ``vision_cfg`` and ``text_cfg``.

    :param clip_cfg: the ``"clip"`` section of a ``masqclip/model_configs/*.json`` file:
        ``{"embed_dim": int, "vision_cfg": {...}, "text_cfg": {...}}`` where the two dicts hold
        fields of open_clip's ``CLIPVisionCfg`` and ``CLIPTextCfg``.
    :return: an ``open_clip.CLIP`` in training mode with random weights.
    :raises ValueError: a key is missing or unknown, the image tower is not an open_clip ViT,
        or a block would not use QuickGELU.
    """
    missing = [k for k in ('embed_dim', 'vision_cfg', 'text_cfg') if k not in clip_cfg]
    if missing:
        raise ValueError(
            f'the clip config lacks {missing}; it needs embed_dim, vision_cfg and '
            'text_cfg (see masqclip/model_configs/test_tiny.json)'
        )
    # known_words: the text tower's closed word list, where it has one (known_words.py).
    allowed = {'embed_dim', 'vision_cfg', 'text_cfg', 'open_clip_name', 'known_words'}
    unknown = set(clip_cfg) - allowed
    if unknown:
        raise ValueError(f'unknown keys {sorted(unknown)} in the clip config')
    cfg_types = (('vision_cfg', open_clip.CLIPVisionCfg), ('text_cfg', open_clip.CLIPTextCfg))
    for key, cfg_type in cfg_types:
        allowed = {f.name for f in dataclasses.fields(cfg_type)}
        bad = set(clip_cfg[key]) - allowed
        if bad:
            raise ValueError(
                f"clip.{key} has keys {sorted(bad)} that open_clip's "
                f'{cfg_type.__name__} does not know'
            )
    model = open_clip.CLIP(
        embed_dim=int(clip_cfg['embed_dim']),
        vision_cfg=open_clip.CLIPVisionCfg(**clip_cfg['vision_cfg']),
        text_cfg=open_clip.CLIPTextCfg(**clip_cfg['text_cfg']),
        quick_gelu=True,
    )
    if not isinstance(model.visual, VisionTransformer):
        raise ValueError(
            f'this clip config builds a {type(model.visual).__name__} image tower; '
            'MasQCLIP needs an open_clip ViT (set vision_cfg layers to an int and '
            'no timm_model_name)'
        )
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    if not all(isinstance(getattr(blk.mlp, 'gelu', None), QuickGELU) for blk in blocks):
        raise ValueError(
            'this clip config builds blocks without QuickGELU; OpenAI CLIP weights '
            'need QuickGELU (check act_kwargs)'
        )
    return model


def attention_blocked(mask_logits: Tensor, image_size: int, patch_size: int) -> Tensor:
    """Turn proposal mask logits into the mask tokens' attention mask (True = blocked).

    The logits are bilinearly resized to ``image_size`` x ``image_size`` (align_corners False),
    max-pooled per ``patch_size`` x ``patch_size`` patch, and a patch is inside when its
    largest logit is above 0 (any upsampled pixel with sigmoid > 0.5). A column for CLS is
    prepended and never blocked, so an empty mask attends to CLS only.

    :param mask_logits: float [B, Q, h, w], mask logits at any resolution.
    :param image_size: side of CLIP's square input in pixels, a multiple of ``patch_size``.
    :param patch_size: side of CLIP's square patches in pixels.
    :return: bool [B, Q, 1 + P] with P = (image_size / patch_size) ** 2; column 0 is CLS, then
        the patches in CLIP's row-major token order.
    :raises ValueError: ``image_size`` is not a multiple of ``patch_size``.
    """
    if image_size % patch_size:
        raise ValueError(f'image_size {image_size} is not a multiple of patch_size {patch_size}')
    resized = F.interpolate(
        mask_logits, size=(image_size, image_size), mode='bilinear', align_corners=False
    )
    per_patch = F.max_pool2d(resized, kernel_size=patch_size, stride=patch_size)
    blocked = (per_patch <= 0).flatten(2)
    cls_open = torch.zeros_like(blocked[:, :, :1])
    return torch.cat([cls_open, blocked], dim=2)


class MaskCLIPVisual(nn.Module):
    """An open_clip ViT with MasQCLIP's mask class tokens.

    The wrapped tower keeps its parameter names under ``visual.``, so OpenAI / open_clip
    ``visual.*`` weights load unchanged. The tower is frozen at construction
    (``requires_grad=False``) and its stream runs without autograd; only ``new_q_proj`` and
    ``mask_embeddings`` are meant to be trained.

    State-dict keys: ``visual.<open_clip names>``, ``new_q_proj.<layer>.weight`` [W, W],
    ``new_q_proj.<layer>.bias`` [W] and ``mask_embeddings`` [W], with W the tower's width.

    :param visual: an open_clip ``VisionTransformer`` with CLS-token pooling, standard
        residual attention blocks, no attentional pooling and no patch dropout.
    :raises ValueError: the tower is of a kind this module cannot run.
    """

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        _check_supported(visual)
        self.visual = visual
        self.visual.requires_grad_(False)
        self.image_size = int(visual.image_size[0])
        self.patch_size = int(visual.patch_size[0])
        width = visual.class_embedding.shape[0]
        attn = visual.transformer.resblocks[0].attn
        self.num_heads = int(attn.num_heads)
        self.head_dim = width // self.num_heads
        factory = {'device': visual.class_embedding.device, 'dtype': visual.class_embedding.dtype}
        # PyTorch's default Linear init, as the reference (method.md trap 1): the mask tokens
        # start from random queries, not from CLIP's own.
        self.new_q_proj = nn.ModuleList(
            nn.Linear(width, width, bias=True, **factory) for _ in visual.transformer.resblocks
        )
        self.mask_embeddings = nn.Parameter(torch.empty(width, **factory))
        self.reset_mask_embeddings()

    @property
    def embed_dim(self) -> int:
        """Size D of the output embeddings."""
        return int(self.visual.proj.shape[1])

    @torch.no_grad()
    def reset_mask_embeddings(self) -> None:
        """Set ``mask_embeddings`` to CLIP's CLS positional embedding (the reference init).

        Call again after loading new CLIP weights into ``visual``, so that an untrained mask
        token's input equals CLIP's CLS input.
        """
        self.mask_embeddings.copy_(self.visual.positional_embedding[0])

    @torch.no_grad()
    def copy_clip_q_proj(self) -> None:
        """Set every ``new_q_proj`` to CLIP's own query projection of that layer.

        The alternative init (method.md trap 1): with it, and ``mask_embeddings`` at CLIP's CLS
        positional embedding, the model equals MaskCLIP's mask tokens without RMA, and a mask
        token with an all-visible mask reproduces CLIP's CLS embedding.
        """
        width = self.mask_embeddings.shape[0]
        for q_proj, blk in zip(self.new_q_proj, self.visual.transformer.resblocks, strict=True):
            q_proj.weight.copy_(blk.attn.in_proj_weight[:width])
            if blk.attn.in_proj_bias is None:
                q_proj.bias.zero_()
            else:
                q_proj.bias.copy_(blk.attn.in_proj_bias[:width])

    def load_clip_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load CLIP's visual weights from a whole open_clip CLIP state dict.

        Keys starting with ``visual.`` are loaded strictly into ``visual``; other keys (the
        text tower) are ignored. ``mask_embeddings`` is then re-initialised from the new
        positional embedding; ``new_q_proj`` is left as it is.

        :param state_dict: an ``open_clip.CLIP`` state dict (``visual.*`` and text keys).
        :raises ValueError: the dict holds no ``visual.*`` key.
        """
        visual_sd = {
            k[len('visual.') :]: v for k, v in state_dict.items() if k.startswith('visual.')
        }
        if not visual_sd:
            raise ValueError(
                'no visual.* keys in this state dict: pass a whole CLIP state dict '
                '(open_clip names)'
            )
        self.visual.load_state_dict(visual_sd, strict=True)
        self.reset_mask_embeddings()

    def forward(self, images: Tensor, mask_logits: Tensor) -> Tensor:
        """Embed each proposal mask with its mask class token.

        :param images: float [B, 3, S, S], CLIP-normalised, S = the tower's image size.
        :param mask_logits: float [B, Q, h, w], proposal mask logits at any resolution.
        :return: float [B, Q, D], L2-normalised mask embeddings.
        """
        return self.forward_features(images, mask_logits)[0]

    def forward_features(
        self, images: Tensor, mask_logits: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the image stream and the mask stream together.

        :param images: float [B, 3, S, S], CLIP-normalised, S = the tower's image size.
        :param mask_logits: float [B, Q, h, w], proposal mask logits at any resolution.
        :return: ``(mask_embeddings, image_embedding, patch_tokens)``: float [B, Q, D] and
            [B, D], both L2-normalised (the latter is CLIP's ``encode_image``), and float
            [B, P, W], the patch tokens after ``ln_post`` (those open_clip's ``output_tokens``
            returns for an OpenAI-style tower).
        """
        blocked = attention_blocked(mask_logits, self.image_size, self.patch_size)
        x = self._clip_tokens(images)
        tokens = self.visual.class_embedding + self.mask_embeddings
        m = self.visual.ln_pre(tokens.to(x.dtype).expand(x.shape[0], blocked.shape[1], -1))
        # SDPA's boolean mask marks the positions to attend to; one mask for every head.
        allowed = torch.logical_not(blocked).unsqueeze(1)
        for i, blk in enumerate(self.visual.transformer.resblocks):
            with torch.no_grad():
                x, k, v = self._clip_block(blk, x)
            m = self._mask_block(blk, self.new_q_proj[i], m, k, v, allowed)
        mask_embeddings = F.normalize(self.visual.ln_post(m) @ self.visual.proj, dim=-1)
        image_embedding, patch_tokens = self._pool(x)
        return mask_embeddings, image_embedding, patch_tokens

    def encode_image(self, images: Tensor) -> Tensor:
        """CLIP's own image embedding (the CLS path), without mask tokens.

        :param images: float [B, 3, S, S], CLIP-normalised.
        :return: float [B, D], L2-normalised; equals open_clip's ``encode_image(normalize=True)``.
        """
        x = self._clip_tokens(images)
        with torch.no_grad():
            for blk in self.visual.transformer.resblocks:
                x = self._clip_block(blk, x)[0]
        return self._pool(x)[0]

    def _clip_tokens(self, images: Tensor) -> Tensor:
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) != size:
            raise ValueError(
                f'images are {tuple(images.shape[-2:])}, this CLIP takes {size}: resize them first'
            )
        visual = self.visual
        with torch.no_grad():
            x = visual.conv1(images).flatten(2).transpose(1, 2)
            cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
            return visual.ln_pre(x)

    def _split_heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _clip_block(self, blk: ResidualAttentionBlock, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One block of plain CLIP; also returns its keys and values [B, heads, 1 + P, hd]."""
        h = blk.ln_1(x)
        qkv = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias)
        q, k, v = (self._split_heads(t) for t in qkv.chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + blk.ls_1(blk.attn.out_proj(a))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, k, v

    def _mask_block(
        self,
        blk: ResidualAttentionBlock,
        q_proj: nn.Linear,
        m: Tensor,
        k: Tensor,
        v: Tensor,
        allowed: Tensor,
    ) -> Tensor:
        """One block for the mask tokens: new queries on CLIP's keys/values, CLIP's frozen rest."""
        q = self._split_heads(q_proj(blk.ln_1(m)))
        a = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed)
        m = m + blk.ls_1(blk.attn.out_proj(a.transpose(1, 2).flatten(2)))
        return m + blk.ls_2(blk.mlp(blk.ln_2(m)))

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            x = self.visual.ln_post(x)
            return F.normalize(x[:, 0] @ self.visual.proj, dim=-1), x[:, 1:]


def _check_supported(visual: nn.Module) -> None:
    """Raise ValueError naming the first feature of ``visual`` that the mask stream lacks."""

    def fail(why: str) -> None:
        raise ValueError(
            f'MaskCLIPVisual cannot run this visual tower: {why}. It needs an '
            'OpenAI-style open_clip VisionTransformer (e.g. ViT-B-16, ViT-L-14-336).'
        )

    if not isinstance(visual, VisionTransformer):
        fail(f'it is a {type(visual).__name__}, not an open_clip VisionTransformer')
    if visual.attn_pool is not None:
        fail('it uses attentional pooling')
    if visual.pool_type != 'tok':
        fail(f'it pools with {visual.pool_type!r}, not the CLS token')
    if visual.proj is None:
        fail('it has no output projection (proj is None)')
    if not isinstance(visual.patch_dropout, nn.Identity):
        fail('patch dropout is on, which would drop the patches the masks refer to')
    if (
        visual.image_size[0] != visual.image_size[1]
        or visual.patch_size[0] != visual.patch_size[1]
    ):
        fail(f'image {visual.image_size} / patch {visual.patch_size} are not square')
    for i, blk in enumerate(visual.transformer.resblocks):
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, 'ln_1_kv'):
            fail(f'block {i} is a {type(blk).__name__}, not a plain ResidualAttentionBlock')
        attn = blk.attn
        if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
            fail(f'block {i} attention has separate q/k/v weights or extra key/value biases')
