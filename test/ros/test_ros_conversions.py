"""Round trips and rejections of the image conversions (pure numpy, no node)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip('sensor_msgs.msg')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from masqclip_ros.conversions import (  # noqa: E402
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


def test_compressed_png_decodes_and_garbage_is_rejected() -> None:
    cv2 = pytest.importorskip('cv2')
    bgr = random_image('bgr8')
    ok, png = cv2.imencode('.png', bgr)
    assert ok
    msg = CompressedImage(format='png')
    msg.data = png.tobytes()
    out, color = compressed_msg_to_rgb(msg)
    assert color == 'bgr'
    np.testing.assert_array_equal(out, bgr)
    msg.data = b'not an image'
    with pytest.raises(ImageConversionError, match='could not be decoded'):
        compressed_msg_to_rgb(msg)
    msg.data = b''
    with pytest.raises(ImageConversionError, match='no data'):
        compressed_msg_to_rgb(msg)


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
