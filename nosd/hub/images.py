"""Wire images -> pixels, in one place for every image model (run in the worker, batched, never on the loop).

``images`` arrive as UINT8 [N,H,W,3] RGB (passed through) or BYTES [N] of encoded JPEG/PNG, decoded here with
OpenCV; an undecodable item is a 400 naming its index (the worker then fails only that request).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nosd.errors import BadRequest


def rgb_images(images: np.ndarray | list[Any]) -> np.ndarray | list[np.ndarray]:
    """One [N,H,W,3] uint8 array when the wire carried one, else a list of HWC uint8 RGB arrays."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return images
    return [_decode(i, img) if isinstance(img, (bytes, bytearray)) else np.asarray(img) for i, img in enumerate(images)]


def _decode(i: int, data: bytes | bytearray) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadRequest(f"images[{i}]: {len(data)} bytes that are not a JPEG or PNG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
