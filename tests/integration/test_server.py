"""The model server as a real process on loopback: protocols, batching, limits, auth, drift."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flipserve.server.app import PredictResponse
from tests.integration.conftest import TOKEN
from tests.integration.server_support import LABELS, ServerProcess, emails, spam_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(server: ServerProcess, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120, **kw)


def scores(prediction: dict[str, Any]) -> list[float]:
    return [prediction["scores"][label] for label in LABELS]


def test_predict_answers_label_scores_and_model_headers(served: ServerProcess) -> None:
    r = post(served, "/predict", {"texts": ["what a lovely day", "this is awful"]})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == "tiny-1"
    assert r.headers["X-Model-Colour"] == "blue"
    body = r.json()
    assert PredictResponse.model_validate(body).model_dump() == body  # the documented shape
    assert body["version"] == "tiny-1" and body["colour"] == "blue"
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert p["label"] in LABELS
        assert sum(scores(p)) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["scores"], key=p["scores"].get)
        assert p["truncated"] is False
    single = post(served, "/predict", {"text": "what a lovely day"}).json()["predictions"]
    assert scores(single[0]) == pytest.approx(scores(body["predictions"][0]), abs=1e-5)


def test_openmp_threads_sleep_when_idle_by_default(served: ServerProcess) -> None:
    """Spinning OpenMP threads stall forward passes wherever cores are shared."""
    expected = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # an explicit policy wins
    assert f"OMP_WAIT_POLICY={expected}" in served.log.read_text(errors="replace")


def test_no_access_log_line_per_request_by_default(served: ServerProcess) -> None:
    """FLIPSERVE_ACCESS_LOG defaults to off: a request costs no log line (the hot path)."""
    for _ in range(3):
        assert post(served, "/predict", {"text": "quiet please"}).status_code == 200
    assert "POST /predict" not in served.log.read_text(errors="replace")


def test_concurrent_requests_are_batched_and_match_unbatched(
    served: ServerProcess, server_tweets: list[str]
) -> None:
    texts = [*server_tweets[2000:2024], "short", "a much longer sentence " * 6]
    alone = [post(served, "/predict", {"text": t}).json()["predictions"][0] for t in texts]
    before = _batch_counts(served)

    async def together() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
            rs = await asyncio.gather(*(client.post("/predict", json={"text": t}) for t in texts))
        return [r.json()["predictions"][0] for r in rs]

    batched = asyncio.run(together())
    for a, b in zip(alone, batched, strict=True):
        assert scores(b) == pytest.approx(scores(a), abs=1e-5)
        assert a["label"] == b["label"]
    after = _batch_counts(served)
    passes, batched_texts = after[0] - before[0], after[1] - before[1]
    assert batched_texts == len(texts)
    assert passes < len(texts), "concurrent requests should share forward passes"


def _batch_counts(server: ServerProcess) -> tuple[float, float]:
    metrics = httpx.get(server.url + "/metrics").text
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("flipserve_batch_size_count", "flipserve_batch_size_sum")):
            name, value = line.split()
            values[name] = float(value)
    return values["flipserve_batch_size_count"], values["flipserve_batch_size_sum"]


def test_v1_and_v2_protocols_and_metadata(served: ServerProcess) -> None:
    v1 = post(served, "/v1/models/flipserve:predict", {"instances": ["great", {"text": "bad"}]})
    assert v1.status_code == 200, v1.text
    assert [p["label"] in LABELS for p in v1.json()["predictions"]] == [True, True]
    assert v1.headers["X-Model-Colour"] == "blue"
    tensor = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["great", "bad"]}
    v2 = post(served, "/v2/models/flipserve/infer", {"inputs": [tensor]})
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["scores"]["shape"] == [2, 3]
    assert outputs["label"]["data"][0] == v1.json()["predictions"][0]["label"]
    meta = httpx.get(served.url + "/v2/models/flipserve").json()
    digest = (Path(served.log).parent / "blue" / "READY").read_text()
    assert meta["parameters"]["version"] == "tiny-1"
    assert meta["parameters"]["colour"] == "blue"
    assert meta["parameters"]["digest"] in digest
    assert httpx.get(served.url + "/v2/health/ready").status_code == 200
    assert httpx.get(served.url + "/v2/health/live").status_code == 200
    assert httpx.get(served.url + "/v2/models/other").status_code == 404


@pytest.mark.parametrize(
    ("path", "content", "status"),
    [
        ("/predict", b'{"text": "unclosed', 422),
        ("/predict", b'{"text": 42}', 422),
        ("/predict", b'{"texts": "not a list"}', 422),
        ("/predict", b'{"text": "   "}', 400),
        ("/predict", b'{"texts": []}', 400),
        ("/predict", b"{}", 400),
        ("/predict", b'{"text": "a", "texts": ["b"]}', 400),
        ("/predict", json.dumps({"texts": ["x"] * 17}).encode(), 413),
        ("/predict", json.dumps({"text": "x" * 30_000}).encode(), 413),
        ("/v1/models/flipserve:predict", b"{not json", 400),
        ("/v1/models/flipserve:predict", b'{"instances": [1, 2]}', 400),
        (
            "/v2/models/flipserve/infer",
            b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]}',
            400,
        ),
        ("/v2/models/flipserve/infer", b'{"inputs": "nope"}', 422),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_error(
    served: ServerProcess, path: str, content: bytes, status: int
) -> None:
    headers = {"content-type": "application/json"}
    r = httpx.post(served.url + path, content=content, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    assert isinstance(r.json(), dict)
    assert r.headers["X-Model-Version"] == "tiny-1"
    assert post(served, "/predict", {"text": "still serving"}).status_code == 200


def test_over_long_text_is_truncated_and_says_so(served: ServerProcess) -> None:
    r = post(served, "/predict", {"texts": ["word " * 500, "short"]})
    assert r.status_code == 200, r.text
    assert [p["truncated"] for p in r.json()["predictions"]] == [True, False]


def test_feedback_needs_the_bearer_token_and_stores_examples(served: ServerProcess) -> None:
    example = {"text": "loved it", "label": "positive"}
    assert post(served, "/feedback", example).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert post(served, "/feedback", example, headers=wrong).status_code == 401
    assert post(served, "/feedback", {**example, "label": "meh"}, headers=AUTH).status_code == 400
    r = post(
        served, "/feedback", [example, {"text": "hated it", "label": "negative"}], headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 2}
    store = Path(served.log).parent / "store" / "feedback"
    rows = [json.loads(line) for f in store.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {"text": "hated it", "label": "negative"}.items() <= rows[-1].items()
    assert rows[-1]["model_version"] == "tiny-1"


def test_traffic_sample_returns_recent_texts_with_the_token(served: ServerProcess) -> None:
    post(served, "/predict", {"texts": ["sample me one", "sample me two"]})
    assert httpx.get(served.url + "/traffic/sample").status_code == 401
    r = httpx.get(served.url + "/traffic/sample", params={"n": 2}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["texts"] == ["sample me one", "sample me two"]


def test_metrics_expose_requests_model_info_and_drift(served: ServerProcess) -> None:
    post(served, "/predict", {"text": "count me"})
    text = httpx.get(served.url + "/metrics").text
    assert 'flipserve_requests_total{endpoint="/predict",status="200"}' in text
    assert 'flipserve_request_latency_seconds_bucket{endpoint="/predict"' in text
    assert 'flipserve_model_info{colour="blue",digest="' in text
    assert 'version="tiny-1"' in text
    assert "flipserve_drift_p_value" in text and "flipserve_batch_size_bucket" in text


def _drift_after(server: ServerProcess, texts: list[str]) -> dict[str, Any]:
    for i in range(0, len(texts), 8):  # 8 emails stay under the test server's body limit
        r = post(server, "/predict", {"texts": texts[i : i + 8]})
        assert r.status_code == 200, r.text
    seen = httpx.get(server.url + "/drift").json()["seen_samples"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status: dict[str, Any] = httpx.get(server.url + "/drift").json()
        if status["tested_samples"] >= seen:
            return status
        time.sleep(0.2)
    raise TimeoutError("the drift monitor did not test the window")


def test_drift_flags_emails_but_not_held_out_tweets(
    served: ServerProcess, server_tweets: list[str]
) -> None:
    if not (spam_dir() / "spam-2").is_dir():
        pytest.fail("spam-assassin emails missing: run `make data`", pytrace=False)
    tweets = _drift_after(served, server_tweets[200:328])
    assert tweets["window"] == 128
    assert tweets["drift"] is False, tweets
    assert tweets["p_value"] >= tweets["threshold"]
    mail = _drift_after(served, emails(128))
    assert mail["drift"] is True, mail
    assert mail["p_value"] < 0.05


def test_post_drift_tests_a_given_sample_without_counting_it_as_live_traffic(
    served: ServerProcess, server_tweets: list[str]
) -> None:
    if not (spam_dir() / "spam-2").is_dir():
        pytest.fail("spam-assassin emails missing: run `make data`", pytrace=False)
    before = httpx.get(served.url + "/drift").json()["seen_samples"]
    tweets = post(served, "/drift", {"texts": server_tweets[400:496]})
    assert tweets.status_code == 200, tweets.text
    assert tweets.json()["n"] == 96 and tweets.json()["drift"] is False, tweets.json()
    # The first 150 characters of each email keep the body under the test server's limit.
    mail = post(served, "/drift", {"texts": [m[:150] for m in emails(96)]})
    assert mail.status_code == 200, mail.text
    assert mail.json()["drift"] is True and mail.json()["p_value"] < 0.05, mail.json()
    assert httpx.get(served.url + "/drift").json()["seen_samples"] == before
    sample = httpx.get(
        served.url + "/traffic/sample",
        params={"n": 100_000},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()["texts"]
    assert server_tweets[400] not in sample
    assert post(served, "/drift", {"texts": ["only one"]}).status_code == 400
    assert post(served, "/drift", {"texts": ["fine", ""]}).status_code == 400
