"""The cache's frames: JPEG bytes, encoded and decoded with Pillow (libjpeg-turbo).

The teacher's targets are computed on the *decoded* JPEG (encode → decode → normalise → teacher),
so a trainer that reads the cache, and the on-the-fly mode that runs the teacher on the same
decoded frames, both see exactly the pixels the targets came from. Decoding the same bytes with
the same library gives the same pixels, which is why every reader goes through :func:`decode_jpeg`.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

JPEG_SUBSAMPLING = "4:2:0"  # Pillow's default chroma subsampling, recorded in the cache metadata


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB → baseline JPEG bytes at ``quality`` (1-100), 4:2:0 chroma."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"encode_jpeg: a frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"encode_jpeg: quality={quality} must be in 1..100")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), "RGB").save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes → (H, W, 3) uint8 RGB (a fresh, writable array)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"not a JPEG image ({image.format})")
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise ValueError(f"decode_jpeg: {len(data)} bytes are not a decodable JPEG frame ({exc})") from None


def jpeg_round_trip(frames: np.ndarray | Sequence[np.ndarray], quality: int) -> tuple[list[bytes], np.ndarray]:
    """(N, H, W, 3) uint8 frames → (their JPEG bytes, the decoded (N, H, W, 3) uint8 frames)."""
    encoded = [encode_jpeg(frame, quality) for frame in frames]
    decoded = np.stack([decode_jpeg(data) for data in encoded]) if encoded else np.zeros((0, 0, 0, 3), np.uint8)
    return encoded, decoded
