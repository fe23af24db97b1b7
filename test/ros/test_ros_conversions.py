"""Round trips and rejections of the image conversions (no node): raw images and compressed
frames, decompression bombs included."""

import contextlib
import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

pytest.importorskip('sensor_msgs.msg')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from masqclip_ros.conversions import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    ENCODINGS,
    ImageConversionError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    depth_msg_to_metres,
    image_msg_to_array,
    image_msg_to_rgb,
)

pytestmark = pytest.mark.ros


def random_image(encoding: str, height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == 'f':
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('padding', [0, 3])
@pytest.mark.parametrize('bigendian', [False, True])
def test_round_trip_every_encoding(encoding: str, padding: int, bigendian: bool) -> None:
    image = random_image(encoding)
    row_bytes = image[0].nbytes
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_image_msg(
        image, encoding, header, step=row_bytes + padding, is_bigendian=bigendian
    )
    assert (msg.height, msg.width, msg.step) == (5, 7, row_bytes + padding)
    assert len(msg.data) == msg.height * msg.step
    assert msg.header.frame_id == 'cam' and msg.header.stamp.nanosec == 345
    back = image_msg_to_array(msg)
    assert back.dtype == image.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, image)


def test_big_endian_bytes_are_really_swapped() -> None:
    msg = array_to_image_msg(np.array([[0x0102]], dtype=np.uint16), '16UC1', is_bigendian=True)
    assert bytes(msg.data) == b'\x01\x02'
    msg.is_bigendian = False
    assert image_msg_to_array(msg)[0, 0] == 0x0201


def test_result_does_not_alias_the_message() -> None:
    msg = array_to_image_msg(np.zeros((2, 2), np.uint8), 'mono8')
    out = image_msg_to_array(msg)
    out[:] = 9
    assert bytes(msg.data) == bytes(4)


def make_msg(**fields) -> Image:
    msg = Image(height=2, width=3, encoding='rgb8', step=9)
    msg.data = bytes(18)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    ('fields', 'words'),
    [
        ({'encoding': 'yuv422'}, 'unsupported encoding'),
        ({'height': 0, 'data': b''}, 'empty image'),
        ({'width': 0}, 'empty image'),
        ({'height': 100000, 'width': 100000}, 'larger than the limit'),
        ({'step': 8}, 'shorter than one row'),
        ({'data': bytes(17)}, 'expected height x step'),
        ({'data': bytes(19)}, 'expected height x step'),
    ],
)
def test_malformed_images_are_rejected_with_a_reason(fields: dict, words: str) -> None:
    with pytest.raises(ImageConversionError, match=words):
        image_msg_to_array(make_msg(**fields))


def test_rgb_input_from_every_camera_encoding() -> None:
    rgb = random_image('rgb8')
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    cases = {
        'rgb8': (rgb, 'rgb', rgb),
        'bgr8': (bgr, 'bgr', bgr),
        'rgba8': (np.concatenate([rgb, alpha], 2), 'rgb', rgb),
        'bgra8': (np.concatenate([bgr, alpha], 2), 'bgr', bgr),
        'mono8': (rgb[:, :, 0], 'rgb', np.repeat(rgb[:, :, :1], 3, 2)),
    }
    for encoding, (image, color, expected) in cases.items():
        out, out_color = image_msg_to_rgb(array_to_image_msg(image, encoding, step=64))
        assert out_color == color, encoding
        assert out.shape == expected.shape and out.flags.c_contiguous, encoding
        np.testing.assert_array_equal(out, expected, err_msg=encoding)
    with pytest.raises(ImageConversionError, match='camera encoding'):
        image_msg_to_rgb(array_to_image_msg(random_image('16UC1'), '16UC1'))


def test_depth_in_millimetres_and_metres_with_invalid_pixels() -> None:
    mm = np.array([[0, 1500], [65535, 1]], np.uint16)
    metres = depth_msg_to_metres(array_to_image_msg(mm, '16UC1'))
    assert np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[0, 1], 1.5)
    np.testing.assert_allclose(metres[1], [65.535, 0.001], rtol=1e-6)
    floats = np.array([[np.nan, np.inf], [-1.0, 2.25]], np.float32)
    metres = depth_msg_to_metres(array_to_image_msg(floats, '32FC1'))
    assert np.isnan(metres[0]).all() and np.isnan(metres[1, 0]) and metres[1, 1] == 2.25
    with pytest.raises(ImageConversionError, match='depth encoding'):
        depth_msg_to_metres(array_to_image_msg(mm.astype(np.uint8), 'mono8'))


def compressed(data: bytes, format_field: str = '') -> CompressedImage:
    msg = CompressedImage(format=format_field)
    msg.data = data
    return msg


def scene_bgr(height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 BGR with smooth gradients and noise, so JPEG rounding is exercised."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 40, (height, width, 3))
    return ((np.stack([x * 3, y * 5, x + y], 2) + noise) % 256).astype(np.uint8)


def encoded(kind: str) -> bytes:
    """A frame as camera drivers and image_transport publish them, by kind."""
    cv2 = pytest.importorskip('cv2')
    bgr = scene_bgr()
    # 16 bits whose low bytes vary, so keeping the high byte differs from rounding or clipping.
    wide = bgr.astype(np.uint16) * 257 + np.arange(bgr.size, dtype=np.uint16).reshape(bgr.shape)
    pil = PILImage.fromarray(bgr[:, :, ::-1])
    opencv = {
        'jpeg bgr8': ('.jpg', bgr, []),
        'jpeg mono8': ('.jpg', bgr[:, :, 0], []),
        'jpeg 4:4:4': ('.jpg', bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, 0x111111]),
        'jpeg progressive': ('.jpg', bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        'png bgr8': ('.png', bgr, []),
        'png mono8': ('.png', bgr[:, :, 0], []),
        'png bgra8': ('.png', np.concatenate([bgr, bgr[:, :, :1]], 2), []),
        'png bgr16': ('.png', wide, []),
        'png mono16': ('.png', wide[:, :, 0], []),
    }
    if kind in opencv:
        extension, pixels, options = opencv[kind]
        ok, data = cv2.imencode(extension, pixels, options)
        assert ok
        return data.tobytes()
    out = io.BytesIO()
    if kind == 'png palette with alpha':
        pil.quantize(16).save(out, 'PNG', transparency=bytes(range(0, 256, 16)))
    elif kind == 'jpeg rotated by exif':
        exif = PILImage.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        pil.save(out, 'JPEG', exif=exif.tobytes())
    return out.getvalue()


ENCODED_KINDS = [
    'jpeg bgr8', 'jpeg mono8', 'jpeg 4:4:4', 'jpeg progressive', 'jpeg rotated by exif',
    'png bgr8', 'png mono8', 'png bgra8', 'png bgr16', 'png mono16', 'png palette with alpha',
]  # fmt: skip


@pytest.mark.parametrize('kind', ENCODED_KINDS)
def test_compressed_frames_decode_to_the_pixels_opencv_gives(kind: str) -> None:
    # OpenCV's imdecode is what this conversion used before it read headers first.
    cv2 = pytest.importorskip('cv2')
    data = encoded(kind)
    before = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    out, color = compressed_msg_to_rgb(compressed(data, kind.split()[0]))
    assert color == 'rgb' and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable
    assert out.shape == before.shape
    np.testing.assert_array_equal(out, before)


def zlib_of_zeros(length: int) -> bytes:
    """A zlib stream of ``length`` zero bytes, without compressing all of them: after a full
    flush the compressor starts afresh, so every further chunk deflates to the same bytes."""
    chunk = 1 << 24
    zeros = bytes(chunk)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw: header and checksum are ours
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    rest = deflate.compress(bytes(length % chunk)) + deflate.flush()
    checksum = 1
    for _ in range(length // chunk):
        checksum = zlib.adler32(zeros, checksum)
    checksum = zlib.adler32(bytes(length % chunk), checksum)
    return b'\x78\xda' + block * (length // chunk) + rest + struct.pack('>I', checksum)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', crc)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG, all black: each row is a filter byte and ``width`` zeros."""
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    pixels = zlib_of_zeros(height * (width + 1))
    return (
        b'\x89PNG\r\n\x1a\n'
        + png_chunk(b'IHDR', header)
        + png_chunk(b'IDAT', pixels)
        + png_chunk(b'IEND', b'')
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """An 8x8 baseline JPEG whose frame header (SOF0) claims ``width x height``."""
    out = io.BytesIO()
    PILImage.new('RGB', (8, 8)).save(out, 'JPEG')
    data = bytearray(out.getvalue())
    sof = data.index(b'\xff\xc0')  # marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


MEASURE_DECODE = """
import json, resource, sys, time
from sensor_msgs.msg import CompressedImage
from masqclip_ros.conversions import ImageConversionError, compressed_msg_to_rgb
msg = CompressedImage(format=sys.argv[2])
msg.data = open(sys.argv[1], 'rb').read()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    compressed_msg_to_rgb(msg)
    error = None
except ImageConversionError as refusal:
    error = [refusal.field, str(refusal)]
seconds = time.perf_counter() - started
growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
print(json.dumps({'error': error, 'growth_mib': growth_kib / 1024, 'seconds': seconds}))
"""


def decode_in_fresh_process(tmp_path, data: bytes, format_field: str) -> dict:
    """Run the conversion in a new interpreter; return its peak memory growth, time, refusal."""
    payload = tmp_path / 'payload'
    payload.write_bytes(data)
    command = [sys.executable, '-c', MEASURE_DECODE, str(payload), format_field]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize('kind', ['png', 'jpeg'])
def test_decompression_bombs_are_refused_without_decoding(tmp_path, kind: str) -> None:
    # 30000 x 30000 grey is 900 MB decoded, 2.7 GB as RGB: the 0.9 MB PNG is real, the
    # 0.6 KB JPEG only claims it. Decoding first costs GBs and seconds.
    data = png_of_zeros(30000, 30000) if kind == 'png' else jpeg_claiming(30000, 30000)
    assert len(data) < 1_000_000
    result = decode_in_fresh_process(tmp_path, data, kind)
    assert result['error'] is not None, 'the bomb was decoded'
    field, message = result['error']
    assert field == 'limit'
    assert '30000x30000' in message and str(DEFAULT_MAX_PIXELS) in message
    assert result['growth_mib'] < 50, result
    assert result['seconds'] < 1, result


def test_a_png_bomb_is_really_a_png_of_zeros() -> None:
    data = png_of_zeros(3000, 2000)  # the bomb's recipe, small enough to decode here
    out, _ = compressed_msg_to_rgb(compressed(data, 'png'))
    assert out.shape == (2000, 3000, 3) and not out.any()


def compressed_depth(data: bytes) -> bytes:
    """compressed_depth_image_transport's payload: a 12-byte config header, then PNG."""
    return struct.pack('<iff', 0, 0.0, 0.0) + data


@pytest.mark.parametrize(
    ('format_field', 'make'),
    [
        ('tiff', lambda: pil_encoded('TIFF')),
        ('bmp', lambda: pil_encoded('BMP')),
        ('webp', lambda: pil_encoded('WEBP')),
        ('16UC1; compressedDepth png', lambda: compressed_depth(encoded('png mono16'))),
        ('jpeg', lambda: b'not an image'),
    ],
)
def test_compressed_formats_other_than_jpeg_and_png_are_refused(format_field, make) -> None:
    data = make()
    with pytest.raises(ImageConversionError, match='neither JPEG nor PNG') as refusal:
        compressed_msg_to_rgb(compressed(data, format_field))
    assert refusal.value.field == 'format'
    assert repr(format_field) in str(refusal.value) and data[:4].hex(' ') in str(refusal.value)


def pil_encoded(format_name: str) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(scene_bgr()).save(out, format_name)
    return out.getvalue()


def test_a_format_field_naming_the_other_codec_is_logged_and_the_data_decoded() -> None:
    logged = []
    msg = compressed(encoded('jpeg bgr8'), 'rgb8; png compressed rgb8')
    out, _ = compressed_msg_to_rgb(msg, log=lambda *args: logged.append(args))
    assert out.shape == (48, 64, 3)
    assert logged == [
        (
            'warning',
            ('image', 'format'),
            "compressed image: format 'rgb8; png compressed rgb8' says PNG but the data is "
            'JPEG; decoded as JPEG',
        )
    ]
    with pytest.warns(UserWarning, match='says PNG but the data is JPEG'):
        compressed_msg_to_rgb(msg)  # no log of the caller's
    for format_field in ('jpeg', 'bgr8; jpeg compressed bgr8', 'JPG', ''):
        compressed_msg_to_rgb(compressed(msg.data, format_field), log=lambda *a: logged.append(a))
    assert len(logged) == 1


def corrupt_png_pixel_data() -> bytes:
    data = bytearray(encoded('png bgr8'))
    data[data.index(b'IDAT') + 20] ^= 0xFF  # inside the compressed pixels; the CRC now fails
    return bytes(data)


def jpeg_cut_in_half() -> bytes:
    data = encoded('jpeg bgr8')
    return data[: len(data) // 2]


def jpeg_with_extraneous_bytes() -> bytes:
    data = encoded('jpeg bgr8')
    return data[:-2] + b'\x00\x00' + data[-2:]  # libjpeg: "2 extraneous bytes before marker"


@pytest.mark.parametrize(
    ('make', 'field', 'words'),
    [
        (lambda: b'', 'data', 'no data'),
        (lambda: encoded('png bgr8')[:20], 'data', 'PNG header of 20 bytes is malformed'),
        (lambda: png_of_zeros(0, 10), 'data', 'PNG header of 68 bytes is malformed'),
        (lambda: jpeg_claiming(0, 10), 'data', 'JPEG header of 631 bytes is malformed'),
        (corrupt_png_pixel_data, 'data', 'PNG data is corrupt'),
        (jpeg_cut_in_half, 'data', 'JPEG data of 64x48 could not be decoded'),
    ],
)
def test_truncated_and_corrupt_frames_are_refused(make, field, words) -> None:
    with pytest.raises(ImageConversionError, match=words) as refusal:
        compressed_msg_to_rgb(compressed(make()))
    assert refusal.value.field == field


def test_decoders_write_nothing_to_the_process_stderr(capfd) -> None:
    # OpenCV's libjpeg and libpng print their warnings on file descriptor 2, past any log.
    for data in (jpeg_with_extraneous_bytes(), jpeg_cut_in_half(), corrupt_png_pixel_data()):
        with contextlib.suppress(ImageConversionError):
            compressed_msg_to_rgb(compressed(data))
    assert capfd.readouterr().err == ''


@settings(max_examples=300, deadline=None, database=None)
@given(
    kind=st.sampled_from(['jpeg bgr8', 'jpeg progressive', 'png bgr8', 'png mono16']),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.binary(max_size=8), st.integers(0, 64)), max_size=4
    ),
    cut=st.floats(0.05, 1),
)
def test_fuzz_any_compressed_frame_decodes_or_raises_the_conversion_error(kind, edits, cut):
    data = bytearray(encoded(kind))
    for where, insert, delete in edits:
        at = int(where * len(data))
        data[at : at + delete] = insert
    data = bytes(data[: max(1, int(cut * len(data)))])
    try:
        pixels, color = compressed_msg_to_rgb(compressed(data), log=lambda *args: None)
    except ImageConversionError as error:
        assert error.field in ('format', 'limit', 'data')
        return
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    assert color == 'rgb'


def test_arrays_that_do_not_fit_the_encoding_are_rejected() -> None:
    with pytest.raises(ImageConversionError, match='shape'):
        array_to_image_msg(np.zeros((2, 2, 3), np.uint8), 'mono8')
    with pytest.raises(ImageConversionError, match='dtype'):
        array_to_image_msg(np.zeros((2, 2), np.float32), '16UC1')
    with pytest.raises(ImageConversionError, match='unsupported'):
        array_to_image_msg(np.zeros((2, 2), np.uint8), 'jpeg')


@settings(max_examples=3000, deadline=None, database=None)
@given(
    encoding=st.sampled_from([*ENCODINGS, 'yuv422', '']) | st.text(max_size=10),
    height=st.integers(0, 40) | st.integers(0, 2**32 - 1),
    width=st.integers(0, 40) | st.integers(0, 2**32 - 1),
    step=st.integers(0, 200) | st.integers(0, 2**32 - 1),
    bigendian=st.booleans(),
    data=st.binary(max_size=4096),
)
def test_fuzz_any_message_converts_or_raises_the_conversion_error(
    encoding: str, height: int, width: int, step: int, bigendian: bool, data: bytes
) -> None:
    msg = Image(height=height, width=width, step=step, encoding=encoding, is_bigendian=bigendian)
    msg.data = data
    try:
        pixels, color = image_msg_to_rgb(msg)
    except ImageConversionError as error:
        assert error.field in ('encoding', 'size', 'limit', 'step', 'data')
        return
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8
    assert color in ('rgb', 'bgr') and pixels.flags.c_contiguous
