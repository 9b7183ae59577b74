"""nosd-client installs and runs without torch or ray."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

BLOCKER = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "ray", "nosd"):
                raise ImportError(f"{name} is blocked: the client must not need it")
    sys.meta_path.insert(0, Block())
    """
)


def test_client_distribution_resolves_without_torch_or_ray() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            "-",
            str(ROOT / "client"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    names = {item["metadata"]["name"].lower() for item in json.loads(out)["install"]}
    assert "nosd-client" in names and {"numpy", "msgpack", "httpx"} <= names
    assert not names & {"torch", "torchvision", "ray", "nosd"}, names


def test_client_talks_to_the_daemon_with_torch_and_ray_unimportable(daemon) -> None:
    code = BLOCKER + textwrap.dedent(
        f"""
        import numpy as np
        from nosclient import Client
        with Client({daemon.url!r}) as c:
            y = c.infer("nosd/identity", {{"x": np.arange(6, dtype=np.int16).reshape(2, 3)}})["y"]
        assert y.tolist() == [[0, 1, 2], [3, 4, 5]], y
        assert not any(m.split(".")[0] in ("torch", "ray") for m in sys.modules)
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
