"""Conversions between ROS image messages and numpy arrays, without cv_bridge.

Pure functions: every one takes or returns a message and numpy arrays and keeps no state.
Every malformed message raises :class:`ImageConversionError` naming what is wrong, so the
node can log it and keep serving; a compressed frame that decodes but looks wrong is reported
to the caller's log.
"""

from __future__ import annotations

import array
import io
import re
import struct
import warnings
from collections.abc import Callable

import numpy as np
from PIL import ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin
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

COMPRESSED_CODECS: dict[str, bytes] = {'JPEG': b'\xff\xd8\xff', 'PNG': b'\x89PNG\r\n\x1a\n'}
"""The compressed formats decoded, by the leading bytes of their files."""

WarningLog = Callable[[str, tuple[str, ...], str], object]
"""``log(level, key, message)``: ``key`` names the kind of warning, so a caller can
rate-limit per kind (``masqclip_ros.runtime.RateLimitedLog`` has this signature)."""

# Pillow's plugin classes read only the header when constructed (load() decodes), and unlike
# Image.open they apply no process-wide pixel limit of their own: max_pixels is the limit.
_HEADER_READERS = {'JPEG': JpegImagePlugin.JpegImageFile, 'PNG': PngImagePlugin.PngImageFile}

# What Pillow raises for malformed headers (as Image.open catches) or data (load).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


class ImageConversionError(ValueError):
    """An image message that cannot be converted: the message says what is wrong.

    :param message: what is wrong and what to send instead.
    :param field: the faulty part ('encoding', 'format', 'size', 'limit', 'step', 'data' or
        'array'), so a caller can rate-limit its logs per kind of fault.
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
    msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS, log: WarningLog | None = None
) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to three uint8 channels.

    The payload's leading bytes choose the decoder (whatever ``format`` says) and the size
    claimed by its header is checked before any pixel is decoded, so a small file that
    claims a huge image costs nothing. Pixels are those OpenCV's ``imdecode`` gives (EXIF
    orientation applied, alpha dropped, 16 bits reduced to their high byte).

    :param msg: the compressed image.
    :param max_pixels: largest ``height x width`` accepted.
    :param log: called as ``log('warning', key, message)`` for a frame that decodes but whose
        ``format`` names the other codec (the node's rate-limited log fits); a Python warning
        when None.
    :return: uint8 (H, W, 3) C-contiguous, writable, and ``'rgb'``.
    :raises ImageConversionError: empty data, a payload that is neither JPEG nor PNG
        ('format'), a header claiming more than ``max_pixels`` ('limit'), or a header or
        data that cannot be decoded, truncated data included ('data').
    """
    data = memoryview(msg.data).cast('B')
    if data.nbytes == 0:
        raise ImageConversionError(f'compressed image ({msg.format!r}) has no data', 'data')
    codec = _payload_codec(data)
    if codec is None:
        raise ImageConversionError(
            f'compressed image is neither JPEG nor PNG: format {msg.format!r}, data starts '
            f'with {data[:8].hex(" ")}; send jpeg or png (compressed_image_transport)',
            'format',
        )
    _check_before_decoding(data, codec, max_pixels)
    with _read_header(data, codec) as image:
        pixels = _decode_rgb(image, codec)
    _warn_if_format_disagrees(msg.format, codec, log or _python_warning)
    return pixels, 'rgb'


def _python_warning(level: str, key: tuple[str, ...], message: str) -> None:
    # Python's default filter shows each distinct message once: a misconfigured camera does not
    # flood stderr.
    warnings.warn(message, stacklevel=2)


def _payload_codec(data: memoryview) -> str | None:
    """The codec whose signature starts ``data``, None if none does."""
    for codec, signature in COMPRESSED_CODECS.items():
        if data[: len(signature)] == signature:
            return codec
    return None


def _codec_named_in(format_field: str) -> str | None:
    """The codec a ``CompressedImage.format`` names (``jpeg``, ``png``, or
    image_transport's ``bgr8; jpeg compressed bgr8``), None when it names neither."""
    words = set(re.split(r'[\s;]+', format_field.lower()))
    if words & {'jpeg', 'jpg'}:
        return 'JPEG'
    return 'PNG' if 'png' in words else None


def _warn_if_format_disagrees(format_field: str, codec: str, log: WarningLog) -> None:
    claimed = _codec_named_in(format_field)
    if claimed not in (None, codec):
        log(
            'warning',
            ('image', 'format'),
            f'compressed image: format {format_field!r} says {claimed} but the data is '
            f'{codec}; decoded as {codec}',
        )


def _read_header(data: memoryview, codec: str) -> ImageFile.ImageFile:
    """The image with its header read (size and mode) and no pixel decoded."""
    try:
        return _HEADER_READERS[codec](io.BytesIO(data))
    except _DECODER_ERRORS as error:
        raise ImageConversionError(
            f'{codec} header of {data.nbytes} bytes is malformed: {error}', 'data'
        ) from error


def _check_before_decoding(data: memoryview, codec: str, max_pixels: int) -> None:
    """Refuse what the header or the checksums show wrong, decoding no pixel."""
    with _read_header(data, codec) as image:
        _check_claimed_size(image, codec, max_pixels)
        try:
            # PNG: every chunk's CRC, as libpng checks them (Pillow's load() skips IDAT's);
            # JPEG has no checksum and verify() does nothing. It uses up ``image``.
            image.verify()
        except _DECODER_ERRORS as error:
            raise ImageConversionError(f'{codec} data is corrupt: {error}', 'data') from error


def _check_claimed_size(image: ImageFile.ImageFile, codec: str, max_pixels: int) -> None:
    width, height = image.size  # Pillow refuses a zero width or height as malformed
    if width * height > max_pixels:
        raise ImageConversionError(
            f'{codec} image of {width}x{height} is larger than the limit of {max_pixels} '
            'pixels (refused before decoding)',
            'limit',
        )


def _decode_rgb(image: ImageFile.ImageFile, codec: str) -> np.ndarray:
    """Decode the pixels to uint8 RGB, as OpenCV's ``imdecode(..., IMREAD_COLOR)`` would."""
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODER_ERRORS as error:
        raise ImageConversionError(
            f'{codec} data of {image.size[0]}x{image.size[1]} could not be decoded: {error}',
            'data',
        ) from error
    if image.mode.startswith('I;16'):  # 16-bit grey; Pillow's convert() would clip, not scale
        grey = (np.asarray(image) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # Alpha and transparency are dropped, as by OpenCV; converting with them would warn.
    image.info.pop('transparency', None)
    return np.array(image if image.mode == 'RGB' else image.convert('RGB'))


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
