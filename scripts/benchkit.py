"""What every benchmark here ends with: a figure on a file-only backend, and its results as JSON beside the PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on matplotlib's Agg backend (no display here; ``pip install -e .[bench]`` installs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(out: Path, name: str, result: Any, fig: Any) -> None:
    """Write OUT/NAME.json and OUT/NAME.png and say where they went."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}", file=sys.stderr)
