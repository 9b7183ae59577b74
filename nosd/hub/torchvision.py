"""torchvision ImageNet classifiers and a COCO detector, preprocessed exactly as ``weights.transforms()``."""

from __future__ import annotations

from typing import Any

import numpy as np

from nosd.hub.images import rgb_images
from nosd.spec import ModelSpec, Resources, TensorSpec
from nosd.weights import torchvision_state_dict

IMAGES = TensorSpec(
    name="images",
    datatypes=["UINT8", "BYTES"],
    shape=[-1, -1, -1, 3],
    description="UINT8 [N,H,W,3] RGB, or BYTES [N] of encoded JPEG/PNG",
)


BOXES = TensorSpec(
    name="boxes",
    datatypes=["FP32"],
    shape=[-1, -1, 4],
    description="x1,y1,x2,y2 in input pixels; rows past num_detections are zero padding",
)
SCORES = TensorSpec(name="scores", datatypes=["FP32"], shape=[-1, -1])
COUNT = TensorSpec(name="num_detections", datatypes=["INT32"], shape=[-1])


def image_tensors(images: np.ndarray | list[Any]) -> Any:
    """Wire images -> uint8 CHW torch tensors (no copy): one [N,3,H,W] tensor when sizes agree, else a list."""
    import torch

    pixels = rgb_images(images)
    if isinstance(pixels, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    return [torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1) for p in pixels]


def _weights(arch: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT


class TorchvisionModel:
    """A torchvision architecture with its weights enum's state dict and ``transforms()``."""

    backbone_arg = False  # detection/segmentation builders take weights_backbone (None: ours come whole)

    def __init__(self, device: str, arch: str):
        import torchvision

        self.device = device
        self.weights = _weights(arch)
        extra = {"weights_backbone": None} if self.backbone_arg else {}
        self.model = torchvision.models.get_model(arch, weights=None, **extra)
        self.model.load_state_dict(torchvision_state_dict(self.weights))
        self.model.eval().to(device)
        self.transforms = self.weights.transforms()


class Classifier(TorchvisionModel):
    """ImageNet classifier: ``logits`` [N,1000] and the top-1 ``label``."""

    def __init__(self, device: str, arch: str):
        super().__init__(device, arch)
        self.categories = np.array([c.encode() for c in self.weights.meta["categories"]], dtype=object)

    def preprocess(self, images: np.ndarray | list[np.ndarray]) -> Any:
        import torch

        x = image_tensors(images)
        if isinstance(x, list):
            return torch.stack([self.transforms(img) for img in x])
        return self.transforms(x)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        x = self.preprocess(batch["images"]).to(self.device)
        logits = self.model(x).float().cpu().numpy()
        return {"logits": logits, "label": self.categories[logits.argmax(1)]}


class Detector(TorchvisionModel):
    """COCO detector; boxes are x1,y1,x2,y2 in the input image's pixels."""

    backbone_arg = True

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        x = image_tensors(batch["images"])
        images = [self.transforms(img).to(self.device) for img in x]
        dets = self.model(images)
        return {
            "boxes": [d["boxes"].float().cpu().numpy() for d in dets],
            "scores": [d["scores"].float().cpu().numpy() for d in dets],
            "labels": [d["labels"].to(torch.int64).cpu().numpy() for d in dets],
            "num_detections": np.array([len(d["boxes"]) for d in dets], dtype=np.int32),
        }


class Embedder(Classifier):
    """A classifier's pooled features (its last layer removed), L2-normalised: an image embedding."""

    def __init__(self, device: str, arch: str):
        import torch

        super().__init__(device, arch)
        self.model.fc = torch.nn.Identity()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        x = self.preprocess(batch["images"]).to(self.device)
        return {"embedding": torch.nn.functional.normalize(self.model(x).float(), dim=1).cpu().numpy()}


class Segmenter(TorchvisionModel):
    """Semantic segmentation (21 Pascal VOC classes): one class id per input pixel."""

    backbone_arg = True

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        masks = []
        for img in image_tensors(batch["images"]):
            logits = self.model(self.transforms(img)[None].to(self.device))["out"]
            full = F.interpolate(logits, size=img.shape[1:], mode="bilinear", align_corners=False)
            masks.append(full.argmax(1)[0].to(torch.uint8).cpu().numpy())
        return {"mask": masks}


def _classifier(arch: str) -> ModelSpec:
    """Batch size unset on purpose: the measured profile picks it."""
    return ModelSpec(
        id=f"torchvision/{arch}",
        task="image-classification",
        description=f"torchvision {arch}, ImageNet-1k ({_weights_name(arch)})",
        inputs=[IMAGES],
        outputs=[
            TensorSpec(name="logits", datatypes=["FP32"], shape=[-1, 1000]),
            TensorSpec(name="label", datatypes=["BYTES"], shape=[-1], description="top-1 ImageNet category"),
        ],
        entrypoint="nosd.hub.torchvision:Classifier",
        init_args={"arch": arch},
        max_wait_ms=5.0,
        weights=f"torchvision:{_weights_name(arch)}",
        resources=Resources(),
    )


def _weights_name(arch: str) -> str:
    return {
        "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
        "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
        "mobilenet_v3_large": "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        "efficientnet_b0": "EfficientNet_B0_Weights.IMAGENET1K_V1",
        "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1",
        "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
    }[arch]


_DET = "fasterrcnn_mobilenet_v3_large_320_fpn"
SPECS = [_classifier(a) for a in ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0")] + [
    ModelSpec(
        id=f"torchvision/{_DET}",
        task="object-detection",
        description="torchvision Faster R-CNN MobileNetV3-Large 320 FPN, COCO",
        inputs=[IMAGES],
        outputs=[
            BOXES,
            SCORES,
            TensorSpec(name="labels", datatypes=["INT64"], shape=[-1, -1], description="COCO category ids"),
            COUNT,
        ],
        entrypoint="nosd.hub.torchvision:Detector",
        init_args={"arch": _DET},
        max_batch_size=4,
        max_wait_ms=5.0,
        weights=f"torchvision:{_weights_name(_DET)}",
        resources=Resources(),
    )
]

SPECS += [
    ModelSpec(
        id="torchvision/resnet18-embedding",
        task="embedding",
        description="resnet18's pooled ImageNet features, L2-normalised (cosine similarity = dot product)",
        inputs=[IMAGES],
        outputs=[TensorSpec(name="embedding", datatypes=["FP32"], shape=[-1, 512])],
        entrypoint="nosd.hub.torchvision:Embedder",
        init_args={"arch": "resnet18"},
        max_wait_ms=5.0,
        weights=f"torchvision:{_weights_name('resnet18')}",
    ),
    ModelSpec(
        id="torchvision/lraspp_mobilenet_v3_large",
        task="segmentation",
        description="torchvision LR-ASPP MobileNetV3-Large, 21 Pascal VOC classes (0 = background)",
        inputs=[IMAGES],
        outputs=[
            TensorSpec(
                name="mask",
                datatypes=["UINT8"],
                shape=[-1, -1, -1],
                description="class id per input pixel; padded with 0 past an image's own size",
            )
        ],
        entrypoint="nosd.hub.torchvision:Segmenter",
        init_args={"arch": "lraspp_mobilenet_v3_large"},
        max_batch_size=4,
        max_wait_ms=5.0,
        weights=f"torchvision:{_weights_name('lraspp_mobilenet_v3_large')}",
    ),
]


def pull(spec: ModelSpec) -> None:
    """``nosd pull torchvision/...``: torchvision's own download into its cache (needs the network)."""
    torchvision_state_dict(_weights(spec.init_args["arch"]))
