"""The hub: every model nosd can serve, by id. Families live one file each beside this one."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from nosd.errors import BadRequest, ModelNotFound
from nosd.hub import identity, mtcnn, torchvision
from nosd.spec import ModelSpec

_HUB: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a model; custom models call this from their module."""
    _HUB[spec.id] = spec
    return spec


def get(model_id: str) -> ModelSpec:
    spec = _HUB.get(model_id)
    if spec is None:
        raise ModelNotFound(f"unknown model '{model_id}'; GET /v2/models lists the {len(_HUB)} available ids")
    return spec


def all_specs() -> list[ModelSpec]:
    return list(_HUB.values())


def load_module(path: str) -> list[ModelSpec]:
    """Import a user's model module (file path or dotted name); it registers its specs via ``nosd.hub.register``
    or by defining a class with a ``spec`` attribute, whose entrypoint then points at that class."""
    before = set(_HUB)
    if path.endswith(".py"):
        file = Path(path).resolve()
        if not file.exists():
            raise BadRequest(f"model module {file} does not exist (--model-module takes a .py path or a module)")
        mod_spec = importlib.util.spec_from_file_location("nosd_custom_" + file.stem, file)
        assert mod_spec and mod_spec.loader
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        prefix = str(file)
    else:
        module = importlib.import_module(path)
        prefix = path
    found = [
        register(obj.spec.model_copy(update={"entrypoint": f"{prefix}:{name}"}))
        for name, obj in vars(module).items()
        if isinstance(obj, type) and isinstance(getattr(obj, "spec", None), ModelSpec)
    ]
    return found + [_HUB[i] for i in set(_HUB) - before - {s.id for s in found}]


for _spec in identity.SPECS + torchvision.SPECS + mtcnn.SPECS:
    register(_spec)
