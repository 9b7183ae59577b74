"""Models registered from YAML/TOML files: weights pulled by URL (progress, sha256), served by the ONNX Runtime
engine, and a model whose pip requirements live only in its workers' Ray runtime_env."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, start_daemon
from nosclient import Client, NosdError
from nosd import hub
from nosd.errors import BadRequest

# A small, pure-Python package from the registry that the daemon's environment does not have.
PIP_PACKAGE, PIP_MODULE = "pyjokes==0.8.3", "pyjokes"

ENV_MODEL = '''
import numpy as np

class Jokes:
    """Imports a package only its runtime_env has."""

    def __init__(self, device):
        import pyjokes
        self.where = pyjokes.__file__.encode()

    def __call__(self, batch):
        import pyjokes
        n = len(batch["x"])
        return {"length": np.array([len(pyjokes.get_joke()) for _ in range(n)], np.int64),
                "where": np.array([self.where] * n, dtype=object)}
'''


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A real .onnx file (a linear layer with seeded weights, exported by torch) and its weights."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    path = tmp_path_factory.mktemp("served") / "linear.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter needs only `onnx`; the new one more packages
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            layer,
            (torch.zeros(1, 4),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    return path, layer.weight.detach().numpy(), layer.bias.detach().numpy()


@pytest.fixture(scope="module")
def file_server(onnx_model) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the .onnx file's folder."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(onnx_model[0].parent))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def yaml_config(tmp: Path, url: str, sha256: str, model_id: str = "custom/linear") -> Path:
    cfg = tmp / f"{model_id.replace('/', '-')}.yaml"
    cfg.write_text(
        f"""
models:
  - id: {model_id}
    task: custom
    description: a linear layer exported to ONNX
    entrypoint: nosd.engines:OnnxModel
    platform: onnxruntime
    files:
      model.onnx: {{url: "{url}", sha256: "{sha256}"}}
    init_args: {{path: model.onnx}}
    inputs: [{{name: x, datatypes: [FP32], shape: [-1, 4]}}]
    outputs: [{{name: y, datatypes: [FP32], shape: [-1, 3]}}]
    max_batch_size: 8
"""
    )
    return cfg


def pull(cfg: Path, model_id: str, home: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nosd.cli", "pull", model_id, "--model-config", str(cfg)]
    env = {**os.environ, "NOSD_HOME": str(home)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_pull_by_url_shows_progress_and_checks_sha256(tmp_path, onnx_model, file_server) -> None:
    path = onnx_model[0]
    cfg = yaml_config(tmp_path, f"{file_server}/{path.name}", hashlib.sha256(path.read_bytes()).hexdigest())
    done = pull(cfg, "custom/linear", tmp_path / "home")
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "home" / "weights" / "custom--linear" / "model.onnx"
    assert saved.read_bytes() == path.read_bytes()
    assert "100%" in done.stderr and "model.onnx" in done.stderr  # tqdm's progress bar
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("fault", ["bad sha256", "missing file"])
def test_pull_failure_is_clear_and_leaves_nothing(tmp_path, onnx_model, file_server, fault: str) -> None:
    path = onnx_model[0]
    url = f"{file_server}/{path.name}" if fault == "bad sha256" else f"{file_server}/nope.onnx"
    cfg = yaml_config(tmp_path, url, "0" * 64)
    done = pull(cfg, "custom/linear", tmp_path / "home")
    assert done.returncode != 0
    assert ("expected " + "0" * 64 if fault == "bad sha256" else "404") in done.stderr, done.stderr
    folder = tmp_path / "home" / "weights" / "custom--linear"
    assert not folder.exists() or not list(folder.iterdir())  # no file, no .part


def test_config_errors_name_the_file_and_the_problem(tmp_path) -> None:
    cases = {
        "broken.yaml": ("models: [", "not valid YAML"),
        "empty.toml": ("title = 'x'", "needs a top-level 'models' list"),
        "field.yaml": ("models:\n  - id: a/b\n    task: nonsense\n", r"models\[0\]: task: Input should be"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BadRequest, match=message) as e:
            hub.load_config(str(tmp_path / name))
        assert name in str(e.value)


@pytest.mark.slow
def test_daemon_serves_yaml_onnx_model_and_toml_model_with_own_pip_env(tmp_path, onnx_model, file_server) -> None:
    path, weight, bias = onnx_model
    home = tmp_path / "nosd_home"
    cfg = yaml_config(tmp_path, f"{file_server}/{path.name}", hashlib.sha256(path.read_bytes()).hexdigest())
    unpulled = yaml_config(tmp_path, f"{file_server}/{path.name}", "0" * 64, model_id="custom/unpulled")
    assert pull(cfg, "custom/linear", home).returncode == 0
    (tmp_path / "jokes.py").write_text(ENV_MODEL)
    toml = tmp_path / "env.toml"
    toml.write_text(
        f"""
[[models]]
id = "custom/jokes"
task = "custom"
entrypoint = "jokes.py:Jokes"  # relative to this file
pip = ["{PIP_PACKAGE}"]
inputs = [{{name = "x", datatypes = ["FP32"], shape = [-1]}}]
[[models.outputs]]
name = "length"
datatypes = ["INT64"]
shape = [-1]

[[models.outputs]]
name = "where"
datatypes = ["BYTES"]
shape = [-1]
"""
    )
    assert importlib.util.find_spec(PIP_MODULE) is None, f"{PIP_MODULE} must not be in the daemon's environment"
    d = start_daemon(
        tmp_path,
        *("--model-config", str(cfg), "--model-config", str(unpulled), "--model-config", str(toml)),
        env={"NOSD_HOME": str(home)},
    )
    try:
        with Client(d.url, timeout=300) as c:
            x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
            y = c.infer("custom/linear", {"x": x})["y"]
            np.testing.assert_allclose(y, x @ weight.T + bias, rtol=1e-5, atol=1e-6)
            assert c.metadata("custom/linear")["platform"] == "onnxruntime"

            with pytest.raises(NosdError) as e:
                c.infer("custom/unpulled", {"x": x})
            assert "custom--unpulled/model.onnx is missing" in e.value.message
            assert "nosd pull custom/unpulled" in e.value.message

            out = c.infer("custom/jokes", {"x": np.zeros(3, np.float32)})  # first call builds the env (~40 s)
            assert (out["length"] > 10).all()
            where = out["where"][0].decode()
            assert "runtime_resources" in where and not where.startswith(sys.prefix), where
        assert importlib.util.find_spec(PIP_MODULE) is None  # and the daemon's environment is unchanged
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
    # Ray cloned the daemon's virtualenv (gigabytes) for that model: the daemon deletes it when it stops.
    env_root = Path(where.split("runtime_resources")[0]) / "runtime_resources"
    assert env_root.parent.exists() and not env_root.exists(), env_root
