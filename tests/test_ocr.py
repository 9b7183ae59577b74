"""rapidocr/ppocr-v4 with its real PP-OCRv4 graphs on ONNX Runtime reads text drawn into images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from nosclient import Client, NosdError
from nosd import hub
from nosd.errors import BadRequest
from nosd.worker import Work, Worker

LINES = ["Serving vision models", "Hello World 42"]


def drawn(lines: list[str], size: tuple[int, int] = (640, 220), color: str = "black") -> np.ndarray:
    """White RGB image with each line drawn in Pillow's own TrueType font (no system fonts needed)."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)
    for i, line in enumerate(lines):
        draw.text((30, 30 + 90 * i), line, fill=color, font=font)
    return np.asarray(img)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def texts(out: dict, i: int = 0) -> list[str]:
    return [t.decode() for t in out["text"][i, : out["num_detections"][i]]]


def test_ocr_reads_the_text_drawn(daemon) -> None:
    img = drawn(LINES)
    with Client(daemon.url) as c:
        out = c.infer("rapidocr/ppocr-v4", {"images": img[None]})
    assert texts(out) == LINES
    assert (out["scores"][0, :2] > 0.9).all()
    # Each box lies around its line: the first line's text starts at x=30, y=30 and is ~40 px tall.
    x1, y1, x2, y2 = out["boxes"][0, 0]
    assert 15 < x1 < 40 and 20 < y1 < 50 and 300 < x2 < 480 and 60 < y2 < 90, out["boxes"][0, 0]
    assert out["quads"].shape == (1, 2, 4, 2)


def test_ocr_batch_of_encoded_images_of_different_sizes(daemon) -> None:
    """PNG bytes, different sizes, an upside-down image (the angle classifier turns its lines) and a blank one."""
    upside_down = np.ascontiguousarray(drawn(["nosd reads text"], (480, 120))[::-1, ::-1])
    blank = np.full((100, 300, 3), 255, np.uint8)
    images = np.array([png(drawn(LINES)), png(upside_down), png(blank)], dtype=object)
    with Client(daemon.url) as c:
        out = c.infer("rapidocr/ppocr-v4", {"images": images})
    assert out["num_detections"].tolist() == [2, 1, 0]
    assert texts(out, 0) == LINES
    assert texts(out, 1) == ["nosd reads text"]
    assert out["text"][2].tolist() == [b""] * out["text"].shape[1]  # BYTES padding is empty, not 0


def test_ocr_bad_image_bytes_is_a_400_and_the_daemon_keeps_serving(daemon) -> None:
    with Client(daemon.url) as c:
        with pytest.raises(NosdError) as e:
            c.infer("rapidocr/ppocr-v4", {"images": np.array([b"not an image at all"], dtype=object)})
        assert e.value.status == 400 and "images[0]" in e.value.message and "JPEG or PNG" in e.value.message
        assert texts(c.infer("rapidocr/ppocr-v4", {"images": drawn(LINES[:1])[None]})) == LINES[:1]


def test_one_bad_image_in_a_batch_fails_only_its_own_request(nosd_home, monkeypatch) -> None:
    """The worker runs the batch; when the model rejects an input it finds the request by running each alone."""
    monkeypatch.setenv("NOSD_HOME", str(nosd_home))
    worker = Worker(hub.get("rapidocr/ppocr-v4"), "cpu", 2)
    worker.ready()
    good = Work(inputs={"images": drawn(LINES)[None]})
    bad = Work(inputs={"images": np.array([b"\x89PNG but broken"], dtype=object)})
    results, _ = worker.infer([good, bad, good])
    assert isinstance(results[1], BadRequest)
    for r in (results[0], results[2]):
        assert [t.decode() for t in r["text"][0]] == LINES
