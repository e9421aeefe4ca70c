"""Frames as JPEG: close to the original at quality 90, identical pixels on every decode."""
import io

import numpy as np
import pytest
from PIL import Image

from semidff.cache.jpeg import decode_jpeg, encode_jpeg, jpeg_round_trip
from tests.cache.synthetic_cache import frame


def test_round_trip_is_close_and_deterministic():
    original = frame(3, (61, 97))  # odd sizes: 4:2:0 chroma must still come back at full size
    data = encode_jpeg(original, 90)
    decoded = decode_jpeg(data)
    assert decoded.shape == original.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - original).mean() < 3.0
    np.testing.assert_array_equal(decode_jpeg(data), decoded)  # the trainer sees exactly these pixels
    assert decoded.flags.writeable


def test_quality_trades_size_for_error():
    original = frame(0, (64, 96))
    errors, sizes = [], []
    for quality in (30, 90, 100):
        data = encode_jpeg(original, quality)
        errors.append(np.abs(decode_jpeg(data).astype(int) - original).mean())
        sizes.append(len(data))
    assert errors[0] > errors[1] > errors[2] and sizes[0] < sizes[1] < sizes[2]


def test_batch_round_trip():
    frames = np.stack([frame(i, (32, 48)) for i in range(3)])
    encoded, decoded = jpeg_round_trip(frames, 90)
    assert len(encoded) == 3 and decoded.shape == frames.shape
    np.testing.assert_array_equal(decoded[1], decode_jpeg(encoded[1]))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_jpeg(np.zeros((8, 8), np.uint8), 90)
    with pytest.raises(ValueError, match="quality=0"):
        encode_jpeg(frame(0, (8, 8)), 0)
    png = io.BytesIO()
    Image.fromarray(frame(0, (8, 8))).save(png, format="PNG")
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(png.getvalue())
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(encode_jpeg(frame(0, (16, 16)), 90)[:20])
