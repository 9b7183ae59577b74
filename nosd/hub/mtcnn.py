"""``facenet/mtcnn``: MTCNN face detection (Zhang et al. 2016) with the pretrained weights that ship in the
``facenet-pytorch`` wheel. The three networks and the cascade are written here (that package pins an old torch);
only its three state dicts are used, fetched by ``nosd pull facenet/mtcnn`` into ``$NOSD_HOME/weights``.

Cascade: an image pyramid through P-Net (12x12 proposals), R-Net refines 24x24 crops, O-Net scores 48x48 crops
and places five landmarks. Boxes and landmarks come back in the input image's pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nosd.hub.torchvision import BOXES, COUNT, IMAGES, SCORES, image_tensors
from nosd.spec import ModelSpec, TensorSpec
from nosd.weights import WheelWeights

WEIGHTS = WheelWeights(
    package="facenet-pytorch",
    version="2.6.0",
    files={
        "pnet.pt": ("facenet_pytorch/data/pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
        "rnet.pt": ("facenet_pytorch/data/rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
        "onet.pt": ("facenet_pytorch/data/onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
    },
    model_id="facenet/mtcnn",
)


def _nets() -> tuple[Any, Any, Any]:
    from torch import nn

    def stage(cin: int, cout: int, k: int, pool: tuple[int, int] | None) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k), nn.PReLU(cout)]
        return [*layers, nn.MaxPool2d(*pool, ceil_mode=True)] if pool else layers

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1, self.pool1 = stage(3, 10, 3, (2, 2))
            self.conv2, self.prelu2 = stage(10, 16, 3, None)
            self.conv3, self.prelu3 = stage(16, 32, 3, None)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x: Any) -> tuple[Any, Any]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_2(x), self.conv4_1(x).softmax(1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1, self.pool1 = stage(3, 28, 3, (3, 2))
            self.conv2, self.prelu2, self.pool2 = stage(28, 48, 3, (3, 2))
            self.conv3, self.prelu3 = stage(48, 64, 2, None)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x: Any) -> tuple[Any, Any]:
            x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)  # the Caffe weights' W,H order
            x = self.prelu4(self.dense4(x))
            return self.dense5_2(x), self.dense5_1(x).softmax(1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1, self.pool1 = stage(3, 32, 3, (3, 2))
            self.conv2, self.prelu2, self.pool2 = stage(32, 64, 3, (3, 2))
            self.conv3, self.prelu3, self.pool3 = stage(64, 64, 3, (2, 2))
            self.conv4, self.prelu4 = stage(64, 128, 2, None)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)
            x = self.prelu5(self.dense5(x))
            return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)

    return PNet(), RNet(), ONet()


class MTCNN:
    def __init__(
        self,
        device: str,
        min_face: int = 20,
        factor: float = 0.709,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    ):
        import torch

        self.device, self.min_face, self.factor, self.thresholds = device, min_face, factor, thresholds
        self.pnet, self.rnet, self.onet = _nets()
        for net, name in ((self.pnet, "pnet.pt"), (self.rnet, "rnet.pt"), (self.onet, "onet.pt")):
            net.load_state_dict(torch.load(WEIGHTS.path(name), map_location="cpu", weights_only=True))
            net.eval().to(device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = image_tensors(batch["images"])
        found = [self.detect(img.to(self.device).float()) for img in images]
        return {
            "boxes": [f[0] for f in found],
            "scores": [f[1] for f in found],
            "landmarks": [f[2] for f in found],
            "num_detections": np.array([len(f[1]) for f in found], dtype=np.int32),
        }

    def detect(self, img: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One CHW float RGB image -> boxes [K,4] (x1,y1,x2,y2), scores [K], landmarks [K,5,2]."""
        import torch

        h, w = img.shape[1:]
        x = ((img - 127.5) * 0.0078125)[None]
        boxes = self._proposals(x, h, w)
        if len(boxes):
            boxes = self._refine(x, boxes, self.rnet, 24, self.thresholds[1])
        points = torch.zeros((0, 5, 2))
        if len(boxes):
            boxes, points = self._output(x, boxes)
        return (
            boxes[:, :4].cpu().numpy().astype(np.float32),
            boxes[:, 4].cpu().numpy().astype(np.float32),
            points.cpu().numpy().astype(np.float32),
        )

    def _proposals(self, x: Any, h: int, w: int) -> Any:
        import torch
        import torch.nn.functional as F
        from torchvision.ops import nms

        m = 12.0 / self.min_face
        side, scale, found = min(h, w) * m, m, []
        while side >= 12:
            small = F.interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            reg, prob = self.pnet(small)
            ys, xs = torch.nonzero(prob[0, 1] >= self.thresholds[0], as_tuple=True)
            if len(ys):
                score = prob[0, 1, ys, xs]
                q1 = torch.stack([xs, ys], 1).float() * 2 + 1
                q2 = torch.stack([xs, ys], 1).float() * 2 + 12
                b = torch.cat([(q1 / scale).floor(), (q2 / scale).floor(), score[:, None], reg[0, :, ys, xs].T], 1)
                found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
            scale, side = scale * self.factor, side * self.factor
        if not found:
            return torch.zeros((0, 5), device=x.device)
        b = torch.cat(found)
        b = b[nms(b[:, :4], b[:, 4], 0.7)]
        return _square(_regress(b[:, :5], b[:, 5:9]))

    def _crops(self, x: Any, boxes: Any, size: int) -> Any:
        import torch
        import torch.nn.functional as F

        h, w = x.shape[2:]
        crops = []
        for x1, y1, x2, y2 in boxes[:, :4].round().int().tolist():
            patch = torch.zeros((1, 3, max(1, y2 - y1), max(1, x2 - x1)), device=x.device)
            sx1, sy1, sx2, sy2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
            if sx2 > sx1 and sy2 > sy1:
                patch[:, :, sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = x[:, :, sy1:sy2, sx1:sx2]
            crops.append(F.interpolate(patch, size=(size, size), mode="area"))
        return torch.cat(crops)

    def _refine(self, x: Any, boxes: Any, net: Any, size: int, threshold: float) -> Any:
        from torchvision.ops import nms

        reg, prob = net(self._crops(x, boxes, size))
        keep = prob[:, 1] > threshold
        b = boxes[keep].clone()
        b[:, 4] = prob[keep, 1]
        reg = reg[keep]
        order = nms(b[:, :4], b[:, 4], 0.7)
        return _square(_regress(b[order], reg[order]))

    def _output(self, x: Any, boxes: Any) -> tuple[Any, Any]:
        import torch

        reg, marks, prob = self.onet(self._crops(x, boxes, 48))
        keep = prob[:, 1] > self.thresholds[2]
        b, reg, marks = boxes[keep].clone(), reg[keep], marks[keep]
        b[:, 4] = prob[keep, 1]
        bw, bh = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
        points = torch.stack([bw * marks[:, :5] + b[:, :1], bh * marks[:, 5:] + b[:, 1:2]], 2)
        b = _regress(b, reg)
        order = _nms_min(b, 0.7)
        return b[order], points[order]


def _regress(b: Any, reg: Any) -> Any:
    """Apply the nets' box offsets (fractions of the box's width and height)."""
    import torch

    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return torch.stack(
        [b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h, b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h, b[:, 4]], 1
    )


def _square(b: Any) -> Any:
    """Grow each box to a square around its centre (the next net looks at square crops)."""
    import torch

    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = b[:, 0] + w / 2 - side / 2, b[:, 1] + h / 2 - side / 2
    return torch.stack([x1, y1, x1 + side, y1 + side, b[:, 4]], 1)


def _nms_min(b: Any, threshold: float) -> Any:
    """NMS where overlap is intersection over the SMALLER box (MTCNN's last stage drops nested boxes)."""
    import torch

    order = b[:, 4].argsort(descending=True)
    keep = []
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        ix1, iy1 = torch.maximum(b[i, 0], b[rest, 0]), torch.maximum(b[i, 1], b[rest, 1])
        ix2, iy2 = torch.minimum(b[i, 2], b[rest, 2]), torch.minimum(b[i, 3], b[rest, 3])
        inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
        order = rest[inter / torch.minimum(area[i], area[rest]) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


SPECS = [
    ModelSpec(
        id="facenet/mtcnn",
        task="face-detection",
        description="MTCNN face detector, pretrained weights from the facenet-pytorch wheel (nosd pull facenet/mtcnn)",
        inputs=[IMAGES],
        outputs=[
            BOXES,
            SCORES,
            TensorSpec(
                name="landmarks",
                datatypes=["FP32"],
                shape=[-1, -1, 5, 2],
                description="eyes, nose, mouth corners as (x, y) in input pixels",
            ),
            COUNT,
        ],
        entrypoint="nosd.hub.mtcnn:MTCNN",
        max_batch_size=4,
        max_wait_ms=5.0,
        weights="pypi:facenet-pytorch==2.6.0 (data/pnet.pt, rnet.pt, onet.pt)",
    )
]


def pull(spec: ModelSpec) -> None:
    """``nosd pull facenet/mtcnn``."""
    WEIGHTS.pull()
