"""facenet/mtcnn with its real pretrained weights finds the face in a real photo (scikit-image's astronaut)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from skimage import data

from conftest import encode
from nosclient import Client
from nosd.errors import WeightsNotFound
from nosd.weights import WheelWeights

# Eileen Collins' face in skimage.data.astronaut() (512x512), x1, y1, x2, y2: drawn by hand around the face.
FACE = (178, 58, 268, 174)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("encoding", ["uint8", "jpeg"])
def test_mtcnn_finds_the_astronauts_face(daemon, encoding: str) -> None:
    img = data.astronaut()
    if encoding == "jpeg":
        images = [encode(img, ".jpg")]
    else:
        images = img[None]
    with Client(daemon.url) as c:
        out = c.infer("facenet/mtcnn", {"images": images})
    assert out["num_detections"].tolist() == [1]
    box, score, marks = out["boxes"][0, 0], out["scores"][0, 0], out["landmarks"][0, 0]
    assert _iou(box, FACE) > 0.8, box
    assert score > 0.99
    left_eye, right_eye = marks[0], marks[1]
    assert FACE[0] < left_eye[0] < right_eye[0] < FACE[2] and FACE[1] < left_eye[1] < FACE[3]


def test_no_face_in_a_blank_image(daemon) -> None:
    with Client(daemon.url) as c:
        out = c.infer("facenet/mtcnn", {"images": np.full((1, 200, 300, 3), 128, np.uint8)})
    assert out["num_detections"].tolist() == [0]


def test_missing_weights_name_the_file_and_the_pull_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NOSD_HOME", str(tmp_path))
    from nosd.hub.mtcnn import MTCNN

    with pytest.raises(WeightsNotFound, match=r"pnet\.pt is missing: run `nosd pull facenet/mtcnn`") as e:
        MTCNN("cpu")
    assert str(tmp_path / "weights" / "facenet-pytorch-2.6.0" / "pnet.pt") in str(e.value)


def test_a_bad_checksum_is_refused_and_nothing_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NOSD_HOME", str(tmp_path))
    wrong = hashlib.sha256(b"not the weights").hexdigest()
    bad = WheelWeights("facenet-pytorch", "2.6.0", {"pnet.pt": ("facenet_pytorch/data/pnet.pt", wrong)}, "x/y")
    with pytest.raises(WeightsNotFound, match="expected " + wrong):
        bad.pull(log=lambda _: None)
    assert list((tmp_path / "weights" / "facenet-pytorch-2.6.0").iterdir()) == []
