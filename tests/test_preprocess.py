"""Frame preprocessing: the DFF resize rule and mean subtraction."""
import numpy as np
import pytest
import torch

from semidff.preprocess import PIXEL_MEANS_RGB, preprocess_frames, resized_shape, resolve_device


@pytest.mark.parametrize(
    "size, expected",
    [
        ((600, 1000), (600, 1000, 1.0)),
        ((720, 1280), (562, 1000, 0.78125)),  # long side caps the scale
        ((480, 640), (600, 800, 1.25)),  # short side sets it
        ((1000, 600), (1000, 600, 1.0)),  # portrait
    ],
)
def test_resized_shape_follows_dff_rule(size, expected):
    h, w, s = resized_shape(*size)
    assert (h, w) == expected[:2]
    assert s == pytest.approx(expected[2])


def test_constant_frame_becomes_value_minus_mean():
    frames = np.full((2, 30, 50, 3), 200, dtype=np.uint8)
    images, scale = preprocess_frames(frames, short_side=60, max_long_side=100)
    assert images.shape == (2, 3, 60, 100) and scale == pytest.approx(2.0)
    for c, mean in enumerate(PIXEL_MEANS_RGB):
        assert torch.allclose(images[:, c], torch.full_like(images[:, c], 200 - mean), atol=1e-4)


def test_channel_order_is_rgb():
    frames = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    frames[..., 0] = 255  # pure red
    images, _ = preprocess_frames(frames, short_side=8, max_long_side=8)
    assert images[0, 0].mean().item() == pytest.approx(255 - PIXEL_MEANS_RGB[0])
    assert images[0, 2].mean().item() == pytest.approx(-PIXEL_MEANS_RGB[2])


def test_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        preprocess_frames(np.zeros((1, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(np.zeros((1, 8, 8, 3), dtype=np.float32))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")
