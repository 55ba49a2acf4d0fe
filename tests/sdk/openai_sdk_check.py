"""Drives a running keygate with the real OpenAI Python SDK; exits non-zero on any failure.

Environment: KEYGATE_BASE_URL (…/v1), KEYGATE_KEY (chat+embeddings), KEYGATE_CHAT_ONLY_KEY.
"""
import os
import sys

import openai
from openai import OpenAI

base_url = os.environ["KEYGATE_BASE_URL"]
key = os.environ["KEYGATE_KEY"]
chat_only = os.environ["KEYGATE_CHAT_ONLY_KEY"]

client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)

# Plain chat completion.
r = client.chat.completions.create(
    model="deepseek-chat", messages=[{"role": "user", "content": "Say hello"}]
)
assert r.choices[0].message.content == "w0 w1 w2 ", r
assert r.usage.completion_tokens == 3, r.usage

# Streaming, with and without usage.
for include_usage in (False, True):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        **kwargs,
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "w0 w1 w2 ", text
    assert (usage is not None) == include_usage, usage

# Embeddings and models.
e = client.embeddings.create(model="mock-embedding", input=["a", "b"])
assert len(e.data) == 2
ids = [m.id for m in client.models.list()]
assert ids == ["deepseek-chat", "mock-embedding"], ids
assert client.models.retrieve("deepseek-chat").id == "deepseek-chat"

# Refusals raise the SDK's own exception types.
def raises(exc, fn, code):
    try:
        fn()
    except exc as err:
        assert err.code == code or (err.body or {}).get("code") == code, (err.code, err.body)
        return
    raise AssertionError(f"expected {exc.__name__}")

bad = OpenAI(base_url=base_url, api_key="sk-kg-" + "A" * 38, max_retries=0)
raises(openai.AuthenticationError, lambda: bad.models.list(), "invalid_api_key")
only = OpenAI(base_url=base_url, api_key=chat_only, max_retries=0)
raises(
    openai.PermissionDeniedError,
    lambda: only.embeddings.create(model="mock-embedding", input="x"),
    "permission_denied",
)
raises(
    openai.NotFoundError,
    lambda: client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}]),
    "model_not_found",
)
raises(
    openai.BadRequestError,
    lambda: client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "x"}], extra_body={"stream": "yes"}
    ),
    "invalid_request",
)
print("openai sdk: all checks passed", file=sys.stderr)
