"""``rapidocr/ppocr-v4``: PP-OCRv4 text detection, angle classification and recognition on ONNX Runtime.

The three ONNX graphs ship in the ``rapidocr-onnxruntime`` wheel; ``nosd pull rapidocr/ppocr-v4`` takes them
from it (sha256 checked) into ``$NOSD_HOME/weights``. The pipeline around them is written here with OpenCV:

1. detection (DB): a text-probability map per image; its connected regions become rotated rectangles,
   grown by ``unclip_ratio`` (DB predicts shrunk text kernels) and mapped back to input pixels;
2. each region is cut out straight (perspective warp), and turned 180° when the classifier says it is upside
   down;
3. recognition (CTC) reads every crop of every image in the batch together, sorted by width so padding is small.

Outputs are in reading order (top to bottom, then left to right).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nosd.engines import onnx_session
from nosd.hub.images import rgb_images
from nosd.hub.torchvision import COUNT, IMAGES, SCORES
from nosd.spec import ModelSpec, TensorSpec
from nosd.weights import WheelWeights

_MODELS = "rapidocr_onnxruntime/models/"
WEIGHTS = WheelWeights(
    package="rapidocr-onnxruntime",
    version="1.4.4",
    files={
        "det.onnx": (
            _MODELS + "ch_PP-OCRv4_det_infer.onnx",
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        ),
        "cls.onnx": (
            _MODELS + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        ),
        "rec.onnx": (
            _MODELS + "ch_PP-OCRv4_rec_infer.onnx",
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        ),
    },
    model_id="rapidocr/ppocr-v4",
)


def bgr_images(images: np.ndarray | list[Any]) -> list[np.ndarray]:
    """Wire images -> BGR uint8 HWC arrays (PaddleOCR's models were trained in OpenCV's channel order)."""
    import cv2

    return [cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR) for img in rgb_images(images)]


def _normalize(img: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 CHW in [-1, 1], as PaddleOCR trained."""
    return (img.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def _order(pts: np.ndarray) -> np.ndarray:
    """Four corners -> top-left, top-right, bottom-right, bottom-left."""
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    (tl, bl), (tr, br) = by_x[:2][np.argsort(by_x[:2, 1])], by_x[2:][np.argsort(by_x[2:, 1])]
    return np.array([tl, tr, br, bl], dtype=np.float32)


def _reading_order(quads: list[np.ndarray]) -> list[int]:
    """Top to bottom; boxes whose tops are within 10 px count as one line, read left to right."""
    idx = sorted(range(len(quads)), key=lambda i: (quads[i][0, 1], quads[i][0, 0]))
    for k in range(1, len(idx)):
        j = k
        while j > 0:
            a, b = quads[idx[j - 1]][0], quads[idx[j]][0]
            if abs(b[1] - a[1]) < 10 and b[0] < a[0]:
                idx[j - 1], idx[j] = idx[j], idx[j - 1]
                j -= 1
            else:
                break
    return idx


class PPOCR:
    def __init__(
        self,
        device: str,
        det_min_side: int = 736,
        det_max_side: int = 2560,
        bin_thresh: float = 0.3,
        box_thresh: float = 0.5,
        unclip_ratio: float = 1.6,
        cls_thresh: float = 0.9,
        text_score: float = 0.5,
        rec_batch: int = 16,
    ):
        self.det = onnx_session(WEIGHTS.path("det.onnx"), device)
        self.cls = onnx_session(WEIGHTS.path("cls.onnx"), device)
        self.rec = onnx_session(WEIGHTS.path("rec.onnx"), device)
        # CTC classes: blank, the dictionary stored in the graph's metadata, then space.
        chars = self.rec.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.charset = np.array(["", *chars, " "], dtype=object)
        self.det_min_side, self.det_max_side = det_min_side, det_max_side
        self.bin_thresh, self.box_thresh, self.unclip_ratio = bin_thresh, box_thresh, unclip_ratio
        self.cls_thresh, self.text_score, self.rec_batch = cls_thresh, text_score, rec_batch

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = bgr_images(batch["images"])
        quads = self._detect(images)
        crops = [self._crop(img, q) for img, qs in zip(images, quads, strict=True) for q in qs]
        texts, scores = self._recognize(self._upright(crops))
        out: dict[str, list[Any]] = {"text": [], "boxes": [], "quads": [], "scores": []}
        start = 0
        for qs in quads:
            keep = [k for k in range(len(qs)) if scores[start + k] >= self.text_score]
            q = np.array([qs[k] for k in keep], np.float32).reshape(-1, 4, 2)
            out["quads"].append(q)
            out["boxes"].append(np.concatenate([q.min(1), q.max(1)], 1) if len(q) else np.zeros((0, 4), np.float32))
            out["text"].append(np.array([texts[start + k].encode() for k in keep], dtype=object))
            out["scores"].append(np.array([scores[start + k] for k in keep], np.float32))
            start += len(qs)
        return {**out, "num_detections": np.array([len(t) for t in out["text"]], np.int32)}

    # --- 1. detection -------------------------------------------------------------------------------------
    def _det_size(self, h: int, w: int) -> tuple[int, int]:
        ratio = max(1.0, self.det_min_side / min(h, w))
        ratio = min(ratio, self.det_max_side / max(h, w))
        return max(32, round(h * ratio / 32) * 32), max(32, round(w * ratio / 32) * 32)

    def _detect(self, images: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Images that resize to the same size run as one batch through the detector."""
        import cv2

        sizes = [self._det_size(*img.shape[:2]) for img in images]
        quads: list[list[np.ndarray]] = [[] for _ in images]
        for size in set(sizes):
            members = [i for i, s in enumerate(sizes) if s == size]
            x = np.stack([_normalize(cv2.resize(images[i], size[::-1])) for i in members])
            probs = self.det.run(None, {self.det.get_inputs()[0].name: x})[0][:, 0]
            for i, prob in zip(members, probs, strict=True):
                quads[i] = self._regions(prob, *images[i].shape[:2])
        return quads

    def _regions(self, prob: np.ndarray, h: int, w: int) -> list[np.ndarray]:
        """DB post-processing: probability map -> text quadrilaterals in input pixels, in reading order."""
        import cv2

        mask = cv2.dilate((prob > self.bin_thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        scale = np.array([w / prob.shape[1], h / prob.shape[0]], np.float32)
        found = []
        for contour in contours[:1000]:
            center, (bw, bh), angle = cv2.minAreaRect(contour)
            if min(bw, bh) < 3 or self._mean_inside(prob, cv2.boxPoints((center, (bw, bh), angle))) < self.box_thresh:
                continue
            # Growing a rectangle's sides by d is the polygon offset DB uses to undo its shrunk kernels.
            d = bw * bh * self.unclip_ratio / (2 * (bw + bh))
            if min(bw, bh) + 2 * d < 5:
                continue
            pts = cv2.boxPoints((center, (bw + 2 * d, bh + 2 * d), angle)) * scale
            q = _order(np.clip(np.round(pts), 0, [w - 1, h - 1]))
            if np.linalg.norm(q[0] - q[1]) > 3 and np.linalg.norm(q[0] - q[3]) > 3:
                found.append(q)
        return [found[i] for i in _reading_order(found)]

    @staticmethod
    def _mean_inside(prob: np.ndarray, pts: np.ndarray) -> float:
        import cv2

        lo = np.clip(np.floor(pts.min(0)).astype(int), 0, [prob.shape[1] - 1, prob.shape[0] - 1])
        hi = np.clip(np.ceil(pts.max(0)).astype(int), 0, [prob.shape[1] - 1, prob.shape[0] - 1])
        mask = np.zeros((hi[1] - lo[1] + 1, hi[0] - lo[0] + 1), np.uint8)
        cv2.fillPoly(mask, [(pts - lo).astype(np.int32)], 1)
        return float(cv2.mean(prob[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1], mask)[0])

    @staticmethod
    def _crop(img: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Warp one quadrilateral to an upright rectangle; tall ones are read as rotated lines."""
        import cv2

        w = int(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[2] - q[3])))
        h = int(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2])))
        target = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
        crop = cv2.warpPerspective(
            img,
            cv2.getPerspectiveTransform(q, target),
            (w, h),
            borderMode=cv2.BORDER_REPLICATE,
            flags=cv2.INTER_CUBIC,
        )
        return np.rot90(crop) if h >= 1.5 * w else crop

    # --- 2. angle classification and 3. recognition --------------------------------------------------------
    def _resized(self, crops: list[np.ndarray], height: int, width: int) -> np.ndarray:
        """Resize each crop to ``height`` keeping its aspect, pad to ``width`` (0 after normalising)."""
        import cv2

        x = np.zeros((len(crops), 3, height, width), np.float32)
        for i, c in enumerate(crops):
            w = min(width, math.ceil(height * c.shape[1] / c.shape[0]))
            x[i, :, :, :w] = _normalize(cv2.resize(c, (w, height)))
        return x

    def _chunks(self, crops: list[np.ndarray]) -> list[list[int]]:
        order = np.argsort([c.shape[1] / c.shape[0] for c in crops], kind="stable")
        return [list(order[i : i + self.rec_batch]) for i in range(0, len(order), self.rec_batch)]

    def _upright(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        import cv2

        for chunk in self._chunks(crops):
            probs = self.cls.run(None, {"x": self._resized([crops[i] for i in chunk], 48, 192)})[0]
            for i, p in zip(chunk, probs, strict=True):
                if p.argmax() == 1 and p[1] > self.cls_thresh:
                    crops[i] = cv2.rotate(crops[i], cv2.ROTATE_180)
        return crops

    def _recognize(self, crops: list[np.ndarray]) -> tuple[list[str], list[float]]:
        texts, scores = [""] * len(crops), [0.0] * len(crops)
        for chunk in self._chunks(crops):
            ratio = max(320 / 48, *(crops[i].shape[1] / crops[i].shape[0] for i in chunk))
            probs = self.rec.run(None, {"x": self._resized([crops[i] for i in chunk], 48, int(48 * ratio))})[0]
            for i, p in zip(chunk, probs, strict=True):
                ids, conf = p.argmax(1), p.max(1)
                keep = (ids != 0) & np.concatenate([[True], ids[1:] != ids[:-1]])  # CTC: no blanks, no repeats
                texts[i] = "".join(self.charset[ids[keep]])
                scores[i] = float(conf[keep].mean()) if keep.any() else 0.0
        return texts, scores


SPECS = [
    ModelSpec(
        id="rapidocr/ppocr-v4",
        task="ocr",
        description="PP-OCRv4 (Chinese + English) detection, angle classification and recognition on ONNX "
        "Runtime; graphs from the rapidocr-onnxruntime wheel (nosd pull rapidocr/ppocr-v4)",
        inputs=[IMAGES],
        outputs=[
            TensorSpec(
                name="text",
                datatypes=["BYTES"],
                shape=[-1, -1],
                description="UTF-8 text of each line, in reading order; empty past num_detections",
            ),
            TensorSpec(
                name="boxes",
                datatypes=["FP32"],
                shape=[-1, -1, 4],
                description="x1,y1,x2,y2 around each line in input pixels",
            ),
            TensorSpec(
                name="quads",
                datatypes=["FP32"],
                shape=[-1, -1, 4, 2],
                description="each line's rotated rectangle: top-left, top-right, bottom-right, bottom-left (x, y)",
            ),
            SCORES.model_copy(update={"description": "recognition confidence (mean of the characters')"}),
            COUNT,
        ],
        entrypoint="nosd.hub.ppocr:PPOCR",
        max_batch_size=4,
        max_wait_ms=5.0,
        weights="pypi:rapidocr-onnxruntime==1.4.4 (models/ch_PP-OCRv4_det, ch_ppocr_mobile_v2.0_cls, ch_PP-OCRv4_rec)",
        platform="onnxruntime",
    )
]


def pull(spec: ModelSpec) -> None:
    """``nosd pull rapidocr/ppocr-v4``."""
    WEIGHTS.pull()
