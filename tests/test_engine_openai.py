"""The openai engine against a real OpenAI-compatible upstream: another ARK serving llama.cpp.

Client -> ARK "front" (openai engine) -> ARK "back" (embedded engine on a tiny GGUF).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, start_ark, stop_ark

BACK = """
master_key = "sk-back-key-0123456789abcdef"
[gateway]
listen = "127.0.0.1:{PORT}"
[engines.embedded]
kind = "embedded"
n_threads = 1
n_ctx = 2048
bundled_model = false
"""

FRONT = """
master_key = "{KEY}"
[gateway]
listen = "127.0.0.1:{PORT}"
[engines.upstream]
kind = "openai"
url = "{BACK}"
api_key = "{BACK_KEY}"
[engines.wrongkey]
kind = "openai"
url = "{BACK}"
api_key = "sk-not-the-back-key-000000"
[models."tiny-via-wrong-key"]
engine = "wrongkey"
[aliases]
"gpt-4o-mini" = "tiny"
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[tuple[ArkProcess, ArkProcess]]:
    back_dir = tmp_path_factory.mktemp("back")
    (back_dir / "data" / "models").mkdir(parents=True)
    shutil.copy(tiny_gguf, back_dir / "data" / "models" / "tiny.gguf")
    back = start_ark(BACK, back_dir, env={"ARK_DATA_DIR": str(back_dir / "data")})
    try:
        text = FRONT.replace("{KEY}", MASTER_KEY).replace("{BACK}", back.api)
        front = start_ark(text.replace("{BACK_KEY}", "sk-back-key-0123456789abcdef"), tmp_path_factory.mktemp("front"))
        yield front, back
        stop_ark(front)
    finally:
        stop_ark(back)


@pytest.fixture
def client(chain: tuple[ArkProcess, ArkProcess]) -> openai.OpenAI:
    return openai.OpenAI(base_url=chain[0].api, api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_upstream_models_are_listed(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"tiny", "gpt-4o-mini", "tiny-via-wrong-key"} <= ids


def test_chat_through_upstream_keeps_the_alias(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
    )
    assert reply.model == "gpt-4o-mini"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    assert all(c.usage is None for c in chunks)  # the front asked for usage; the client did not


def test_stream_usage_when_asked(client: openai.OpenAI, chain: tuple[ArkProcess, ArkProcess]) -> None:
    front, _ = chain
    before = front.metric("ark_tokens_total", model="tiny", kind="completion")
    chunks = list(
        client.completions.create(
            model="tiny", prompt="hello", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert front.metric("ark_tokens_total", model="tiny", kind="completion") == before + 5


def test_embeddings_through_upstream(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="tiny", input=["a", "b", "c"])
    assert len(result.data) == 3 and len(result.data[0].embedding) == 64


def test_upstream_rejecting_arks_key_is_a_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="tiny-via-wrong-key", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert "refused ARK's credentials" in caught.value.message


def test_upstream_400_is_passed_on_as_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], extra_body={"logit_bias": {"999999": 5}}
        )
    assert "rejected the request" in caught.value.message
