"""Fixed-size image models: fitting frames of any padded size into an export's input size.

An exported graph has a fixed input size (the feature-map sizes are Python ints at export
time). The export size is the padded network input of the configured camera resolution
(``network_input_size``). A frame whose padded input is smaller is letter-padded into the
export canvas (zeros at the bottom and right, as the predictor's own padding, with the same
content size) and the mask logits cropped back; a larger one is refused with
``InputSizeError``.

Letter-padding is exact for the proposer (it sees all padding as the pixel-mean colour) but
not for CLIP: CLIP sees the whole canvas squashed to its input size (method.md 1.2), so more
padding means a smaller image in CLIP's view. Frames at the configured resolution are
unaffected.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from masqclip.export.errors import InputSizeError
from masqclip.inference.transforms import PreprocessCfg
from masqclip.modeling.masqclip import ImageModel

logger = logging.getLogger('masqclip')

MISMATCH_POLICIES = ('pad', 'error')

# The proposer predicts masks at 1/4 of its input resolution.
MASK_STRIDE = 4


def network_input_size(config: dict, frame_height: int, frame_width: int) -> tuple[int, int]:
    """The padded network input (Hp, Wp) the predictor makes of a frame of this size.

    :param config: the architecture's config (its ``preprocess`` entry decides).
    :return: (Hp, Wp), multiples of the size divisibility: the size to export at.
    """
    return PreprocessCfg.of(config).plan(frame_height, frame_width).padded


def validate_input_size(config: dict, input_size: tuple[int, int]) -> tuple[int, int]:
    """Check that (Hp, Wp) is a possible padded network input of this architecture.

    :raises InputSizeError: for a side that is not a positive multiple of the divisibility.
    """
    divisibility = PreprocessCfg.of(config).size_divisibility
    height, width = (int(side) for side in input_size)
    if height <= 0 or width <= 0 or height % divisibility or width % divisibility:
        raise InputSizeError(
            f'input size {height}x{width} (HxW) must be positive multiples of '
            f'{divisibility}; derive it from the camera resolution with network_input_size '
            '(e.g. a 640x480 camera gives the padded size the predictor feeds the model)'
        )
    return height, width


class FixedSizeImageModel:
    """Runs a fixed-input image model on images of any padded size that fits its canvas.

    :param image_model: takes images of exactly [B, 3, Hp, Wp] = ``(batch, 3, *input_size)``
        and their content sizes.
    :param input_size: (Hp, Wp) the model was exported at.
    :param on_mismatch: 'pad' letter-pads smaller inputs into the canvas (a warning once per
        size); 'error' refuses every input of another size.
    :param batch_size: the exported batch size.
    """

    def __init__(
        self,
        image_model: ImageModel,
        input_size: tuple[int, int],
        on_mismatch: str = 'pad',
        batch_size: int = 1,
    ) -> None:
        if on_mismatch not in MISMATCH_POLICIES:
            raise ValueError(
                f'on_mismatch must be one of {MISMATCH_POLICIES}, got {on_mismatch!r}'
            )
        self.image_model = image_model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.on_mismatch = on_mismatch
        self.batch_size = batch_size
        self._warned: set[tuple[int, int]] = set()

    def __call__(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the image path.

        :param images: float [B, 3, H, W] RGB 0-255, H <= Hp and W <= Wp (or equal with
            ``on_mismatch='error'``).
        :param image_sizes: int [B, 2], the (h, w) of the content in each image.
        :return: mask logits [B, Q, H/4, W/4], objectness [B, Q], mask embeddings [B, Q, D].
        :raises InputSizeError: for a batch size or a frame that does not fit.
        """
        if images.ndim != 4 or images.shape[0] != self.batch_size or images.shape[1] != 3:
            raise InputSizeError(
                f'the exported model takes [{self.batch_size}, 3, H, W] images, got '
                f'{list(images.shape)}'
            )
        size = (int(images.shape[2]), int(images.shape[3]))
        if size == self.input_size:
            return self.image_model(images, image_sizes)
        export_h, export_w = self.input_size
        if self.on_mismatch == 'error' or size[0] > export_h or size[1] > export_w:
            raise InputSizeError(
                f'the model was exported for a {export_h}x{export_w} (HxW) padded input but '
                f'this frame needs {size[0]}x{size[1]}; export again for this camera '
                'resolution (masqclip export ... --frame-size WxH, or the node parameter '
                'model.input_size), or send frames of the configured resolution'
            )
        if size not in self._warned:
            self._warned.add(size)
            logger.warning(
                'letter-padding %dx%d inputs into the %dx%d export canvas: CLIP sees the extra '
                'padding, so results differ slightly from the torch backend; export at this '
                'resolution for exact results',
                *size,
                export_h,
                export_w,
            )
        canvas = F.pad(images, (0, export_w - size[1], 0, export_h - size[0]))
        mask_logits, objectness, embeddings = self.image_model(canvas, image_sizes)
        rows, cols = size[0] // MASK_STRIDE, size[1] // MASK_STRIDE
        return mask_logits[..., :rows, :cols], objectness, embeddings
