"""ResNet backbone of the mask proposer, with detectron2 checkpoint conversion.

The proposer's backbone is detectron2's ResNet with FrozenBN and the stride in the 3x3
convolution (``STRIDE_IN_1X1 False``), which is exactly torchvision's ResNet v1.5 with
``FrozenBatchNorm2d``; only the parameter names differ.
"""

import re

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d

__all__ = ['RESNET_BLOCKS', 'ResNetBackbone', 'convert_detectron2_resnet_state_dict']

RESNET_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    'basic': BasicBlock,
    'bottleneck': Bottleneck,
}

_LEVELS = ('res2', 'res3', 'res4', 'res5')


class ResNetBackbone(ResNet):
    """A torchvision ResNet without pooling head that returns the res2..res5 feature maps.

    :param block: ``'basic'`` (ResNet-18/34 blocks) or ``'bottleneck'`` (ResNet-50/101).
    :param layers: number of blocks in each of the four stages, e.g. ``[3, 4, 6, 3]``.
    :param width: channels of the stem and the first stage (doubling per stage); 64 is the
        standard ResNet, smaller widths make toy backbones (the stage widths hold most weights).
    """

    def __init__(self, block: str, layers: list[int], width: int = 64) -> None:
        if block not in RESNET_BLOCKS:
            raise ValueError(f'unknown ResNet block {block!r}: use one of {sorted(RESNET_BLOCKS)}')
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f'ResNet layers must be four positive block counts, got {layers}')
        block_cls = RESNET_BLOCKS[block]
        super().__init__(block_cls, list(layers), norm_layer=FrozenBatchNorm2d)
        # The classification head is never used and would only add unexpected keys.
        del self.avgpool
        del self.fc
        if width != 64:  # torchvision hard-codes 64: rebuild the stem and stages narrower
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = FrozenBatchNorm2d(width)
            for i, (name, blocks) in enumerate(
                zip(('layer1', 'layer2', 'layer3', 'layer4'), layers, strict=True)
            ):
                setattr(
                    self,
                    name,
                    self._make_layer(block_cls, width * 2**i, blocks, stride=1 if i == 0 else 2),
                )
        out = width * block_cls.expansion
        self.out_channels: dict[str, int] = {name: out * 2**i for i, name in enumerate(_LEVELS)}
        self.strides: dict[str, int] = {name: 4 * 2**i for i, name in enumerate(_LEVELS)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Compute the four feature maps.

        :param x: normalised images, float [B, 3, H, W].
        :return: ``{'res2': [B, C2, H/4, W/4], 'res3': [B, C3, H/8, W/8],
            'res4': [B, C4, H/16, W/16], 'res5': [B, C5, H/32, W/32]}`` with the channel
            counts of :attr:`out_channels`.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {'res2': res2, 'res3': res3, 'res4': res4, 'res5': res5}


_NORM_FIELDS = '(weight|bias|running_mean|running_var)'
_STEM_RE = re.compile(r'stem\.conv1\.(weight|norm\.' + _NORM_FIELDS + r')')
_BLOCK_RE = re.compile(
    r'res([2-5])\.(\d+)\.(conv[1-3]|shortcut)\.(weight|norm\.' + _NORM_FIELDS + r')'
)


def convert_detectron2_resnet_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a detectron2 ResNet state dict to :class:`ResNetBackbone` names.

    ``stem.conv1.weight`` -> ``conv1.weight``, ``stem.conv1.norm.*`` -> ``bn1.*``,
    ``res{k}.{i}.conv{j}.weight`` -> ``layer{k-1}.{i}.conv{j}.weight``,
    ``res{k}.{i}.conv{j}.norm.*`` -> ``layer{k-1}.{i}.bn{j}.*`` and
    ``res{k}.{i}.shortcut.{weight,norm.*}`` -> ``layer{k-1}.{i}.downsample.{0.weight,1.*}``.
    Tensors are passed through unchanged (not copied).

    :param sd: detectron2 backbone keys (without the ``backbone.`` prefix) to tensors.
    :return: the same tensors under torchvision names.
    :raises ValueError: for a key that is not part of a detectron2 FrozenBN ResNet.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        stem = _STEM_RE.fullmatch(key)
        block = _BLOCK_RE.fullmatch(key)
        if stem is not None:
            field = stem.group(1)
            new_key = 'conv1.weight' if field == 'weight' else 'bn1.' + stem.group(2)
        elif block is not None:
            stage, index, conv, field, norm_field = block.groups()
            prefix = f'layer{int(stage) - 1}.{index}.'
            if conv == 'shortcut':
                new_key = prefix + (
                    'downsample.0.weight' if field == 'weight' else 'downsample.1.' + norm_field
                )
            elif field == 'weight':
                new_key = prefix + conv + '.weight'
            else:
                new_key = prefix + 'bn' + conv[-1] + '.' + norm_field
        else:
            raise ValueError(
                f'unexpected detectron2 ResNet key {key!r}: expected stem.conv1.* or '
                'res{2..5}.{i}.{conv1,conv2,conv3,shortcut}.{weight,norm.*}; is this a '
                'FrozenBN ResNet checkpoint?'
            )
        out[new_key] = value
    return out
