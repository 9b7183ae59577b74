"""Weights from local caches only unless a download is possible; a miss names the file and the fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nosd.errors import WeightsNotFound


def torchvision_state_dict(weights: Any) -> dict[str, Any]:
    """Load a torchvision weights enum from ``$TORCH_HOME/hub/checkpoints`` (torchvision's own file names).

    With a network, a missing file is downloaded exactly as torchvision would
    (hash checked); offline (``NOSD_OFFLINE=1`` or the download fails) it is a
    ``WeightsNotFound`` naming the path and the URL to fetch it from.
    """
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    hint = (
        f"weights file {path} is missing: download {weights.url} to that path "
        f"(or point TORCH_HOME at a cache that has it)"
    )
    if os.environ.get("NOSD_OFFLINE") == "1":
        raise WeightsNotFound(hint)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:
        raise WeightsNotFound(f"{hint}; the download failed: {e}") from None
