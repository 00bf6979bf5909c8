"""OpenAI's Images API on `dnd serve`, driven by the official `openai` client against a server on 127.0.0.1:
the bytes of `dnd generate`, streamed partial images, and the client's typed exceptions."""
import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from idle import scheduler_idle
from live_server import ThreadedServer, metrics_once_dropped
from PIL import Image

from dnd_sdk import Generator
from dnd_sdk.partial_images import GREY, partial_row_counts

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=16) as gen:
        with ThreadedServer(gen) as base:
            yield gen, base


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[1]}/v1", api_key="not-needed", max_retries=0, timeout=60)


def _decoded(b64: str) -> bytes:
    return base64.b64decode(b64)


def test_generate_gives_the_bytes_of_dnd_generate_and_of_v1_images(served, client, tmp_path):
    gen, base = served
    model = client.models.list().data[0]
    assert model.id == gen.path.name and model.owned_by == "dnd-sdk"
    assert model.labels == ["cat", "dog", "bird", "fish"] and model.sampler_defaults["cfg_scale"] == 2.0
    result = client.images.generate(model=model.id, prompt="dog", n=2, size="auto",
                                    extra_body={"seed": 3, "top_k": 5})
    pngs = [_decoded(d.b64_json) for d in result.data]
    dnd = Path(sys.executable).parent / "dnd"
    subprocess.run([str(dnd), "generate", str(gen.path), "--labels", "dog", "--num", "2", "--seed", "3", "--top-k", "5",
                    "--out", str(tmp_path / "out"), "--threads", "1", "--backend", "onnxruntime-cpu", "--quiet"],
                   check=True, capture_output=True, timeout=120)
    assert pngs == [(tmp_path / "out" / f"00000{i}.png").read_bytes() for i in range(2)]
    v1 = httpx.post(f"{base}/v1/images", json={"labels": ["dog"], "num": 2, "seed": 3, "top_k": 5}).json()["images"]
    assert pngs == [_decoded(im["png"]) for im in v1]
    first = result.data[0].model_dump()
    assert (first["label_name"], first["seed"], first["index"], first["top_k"]) == ("dog", 3, 0, 5)
    assert result.size == f"{gen.manifest.image['width']}x{gen.manifest.image['height']}"
    assert result.output_format == "png" and result.created > 0
    by_id = client.images.generate(prompt="1", extra_body={"seed": 3, "top_k": 5})  # a class id is a prompt too
    assert _decoded(by_id.data[0].b64_json) == pngs[0]


def test_a_stream_gives_partial_images_then_the_images_of_the_same_request_unstreamed(served, client):
    gen, _ = served
    h, w, _ = gen.latent_shape
    events = list(client.images.generate(prompt="cat", n=2, stream=True, partial_images=1,
                                         extra_body={"seed": 1, "cfg_scale": 1.0}))
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    completed = [e for e in events if e.type == "image_generation.completed"]
    rows = partial_row_counts(h, 1)
    assert len(partial) == 2 * len(rows) >= 2 and len(completed) == 2
    assert events[-2:] == completed and [e.model_dump()["index"] for e in completed] == [0, 1]
    assert sorted(e.model_dump()["index"] for e in partial) == [0, 1] and {e.partial_image_index for e in partial} == {0}
    plain = client.images.generate(prompt="cat", n=2, extra_body={"seed": 1, "cfg_scale": 1.0})
    assert [_decoded(e.b64_json) for e in completed] == [_decoded(d.b64_json) for d in plain.data]
    image = np.asarray(Image.open(io.BytesIO(_decoded(partial[0].b64_json))))
    top = image.shape[0] * rows[0] // h  # rows not yet sampled are grey; the finished ones are the image's
    assert image.shape == np.asarray(Image.open(io.BytesIO(_decoded(completed[0].b64_json)))).shape
    assert (image[top:] == GREY).all() and not (image[:top] == GREY).all()
    without = list(client.images.generate(prompt="cat", n=2, stream=True, extra_body={"seed": 1, "cfg_scale": 1.0}))
    assert [e.type for e in without] == ["image_generation.completed"] * 2


@pytest.mark.parametrize("kwargs, param, fragment", [
    ({"prompt": "zebra"}, "prompt", "unknown label 'zebra'; this model knows 4 labels (cat, dog, bird, fish)"),
    ({"prompt": "cat", "size": "1024x1024"}, "size", "size must be 'auto' or this model's size"),
    ({"prompt": "cat", "response_format": "url"}, "response_format", "response_format 'url' is not served"),
    ({"prompt": "cat", "style": "vivid"}, "style", "style cannot be honoured"),
    ({"prompt": "cat", "output_format": "jpeg"}, "output_format", "output_format must be 'png'"),
    ({"prompt": "cat", "quality": "high"}, "quality", "quality must be 'auto'"),
    ({"prompt": "cat", "n": 0}, "n", "n must be an integer in [1, 10000000], got 0"),
    ({"prompt": "cat", "partial_images": 2}, "partial_images", "ask for stream: true"),
    ({"prompt": "cat", "extra_body": {"temperature": -1}}, "temperature", "temperature must be >= 0"),
    ({"prompt": "cat", "extra_body": {"colour": "red"}}, "colour", "unknown key(s) ['colour']"),
])
def test_bad_requests_raise_bad_request_error_naming_the_key(client, kwargs, param, fragment):
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(**kwargs)
    error = raised.value.body
    assert raised.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and fragment in error["message"], error


def test_an_unknown_model_is_not_found_and_user_and_moderation_are_ignored(client):
    unknown = {"message": "The model 'gpt-image-1' does not exist", "type": "invalid_request_error",
               "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.generate(model="gpt-image-1", prompt="cat")
    assert raised.value.body == unknown
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-image-1")
    assert raised.value.body == unknown
    assert client.models.retrieve(client.models.list().data[0].id).labels[0] == "cat"
    assert len(client.images.generate(prompt="cat", user="someone", moderation="low", quality="auto").data) == 1


def test_a_full_queue_raises_rate_limit_error_and_a_stream_past_its_timeout_ends_in_an_error(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=2, max_queue=1) as gen:
        with ThreadedServer(gen, timeout=30) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=60)
            long = threading.Thread(target=lambda: client.images.generate(prompt="cat", n=40,
                                                                          extra_body={"cfg_scale": 1}))
            long.start()
            for _ in range(400):  # until the long request waits for rows
                if gen.scheduler.queue_depth == 1:
                    break
                time.sleep(0.005)
            with pytest.raises(openai.RateLimitError) as raised:
                client.images.generate(prompt="dog")
            assert raised.value.body["type"] == "rate_limit_error" and "max_queue 1" in raised.value.body["message"]
            long.join(60)
        with ThreadedServer(gen, timeout=1e-3) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=60)
            with pytest.raises(openai.APIError, match="did not finish within 0.001 s"):
                list(client.images.generate(prompt="cat", n=40, stream=True, extra_body={"cfg_scale": 1}))
            assert scheduler_idle(gen)  # the scheduler drops the request at its next step


def test_a_backend_failure_is_a_server_error_in_openai_shape_and_the_server_goes_on(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen, ThreadedServer(gen) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=60)
        stage1 = gen.backend.sessions["stage1"]
        gen.backend.sessions["stage1"] = gen.backend.sessions["decoder"]  # ONNX Runtime refuses the next stage-1 call
        try:
            with pytest.raises(openai.InternalServerError) as raised:
                client.images.generate(prompt="cat")
            assert raised.value.body["type"] == "server_error" and "IOBinding" in raised.value.body["message"]
            with pytest.raises(openai.APIError, match="the request failed: .*IOBinding"):
                list(client.images.generate(prompt="cat", stream=True))
            r = httpx.post(f"{base}/v1/images", json={"labels": ["cat"]}, timeout=60)
            assert r.status_code == 500 and "IOBinding" in r.json()["error"]
        finally:
            gen.backend.sessions["stage1"] = stage1
        assert len(client.images.generate(prompt="cat").data) == 1


def test_a_streaming_client_that_disconnects_frees_its_rows(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=1) as gen:
        with ThreadedServer(gen) as base:
            body = {"prompt": "cat", "n": 100_000, "stream": True, "partial_images": 1, "cfg_scale": 1}
            with httpx.stream("POST", f"{base}/v1/images/generations", json=body, timeout=60) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                assert next(lines) == "event: image_generation.partial_image"
                assert gen.scheduler.queue_depth >= 1  # its images still wait for the row (and a partial image perhaps for the decoder)
            metrics = metrics_once_dropped(base)  # the client is gone: its request is dropped at the scheduler's next step
            assert gen.scheduler.images_in_flight == gen.scheduler.queue_depth == 0
            assert 'dnd_request_seconds_count{status="499"} 1.0' in metrics
            r = httpx.post(f"{base}/v1/images/generations", json={"prompt": "cat", "cfg_scale": 1}, timeout=30)
            assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_the_limits_of_the_server_answer_in_openai_shape(served):
    _, base = served
    r = httpx.post(f"{base}/v1/images/generations", content=b" " * (16 * 2**20 + 1))
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{base}/v1/images/generations", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the body must be a JSON object, e.g. ")
    r = httpx.post(f"{base}/v1/images/generations", content=b'{"prompt": "cat", "seed": 1' + b"0" * 50 + b"}")
    assert r.status_code == 400 and "an integer of 51 digits" in r.json()["error"]["message"]
