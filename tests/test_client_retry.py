"""The client's retry rule, against scripted HTTP answers (httpx's MockTransport): what is retried, how often."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from nosclient import Client, NosdError
from nosclient.codec import MSGPACK, dumps, encode_tensor

OK = dumps({"outputs": [encode_tensor("y", np.ones((1, 2), np.float32), True)]}, MSGPACK)


def scripted(answers: list) -> tuple[Client, list]:
    """A client whose HTTP answers come from ``answers`` in order (a status, or an exception to raise)."""
    seen: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        if answer == 200:
            return httpx.Response(200, content=OK, headers={"Content-Type": MSGPACK})
        body = dumps({"error": f"status {answer}"}, MSGPACK)
        return httpx.Response(answer, content=body, headers={"Content-Type": MSGPACK, "Retry-After": "0"})

    c = Client("http://127.0.0.1:1", retries=3, backoff_s=0.001)
    c._http = httpx.Client(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(handler))
    return c, seen


def test_503s_and_lost_connections_are_retried_until_an_answer() -> None:
    c, seen = scripted([503, httpx.ConnectError("refused"), 503, 200])
    assert c.infer("m", {"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[1, 1]]
    assert len(seen) == 4


def test_retries_stop_after_the_limit_with_the_last_error() -> None:
    c, seen = scripted([503])
    with pytest.raises(NosdError) as e:
        c.infer("m", {"x": np.ones((1, 2), np.float32)})
    assert e.value.status == 503 and len(seen) == 4  # the call and 3 retries


@pytest.mark.parametrize("status", [400, 404, 500, 504])
def test_answers_about_the_request_itself_are_not_retried(status: int) -> None:
    c, seen = scripted([status, 200])
    with pytest.raises(NosdError) as e:
        c.infer("m", {"x": np.ones((1, 2), np.float32)})
    assert e.value.status == status and len(seen) == 1


def test_no_retries_unless_asked() -> None:
    c, seen = scripted([503, 200])
    c.retries = 0
    with pytest.raises(NosdError):
        c.infer("m", {"x": np.ones((1, 2), np.float32)})
    assert len(seen) == 1
