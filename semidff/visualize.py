"""Draw detections on frames: boxes, class names and scores, and whether the frame is a key frame.

    annotated = draw_detections(frame, detections, class_names, banner="key  ΔT=10  12.3 fps", is_key=True)

Key frames (the detector ran) get a green banner and border; propagated frames (feature flow, or
copied detections) an orange one, so a viewer sees where the cheap frames are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from semidff.models.rfcn import Detections

KEY_COLOR = (40, 200, 60)
PROPAGATED_COLOR = (255, 150, 0)
_BOX_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def class_color(label: int) -> tuple[int, int, int]:
    """A stable color per class label (1-based)."""
    return _BOX_COLORS[(label - 1) % len(_BOX_COLORS)]


def draw_detections(
    frame: np.ndarray,
    detections: Detections,
    class_names: Sequence[str],
    banner: str = "",
    is_key: bool = True,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """A copy of ``frame`` ((H, W, 3) uint8 RGB) with the detections above ``score_threshold``.

    detections: boxes (D, 4) in this frame's pixels (inclusive corners), scores (D,), labels (D,)
    in 1..len(class_names). banner: text for the top-left corner (e.g. key/propagated and fps).
    """
    image = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(image)
    boxes = detections.boxes.detach().cpu().float().numpy()
    scores = detections.scores.detach().cpu().float().numpy()
    labels = detections.labels.detach().cpu().numpy()
    for box, score, label in zip(boxes, scores, labels):
        if score < score_threshold:
            continue
        color = class_color(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        name = class_names[int(label) - 1] if 1 <= int(label) <= len(class_names) else f"class {int(label)}"
        caption = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        text_top = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, text_top, x1 + (right - left) + 4, text_top + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, text_top), caption, fill=(255, 255, 255))
    marker = KEY_COLOR if is_key else PROPAGATED_COLOR
    width, height = image.size
    draw.rectangle([0, 0, width - 1, height - 1], outline=marker, width=3)
    if banner:
        left, top, right, bottom = draw.textbbox((4, 4), banner)
        draw.rectangle([2, 2, right + 4, bottom + 3], fill=marker)
        draw.text((4, 4), banner, fill=(0, 0, 0))
    return np.asarray(image)
