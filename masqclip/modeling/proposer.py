"""The class-agnostic Mask2Former mask proposer of MasQCLIP, and upstream weight conversion."""

from typing import Any

import torch
from torch import Tensor, nn

from masqclip.modeling.backbone import ResNetBackbone, convert_detectron2_resnet_state_dict
from masqclip.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from masqclip.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    'PIXEL_MEAN',
    'PIXEL_STD',
    'SIZE_DIVISIBILITY',
    'MaskProposer',
    'build_proposer',
    'convert_upstream_proposer_state_dict',
]

# detectron2's ImageNet statistics for RGB images in 0-255.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# The backbone's coarsest stride; input sizes must be multiples of it.
SIZE_DIVISIBILITY = 32


class MaskProposer(nn.Module):
    """Mask2Former with a 2-way (object / no-object) class head: ResNet, pixel decoder, decoder.

    :param backbone: the ResNet returning res2..res5.
    :param pixel_decoder: the deformable-attention pixel decoder.
    :param decoder: the masked-attention transformer decoder.
    """

    def __init__(
        self,
        backbone: ResNetBackbone,
        pixel_decoder: MSDeformAttnPixelDecoder,
        decoder: MultiScaleMaskedTransformerDecoder,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        # Non-persistent: upstream checkpoints do not store them.
        self.register_buffer(
            'pixel_mean', torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            'pixel_std', torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )

    def forward(
        self, images: Tensor, image_sizes: Tensor | None = None
    ) -> dict[str, Tensor | list[dict[str, Tensor]]]:
        """Propose masks for a batch of padded images.

        :param images: float [B, 3, H, W], RGB in 0-255, H and W multiples of 32 (content at
            the top left, padding at the bottom/right).
        :param image_sizes: int [B, 2], the (h, w) of each image's content; the padding outside
            it is set to zero after normalisation, i.e. the pixel-mean colour, as the reference
            pads (method.md 1.2). None: the whole canvas is content (training crops).
        :return: ``{'pred_logits': float [B, Q, 2] (index 0 "object", 1 "no-object"),
            'pred_masks': float [B, Q, H/4, W/4] mask logits, 'aux_outputs': list of
            ``dec_layers`` dicts with the same two keys (earlier predictions)}``.
        :raises ValueError: if the input is not [B, 3, H, W] with H, W multiples of 32.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'expected images of shape [B, 3, H, W], got {list(images.shape)}')
        h, w = int(images.shape[2]), int(images.shape[3])
        if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ValueError(
                f'image size {h}x{w} is not a multiple of {SIZE_DIVISIBILITY}: pad the images '
                f'(bottom/right, zeros) to a multiple of {SIZE_DIVISIBILITY} first'
            )
        x = (images - self.pixel_mean) / self.pixel_std
        if image_sizes is not None:
            x = x.masked_fill(~content_mask(image_sizes, h, w), 0.0)
        features = self.backbone(x)
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.decoder(multi_scale, mask_features)


def content_mask(image_sizes: Tensor, height: int, width: int) -> Tensor:
    """bool [B, 1, height, width]: True inside each image's (h, w) content, False in its
    padding.

    Built from comparisons with ``arange`` (no data-dependent shapes), so it exports to ONNX.
    """
    rows = torch.arange(height, device=image_sizes.device) < image_sizes[:, :1]
    cols = torch.arange(width, device=image_sizes.device) < image_sizes[:, 1:]
    return rows[:, None, :, None] & cols[:, None, None, :]


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in cfg:
        raise KeyError(
            f'proposer config lacks the {name!r} section: expected keys backbone, '
            'pixel_decoder and decoder (see masqclip/model_configs/*.json)'
        )
    return cfg[name]


def build_proposer(cfg: dict[str, Any]) -> MaskProposer:
    """Build a randomly initialised proposer from a model config's ``"proposer"`` section.

    :param cfg: ``{"backbone": {"block", "layers", optional "width"}, "pixel_decoder": {"conv_dim",
        "mask_dim", "num_encoder_layers", "num_heads", "num_points", "dim_feedforward"},
        "decoder": {"hidden_dim", "num_queries", "num_heads", "dim_feedforward",
        "dec_layers"}}``.
    :return: the proposer, in training mode.
    :raises KeyError: if a section or key is missing.
    :raises ValueError: for an unsupported block type or inconsistent sizes.
    """
    bb, pd, dec = (_section(cfg, n) for n in ('backbone', 'pixel_decoder', 'decoder'))
    try:
        backbone = ResNetBackbone(bb['block'], bb['layers'], bb.get('width', 64))
        pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=[backbone.out_channels[k] for k in ('res2', 'res3', 'res4', 'res5')],
            conv_dim=pd['conv_dim'],
            mask_dim=pd['mask_dim'],
            num_encoder_layers=pd['num_encoder_layers'],
            num_heads=pd['num_heads'],
            num_points=pd['num_points'],
            dim_feedforward=pd['dim_feedforward'],
        )
        decoder = MultiScaleMaskedTransformerDecoder(
            in_channels=pd['conv_dim'],
            hidden_dim=dec['hidden_dim'],
            num_queries=dec['num_queries'],
            num_heads=dec['num_heads'],
            dim_feedforward=dec['dim_feedforward'],
            dec_layers=dec['dec_layers'],
            mask_dim=pd['mask_dim'],
        )
    except KeyError as e:
        raise KeyError(f'proposer config lacks key {e}: see masqclip/model_configs/*.json') from e
    return MaskProposer(backbone, pixel_decoder, decoder)


def convert_upstream_proposer_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an upstream MasQCLIP / Mask2Former (detectron2) state dict onto :class:`MaskProposer`.

    ``backbone.*`` (detectron2 ResNet names) -> ``backbone.*`` (torchvision names),
    ``sem_seg_head.pixel_decoder.*`` -> ``pixel_decoder.*`` and
    ``sem_seg_head.predictor.*`` -> ``decoder.*``. Every other key (``masqclip.*``,
    ``criterion.*``, ...) is dropped. The result loads with ``load_state_dict(strict=True)``.

    :param sd: the checkpoint's model state dict (``torch.load(path)['model']``).
    :return: proposer keys to the same tensors (not copied).
    :raises ValueError: if a backbone key is not a detectron2 ResNet key, or if no proposer
        key is present at all.
    """
    backbone = {k[len('backbone.') :]: v for k, v in sd.items() if k.startswith('backbone.')}
    out = {'backbone.' + k: v for k, v in convert_detectron2_resnet_state_dict(backbone).items()}
    renames = {
        'sem_seg_head.pixel_decoder.': 'pixel_decoder.',
        'sem_seg_head.predictor.': 'decoder.',
    }
    for key, value in sd.items():
        for old, new in renames.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
    if not out:
        raise ValueError(
            'no proposer weights found: expected backbone.*, sem_seg_head.pixel_decoder.* and '
            "sem_seg_head.predictor.* keys (pass the checkpoint's 'model' entry)"
        )
    return out
