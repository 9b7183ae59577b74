"""The hub: every model nosd can serve, by id. Families live one file each beside this one."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from nosd.errors import BadRequest, ModelNotFound
from nosd.hub import identity, mtcnn, ppocr, torchvision
from nosd.spec import ID_RULE, VALID_ID, ModelSpec

_HUB: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a model; custom models call this from their module."""
    _HUB[spec.id] = spec
    return spec


def get(model_id: str) -> ModelSpec:
    spec = _HUB.get(model_id)
    if spec is None:
        if not VALID_ID.fullmatch(model_id):
            raise BadRequest(f"model name {model_id[:80]!r} is not valid: {ID_RULE}")
        raise ModelNotFound(f"unknown model '{model_id}'; GET /v2/models lists the {len(_HUB)} available ids")
    return spec


def known(model_id: str) -> bool:
    return model_id in _HUB


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


def load_config(path: str) -> list[ModelSpec]:
    """Register the models of a YAML or TOML file: a ``models`` list of ModelSpec fields.

    A relative ``file.py:Class`` entrypoint is relative to the config file, so the
    file and its models can move together.
    """
    import tomllib

    import yaml
    from pydantic import ValidationError

    file = Path(path).resolve()
    if not file.exists():
        raise BadRequest(f"model config {file} does not exist")
    try:
        text = file.read_text()
        data = tomllib.loads(text) if file.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise BadRequest(f"model config {file} is not valid {file.suffix[1:].upper()}: {e}") from None
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise BadRequest(f"model config {file} needs a top-level 'models' list (see docs/models.md)")
    specs = []
    for i, entry in enumerate(entries):
        try:
            spec = ModelSpec(**entry)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise BadRequest(f"model config {file}, models[{i}]: {problems}") from None
        except TypeError:
            raise BadRequest(f"model config {file}, models[{i}] is not a table of ModelSpec fields") from None
        target, _, attr = spec.entrypoint.rpartition(":")
        if target.endswith(".py") and not Path(target).is_absolute():
            spec = spec.model_copy(update={"entrypoint": f"{file.parent / target}:{attr}"})
        specs.append(register(spec))
    return specs


for _spec in identity.SPECS + torchvision.SPECS + mtcnn.SPECS + ppocr.SPECS:
    register(_spec)
