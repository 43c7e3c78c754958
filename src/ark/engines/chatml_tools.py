"""OpenAI tool calling for a ChatML model, in the embedded engine's worker (``tool_format``
"chatml-function-calling").

The prompt is the one of llama-cpp-python's ``chatml-function-calling`` handler: the system turn lists each
function as ``functions.NAME:`` and its JSON schema, and the model answers either ``message:`` and text, or
``functions.NAME:`` and a line of JSON arguments, one call after another. Grammars hold what it writes, so
whatever the model, the answer parses: its first words choose between a message and the functions (among
the functions alone for ``tool_choice: "required"``; a named function is written for it), and a call's
arguments follow its function's schema. That handler is not called: its message branch is held to the
function names (a model that answers in words gets nothing out), it leaves ``tool`` turns out of the
prompt, refuses "required" and cannot stream a call the model chose.

The answer comes as OpenAI's ``chat.completion.chunk`` objects, streamed or gathered into one
``chat.completion`` (:func:`gather`): a call's first delta carries its ``index``, ``id``, ``type`` and
``name``, the next ones pieces of its ``arguments``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

Json = dict[str, Any]

END = "<|im_end|>"
MAX_CALLS = 8  # calls in one answer: a small model could otherwise call on until the context is full
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what a grammar literal may hold without escapes
_HOW = (
    "Answer with either a message or one or more function calls.\n"
    "A message begins with 'message:' on a line of its own, the message on the lines after it.\n"
    "A function call is 'functions.<function name>:' on a line of its own, its arguments as one JSON object "
    "on the next line; more calls follow the same way."
)


def is_chatml(llama: Any) -> bool:
    """Whether the model's own chat template is ChatML, the turns this prompt is written in."""
    return "<|im_start|>" in str(llama.metadata.get("tokenizer.chat_template", ""))


def bad_name(tools: list[Json]) -> str | None:
    """The first function name that cannot be called here (grammars hold names as they are), if any."""
    for tool in tools:
        name = (tool.get("function") or {}).get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return str(name)
    return None


def render(messages: list[Json], tools: list[Json]) -> str:
    """The prompt up to the assistant's turn: the functions listed in the first system turn, the earlier calls
    as the model writes them, a tool's answer in a ``tool`` turn that names its function."""
    called: dict[str, str] = {}  # tool call id -> function name
    turns: list[tuple[str, str]] = []
    for message in messages:
        role, text = message.get("role"), _text(message.get("content"))
        if role in ("system", "developer"):
            turns.append(("system", text))
        elif role == "assistant":
            calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
            lines = [f"message:\n{text}"] if text or not calls else []
            for call in calls:
                function = call.get("function") or {}
                called[str(call.get("id"))] = str(function.get("name", ""))
                lines.append(f"functions.{function.get('name', '')}:\n{function.get('arguments') or '{}'}")
            turns.append(("assistant", "\n".join(lines)))
        elif role in ("tool", "function"):
            name = message.get("name") or called.get(str(message.get("tool_call_id")), "")
            turns.append(("tool", f"functions.{name} returned:\n{text}"))
        else:
            turns.append(("user", text))
    listing = _listing(tools)
    if turns and turns[0][0] == "system":
        turns[0] = ("system", f"{turns[0][1]}\n\n{listing}" if turns[0][1] else listing)
    else:
        turns.insert(0, ("system", listing))
    return "".join(f"<|im_start|>{role}\n{text}{END}\n" for role, text in turns) + "<|im_start|>assistant\n"


def _listing(tools: list[Json]) -> str:
    lines = ["You have access to the following functions:"]
    for tool in tools:
        function = tool["function"]
        lines.append(f"\nfunctions.{function['name']}:")
        if isinstance(function.get("description"), str) and function["description"]:
            lines.append(f"// {function['description']}")
        lines.append(json.dumps(_schema(function)))
    return "\n".join(lines) + "\n\n" + _HOW


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: the text ones (no image reaches a text model)
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _schema(function: Json) -> Json:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object", "properties": {}}


def answer(llama: Any, op: Json, kwargs: Json, used: Callable[[], int]) -> Iterator[Json]:
    """The answer to the chat ``op`` (its messages, ``tools``, ``tool_choice``, ``parallel_tool_calls``) as
    chunks, the last with the finish_reason. ``kwargs`` are the request's sampling arguments for
    ``create_completion`` (``max_tokens`` for the whole answer, ``stop`` for a message's text); ``used`` says
    how many tokens the answer has sampled so far."""
    from llama_cpp import llama_grammar

    tools = [t for t in op.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    functions = {str(t["function"]["name"]): t["function"] for t in tools}
    choice = op.get("tool_choice")
    sampling = {k: v for k, v in kwargs.items() if k not in ("max_tokens", "stop")}
    sampling.setdefault("temperature", 0.2)  # what llama-cpp-python's chat handlers default to
    limit: int | None = kwargs.get("max_tokens")
    chunk = _Chunks()
    prompt = render(op["messages"], tools)

    def left() -> int | None:
        return None if limit is None else limit - used()

    def complete(text: str, grammar: Any, **extra: Any) -> Iterator[tuple[str, str | None]]:
        budget = left()
        if budget is not None and budget <= 0:
            yield "", "length"
            return
        for part in llama.create_completion(text, grammar=grammar, max_tokens=budget, stream=True, **extra):
            choice_ = part["choices"][0]
            yield choice_["text"], choice_["finish_reason"]

    def decide(options: list[str], optional: bool = False) -> str | None:
        """Which of ``options`` the model writes next (greedily, as llama-cpp-python decides); None: it ends
        (allowed when ``optional``) or ran out of tokens."""
        alternatives = " | ".join(json.dumps(o) for o in options)
        rule = f"root ::= ({alternatives})?" if optional else f"root ::= {alternatives}"
        grammar = llama_grammar.LlamaGrammar.from_string(rule, verbose=False)
        text = "".join(t for t, _ in complete(prompt, grammar, **{**sampling, "temperature": 0.0}))
        return text if text in options else None

    calls = [f"functions.{name}:" for name in functions]
    if choice == "none" or not functions:
        first = "message:"
    elif isinstance(choice, dict):
        first = f"functions.{(choice.get('function') or {}).get('name')}:"
        if first not in calls:
            raise ValueError(f"tool_choice names {first[10:-1]!r}, which is not among the tools")
    elif choice == "required" and len(calls) == 1:
        first = calls[0]
    else:
        first = decide(calls if choice == "required" else ["message:", *calls]) or ""
    if not first:
        yield chunk({}, "length")
        return
    if first == "message:":
        prompt += "message:\n"
        finish = "stop"
        stops = [END, *(kwargs.get("stop") or ())]
        for text, reason in complete(prompt, None, stop=stops, **sampling):
            if text:
                yield chunk({"content": text})
            finish = reason or finish
        yield chunk({}, finish)
        return
    name: str | None = first[len("functions.") : -1]
    index = 0
    grammars: dict[str, Any] = {}  # each function's arguments grammar, built once (from its JSON schema)
    while name is not None:
        prompt += f"functions.{name}:\n"
        call: Json = {"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
        yield chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]})
        arguments, ended = "", None
        if name not in grammars:
            grammars[name] = _arguments_grammar(functions[name])
        for text, reason in complete(prompt, grammars[name], stop=[END], **sampling):
            if text:
                arguments += text
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
            ended = reason or ended
        if ended == "length":
            yield chunk({}, "length")
            return
        prompt += arguments + "\n"
        index += 1
        if isinstance(choice, dict) or op.get("parallel_tool_calls") is False or index >= MAX_CALLS:
            break
        following = decide(calls, optional=True)
        name = following[len("functions.") : -1] if following else None
    yield chunk({}, "tool_calls")


def _arguments_grammar(function: Json) -> Any:
    """The function's parameters as a grammar (any JSON object when llama.cpp cannot read the schema)."""
    from llama_cpp import llama_grammar

    try:
        return llama_grammar.LlamaGrammar.from_json_schema(json.dumps(_schema(function)), verbose=False)
    except Exception:  # a schema the converter does not know (it raises what it meets)
        return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)


class _Chunks:
    """``chat.completion.chunk`` objects of one answer; the first delta also says the role."""

    def __init__(self) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.started = False

    def __call__(self, delta: Json, finish: str | None = None) -> Json:
        if not self.started:
            delta = {"role": "assistant", **delta}
            self.started = True
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": "",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }


def gather(chunks: Iterator[Json]) -> Json:
    """A streamed answer as one ``chat.completion`` (without usage: the worker counts it)."""
    text: list[str] = []
    calls: dict[int, Json] = {}
    head: Json = {}
    finish = "stop"
    for chunk in chunks:
        head = chunk
        choice = chunk["choices"][0]
        delta = choice["delta"]
        text.append(delta.get("content") or "")
        for piece in delta.get("tool_calls") or ():
            call = calls.setdefault(piece["index"], {"id": "", "type": "function", "function": {"name": ""}})
            call["id"] = piece.get("id", call["id"])
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] = call["function"].get("arguments", "") + function.get("arguments", "")
        finish = choice["finish_reason"] or finish
    message: Json = {"role": "assistant", "content": "".join(text) or (None if calls else "")}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", int(time.time())),
        "model": "",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
