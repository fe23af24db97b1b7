"""Conversions between ROS image messages and numpy arrays, without cv_bridge.

Pure functions: every one takes or returns a message and numpy arrays and keeps no state.
Every malformed message raises :class:`ImageConversionError` naming what is wrong, so the
node can log it and keep serving.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4),
    'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    '8UC1': (np.dtype(np.uint8), 1),
    '8UC3': (np.dtype(np.uint8), 3),
    '16UC1': (np.dtype(np.uint16), 1),
    '32SC1': (np.dtype(np.int32), 1),
    '32FC1': (np.dtype(np.float32), 1),
}
"""Every encoding this module converts: numpy element type and channel count."""

COLOR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
"""Encodings the node accepts as camera images."""

DEPTH_ENCODINGS = ('16UC1', '32FC1')
"""Encodings the node accepts as depth images: millimetres (16UC1) or metres (32FC1)."""

DEFAULT_MAX_PIXELS = 8192 * 8192
"""Largest height x width accepted; bigger claims are rejected before any allocation."""


class ImageConversionError(ValueError):
    """An image message that cannot be converted: the message says what is wrong.

    :param message: what is wrong and what to send instead.
    :param field: the faulty part ('encoding', 'size', 'limit', 'step', 'data' or 'array'), so a
        caller can rate-limit its logs per kind of fault.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def image_msg_to_array(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to a numpy array in native byte order.

    Row padding (``step`` larger than a row) is dropped and big-endian data is swapped.

    :param msg: the image message.
    :param max_pixels: largest ``height x width`` accepted.
    :return: (H, W) for one channel, else (H, W, C), of the encoding's dtype (see
        ``ENCODINGS``); a copy that does not alias the message.
    :raises ImageConversionError: unsupported encoding, zero or huge size, a step shorter than
        a row, or data whose length is not ``height x step``.
    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f'unsupported encoding {encoding!r}: use one of {", ".join(ENCODINGS)}',
            'encoding',
        )
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f'empty image: height={height}, width={width}', 'size')
    if height * width > max_pixels:
        raise ImageConversionError(
            f'image of {width}x{height} is larger than the limit of {max_pixels} pixels',
            'limit',
        )
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is shorter than one row of {width} {encoding} pixels '
            f'({row_bytes} bytes)',
            'step',
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != height * step:
        raise ImageConversionError(
            f'data has {data.size} bytes, expected height x step = {height} x {step} = '
            f'{height * step}',
            'data',
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    # The copy drops the padding and detaches the result from the message's buffer.
    pixels = rows.copy().view(dtype.newbyteorder('>' if msg.is_bigendian else '<'))
    if pixels.dtype != dtype:
        pixels = pixels.astype(dtype)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def array_to_image_msg(
    image: np.ndarray,
    encoding: str,
    header: Header | None = None,
    step: int | None = None,
    is_bigendian: bool = False,
) -> Image:
    """Convert a numpy array to a ``sensor_msgs/Image``.

    :param image: (H, W) or (H, W, C) array whose dtype and channel count match ``encoding``
        (any byte order).
    :param encoding: one of ``ENCODINGS``.
    :param header: copied into the message (stamp and frame_id); empty when None.
    :param step: bytes per row, at least one row's size; the padding is zero. Default: no
        padding.
    :param is_bigendian: write multi-byte elements big-endian.
    :return: the message.
    :raises ImageConversionError: unknown encoding, or an array that does not fit it.
    """
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f'unsupported encoding {encoding!r}: use one of {", ".join(ENCODINGS)}',
            'encoding',
        )
    dtype, channels = ENCODINGS[encoding]
    if image.ndim == 2 and channels == 1:
        height, width = image.shape
    elif image.ndim == 3 and image.shape[2] == channels:
        height, width = image.shape[:2]
    else:
        raise ImageConversionError(
            f'array of shape {image.shape} does not fit {encoding} ({channels} channel(s))',
            'array',
        )
    if image.dtype.kind != dtype.kind or image.dtype.itemsize != dtype.itemsize:
        raise ImageConversionError(
            f'array of dtype {image.dtype} does not fit {encoding}', 'array'
        )
    row_bytes = width * channels * dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is shorter than a row ({row_bytes} bytes)', 'array'
        )
    wire = dtype.newbyteorder('>' if is_bigendian else '<')
    rows = np.ascontiguousarray(image, dtype=wire).reshape(height, row_bytes // dtype.itemsize)
    if step == row_bytes:
        payload = rows.tobytes()
    else:
        padded = np.zeros((height, step), dtype=np.uint8)
        padded[:, :row_bytes] = rows.view(np.uint8)
        payload = padded.tobytes()
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.step = height, width, step
    msg.encoding = encoding
    msg.is_bigendian = bool(is_bigendian)
    # An array.array is stored as is; a bytes object would be checked element by element.
    msg.data = array.array('B', payload)
    return msg


def image_msg_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Convert a camera image to the predictor's input: three uint8 channels.

    Alpha is dropped and mono8 is repeated into three channels; BGR stays BGR (the predictor
    swaps it) so no copy is made for it.

    :param msg: an image in one of ``COLOR_ENCODINGS``.
    :param max_pixels: largest ``height x width`` accepted.
    :return: uint8 (H, W, 3) C-contiguous and its channel order, ``'rgb'`` or ``'bgr'``.
    :raises ImageConversionError: any encoding outside ``COLOR_ENCODINGS`` or a malformed
        message.
    """
    if msg.encoding not in COLOR_ENCODINGS:
        raise ImageConversionError(
            f'unsupported camera encoding {msg.encoding!r}: use one of '
            f'{", ".join(COLOR_ENCODINGS)}',
            'encoding',
        )
    pixels = image_msg_to_array(msg, max_pixels)
    if msg.encoding == 'mono8':
        return np.repeat(pixels[:, :, None], 3, axis=2), 'rgb'
    if pixels.shape[2] == 4:
        pixels = np.ascontiguousarray(pixels[:, :, :3])
    return pixels, 'bgr' if msg.encoding.startswith('bgr') else 'rgb'


def compressed_msg_to_rgb(
    msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to three uint8 channels.

    :param msg: the compressed image.
    :param max_pixels: largest ``height x width`` accepted.
    :return: uint8 (H, W, 3) and ``'bgr'`` (the decoder's channel order).
    :raises ImageConversionError: empty or undecodable data, or a huge image.
    """
    import cv2  # only this input needs OpenCV

    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError(f'compressed image ({msg.format!r}) has no data', 'data')
    pixels = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if pixels is None:
        raise ImageConversionError(
            f'compressed image ({msg.format!r}, {data.size} bytes) could not be decoded: '
            'send JPEG or PNG',
            'data',
        )
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise ImageConversionError(
            f'image of {pixels.shape[1]}x{pixels.shape[0]} is larger than the limit of '
            f'{max_pixels} pixels',
            'limit',
        )
    return pixels, 'bgr'


def depth_msg_to_metres(
    msg: Image, scale: float = 0.001, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Convert a depth image to metres, NaN where there is no measurement.

    :param msg: 16UC1 in units of ``scale`` metres (0 = no measurement) or 32FC1 in metres
        (NaN, inf or <= 0 = no measurement).
    :param scale: metres per 16UC1 unit (0.001: millimetres, the ROS convention).
    :param max_pixels: largest ``height x width`` accepted.
    :return: float32 (H, W) metres, NaN where invalid.
    :raises ImageConversionError: any other encoding or a malformed message.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ImageConversionError(
            f'unsupported depth encoding {msg.encoding!r}: use 16UC1 (mm) or 32FC1 (m)',
            'encoding',
        )
    raw = image_msg_to_array(msg, max_pixels)
    if msg.encoding == '16UC1':
        metres = raw.astype(np.float32) * np.float32(scale)
        metres[raw == 0] = np.nan
        return metres
    metres = raw.astype(np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres
