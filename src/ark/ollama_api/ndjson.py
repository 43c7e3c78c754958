"""Ollama's streams: one JSON object a line (``application/x-ndjson``), the last with ``done: true``.

An engine streams OpenAI's chunks; :class:`Lines` (a :class:`ark.gateway.streaming.Framing`) writes each
as Ollama's line for ``/api/chat`` (``message``) or ``/api/generate`` (``response``). Ollama sends a tool
call whole, in one message, so the pieces an OpenAI-style engine streams are gathered first. The last
line carries the counts and durations; an error after the first line is a line ``{"error": "..."}``.
"""

from __future__ import annotations

import time

import orjson

from ark.engines.base import Json
from ark.errors import ApiError
from ark.gateway.exchange import Exchange
from ark.ollama_api import shapes

NDJSON_HEADERS = [("content-type", "application/x-ndjson")]


class Lines:
    headers = NDJSON_HEADERS

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.finish: str | None = None
        self.calls: dict[int, Json] = {}  # tool calls streamed in pieces, by index
        # a text line is these pieces around its time and its text: one line a token, no dictionary each
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        self._text = b'","message":{"role":"assistant","content":' if chat else b'","response":'
        self._tail = b'},"done":false}\n' if chat else b',"done":false}\n'

    def _line(self, text: str, calls: list[Json] | None = None) -> bytes:
        if not calls:
            return self._head + shapes.stamp() + self._text + orjson.dumps(text) + self._tail
        line: Json = {"model": self.model, "created_at": shapes.created_at()}
        if self.chat:
            message: Json = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        else:
            line["response"] = text
        line["done"] = False
        return orjson.dumps(line) + b"\n"

    def chunk(self, chunk: Json) -> bytes | None:
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta")
        if delta is not None and choice.get("finish_reason") is None and not delta.get("tool_calls"):
            text = delta.get("content")  # a chat's token: most lines of a stream, the short way
            return self._line(text) if text else None
        if "text" in choice:  # a text completion (/api/generate, raw)
            text = choice.get("text") or ""
        else:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            for piece in delta.get("tool_calls") or ():
                self._gather(piece)
        reason = choice.get("finish_reason")
        if reason is not None:
            self.finish = reason
            calls = self._take_calls()
            if calls or text:
                return self._line(text, calls)
            return None
        return self._line(text) if text else None

    def _gather(self, piece: Json) -> None:
        index = piece.get("index", len(self.calls))
        function = piece.get("function") or {}
        call = self.calls.setdefault(index, {"name": "", "arguments": ""})
        call["name"] += function.get("name") or ""
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call["arguments"] += arguments
        elif arguments is not None:  # an engine that already sends an object
            call["arguments"] = orjson.dumps(arguments).decode()

    def _take_calls(self) -> list[Json]:
        if not self.calls:
            return []
        calls = [{"function": self.calls[i]} for i in sorted(self.calls)]
        self.calls = {}
        return shapes.tool_calls_out(calls)

    def end(self, ex: Exchange) -> bytes:
        head = b""
        if self.calls:  # the engine ended without a finish_reason after its tool calls
            head = self._line("", self._take_calls())
        timings = shapes.Timings.of(time.perf_counter() - ex.started, ex.ttft)
        last: Json = {"model": self.model, "created_at": shapes.created_at()}
        if self.chat:
            last["message"] = {"role": "assistant", "content": ""}
        else:
            last["response"] = ""
        last["done"] = True
        last["done_reason"] = shapes.done_reason(self.finish)
        last.update(shapes.stats(ex.prompt_tokens, ex.completion_tokens, timings))
        return head + orjson.dumps(last) + b"\n"

    def error(self, exc: ApiError) -> bytes:
        return shapes.error_body(exc) + b"\n"
