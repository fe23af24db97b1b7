"""MasQCLIP: a class-agnostic mask proposer whose proposals CLIP classifies via mask tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masqclip.modeling.mask_clip import MaskCLIPVisual
from masqclip.modeling.proposer import MaskProposer
from masqclip.modeling.text_encoder import TextEncoder

# OpenAI CLIP's normalisation of 0-1 RGB.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_LOGIT_SCALE = 100.0
"""CLIP's fixed logit scale: class logits are cosine similarities x 100 (method notes 1.7)."""


def clip_logits(
    mask_embeddings: Tensor, text_embeddings: Tensor, logit_scale: float = CLIP_LOGIT_SCALE
) -> Tensor:
    """CLIP's class logits of each mask: ``logit_scale`` x cosine similarity, in float32.

    :param mask_embeddings: float [..., D], L2-normalised.
    :param text_embeddings: float [N + 1, D], L2-normalised, background last.
    :return: float32 [..., N + 1].
    """
    return logit_scale * mask_embeddings.float() @ text_embeddings.float().T


class ImageModel(Protocol):
    """The vocabulary-free image path, whatever runs it: ``MasQCLIP`` itself (the reference),
    its bf16 copy, or an exported onnxruntime or TensorRT graph."""

    def __call__(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(images [B, 3, Hp, Wp] (RGB 0-255, black padding), image sizes int64 [B, 2] (the
        (h, w) of the content before padding)) -> mask logits [B, Q, Hp/4, Wp/4], objectness
        [B, Q], L2-normalised mask embeddings [B, Q, D], all float32."""
        ...


class MasQCLIP(nn.Module):
    """The whole model. ``forward`` is the vocabulary-free image path (what gets exported);
    text enters only through ``encode_classes``, whose output the predictor caches.

    :param proposer: class-agnostic Mask2Former (masks + 2-way object/no-object logits).
    :param mask_clip: CLIP's image tower with per-layer mask-token query projections.
    :param text: CLIP's text tower and tokenizer.
    """

    def __init__(
        self, proposer: MaskProposer, mask_clip: MaskCLIPVisual, text: TextEncoder
    ) -> None:
        super().__init__()
        self.proposer = proposer
        self.mask_clip = mask_clip
        self.text = text
        self.register_buffer(
            'clip_mean', torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer(
            'clip_std', torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255, persistent=False
        )

    @property
    def clip_image_size(self) -> int:
        return self.mask_clip.image_size

    def clip_input(self, images: Tensor) -> Tensor:
        """The padded canvas squashed to CLIP's input size, padding included (method.md 1.2).

        :param images: float [B, 3, Hp, Wp], RGB 0-255.
        :return: float [B, 3, S, S], CLIP-normalised.
        """
        size = (self.clip_image_size, self.clip_image_size)
        squashed = F.interpolate(images, size=size, mode='bicubic', align_corners=False)
        return (squashed - self.clip_mean) / self.clip_std

    def forward(
        self, images: Tensor, image_sizes: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Propose masks and embed each with CLIP.

        :param images: float [B, 3, Hp, Wp], RGB 0-255, zero-padded (black) to a multiple of
            32: CLIP sees this canvas as it is.
        :param image_sizes: int [B, 2], the (h, w) of the content in each canvas; the proposer
            sees its padding as the pixel-mean colour (method.md 1.2). None: no padding.
        :return: mask logits [B, Q, Hp/4, Wp/4]; objectness p_obj [B, Q]; L2-normalised mask
            embeddings [B, Q, D].
        """
        proposals = self.proposer(images, image_sizes)
        mask_logits = proposals['pred_masks']
        objectness = proposals['pred_logits'].softmax(-1)[..., 0]
        embeddings = self.mask_clip(self.clip_input(images), mask_logits)
        return mask_logits, objectness, embeddings

    def encode_classes(
        self, classes: Sequence[Sequence[str]], templates: Sequence[str] = ()
    ) -> Tensor:
        """[N, D] L2-normalised text embeddings, synonyms (x templates) averaged per class."""
        return self.text.encode_classes(classes, templates or None)
