"""ModelSpec: everything nosd knows about a model before loading it.

A spec is data (pydantic), so it travels to Ray actors, prints as metadata, and
later issues can add measured profiles to it without touching the code paths.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from nosclient.codec import DATATYPES
from nosd.weights import RemoteFile

NUMERIC = [d for d in DATATYPES if d != "BYTES"]
Task = Literal[
    "diagnostic",
    "image-classification",
    "object-detection",
    "segmentation",
    "embedding",
    "face-detection",
    "ocr",
    "custom",
]


class TensorSpec(BaseModel):
    """One input or output. ``shape`` includes the batch dim; -1 is any size; None is any rank."""

    name: str
    datatypes: list[str]
    shape: list[int] | None
    description: str = ""
    # An output with the datatype and shape of this input (lets a client size a shared-memory region for it).
    like: str | None = None

    @field_validator("datatypes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in DATATYPES]
        if bad or not v:
            raise ValueError(f"unknown datatypes {bad}; use {list(DATATYPES)}")
        return v

    def metadata(self) -> dict[str, Any]:
        """The v2 form: one datatype (the first, the preferred one) and -1 for variable dims."""
        meta: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatypes[0],
            "shape": self.shape or [-1],
            "datatypes": self.datatypes,
        }
        if self.like:
            meta["like"] = self.like
        return meta


class Resources(BaseModel):
    """What one replica asks Ray for.

    ``num_cpus`` is a scheduling share, deliberately small: models on one node
    share its cores (the memory budget, not CPU slots, bounds how many load).
    ``threads`` is torch's real thread count; None means the node's cores
    divided among the model's replicas.
    """

    num_cpus: float = 0.25
    num_gpus: float = 0.0
    threads: int | None = None


VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
ID_RULE = "letters, digits, '.', '_', '-', in '/'-separated parts, at most 128 characters"


class ModelSpec(BaseModel):
    id: str = Field(max_length=128, pattern=f"^{VALID_ID.pattern}$")
    task: Task
    description: str = ""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # "module:Class" or "path/to/file.py:Class"; the class is built in the worker as Class(device, **init_args).
    entrypoint: str
    init_args: dict[str, Any] = Field(default_factory=dict)
    max_batch_size: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    # Requests that may wait in the model's queue; beyond it a request gets 503 + Retry-After. None: --max-queue-size.
    max_queue_size: int | None = Field(None, ge=1)
    # The best batch size is the smallest near peak throughput whose batch latency stays under this.
    latency_target_ms: float = Field(1000.0, gt=0)
    # Where weights come from (informational for users; the model's loader uses it).
    weights: str | None = None
    # Files fetched by URL (``nosd pull``) into $NOSD_HOME; an init arg equal to a key here gets the local path.
    files: dict[str, RemoteFile] = Field(default_factory=dict)
    # pip requirements for this model's workers only: they run in a Ray runtime_env, not the daemon's env.
    pip: list[str] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    platform: str = "pytorch"

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.id,
            "versions": ["1"],
            "platform": self.platform,
            "task": self.task,
            "description": self.description,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "weights": self.weights,
            "resources": self.resources.model_dump(),
        }
