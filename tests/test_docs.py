"""The protocol document's examples run as written against a real daemon."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT


def _block(lang: str) -> str:
    text = (ROOT / "docs" / "protocol.md").read_text()
    return re.search(rf"```{lang}\n(.*?)```", text, re.S).group(1)


def test_python_msgpack_example_runs(daemon) -> None:
    code = _block("python").replace("http://127.0.0.1:8000", daemon.url)
    scope: dict = {}
    exec(compile(code, "protocol.md", "exec"), scope)
    assert scope["y"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_curl_json_example_runs(daemon) -> None:
    cmd = _block("bash").replace("http://127.0.0.1:8000", daemon.url).replace("\\\n", " ")
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30, check=True).stdout
    assert '"data":[1,2,3,4]' in out


def test_readme_quick_start_finds_the_face(daemon) -> None:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("http://127.0.0.1:8000", daemon.url)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"]["num_detections"].tolist() == [1]


def test_readme_quick_start_reads_the_text(daemon) -> None:
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1].replace("http://127.0.0.1:8000", daemon.url)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"]["text"][0].tolist() == [b"Serving vision models"]


def test_models_doc_is_generated_from_the_current_specs() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_models_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "models.md").read_text() == gen.render(), "run scripts/gen_models_doc.py"
