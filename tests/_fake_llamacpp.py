"""A scripted llama.cpp-like server on a real loopback socket, for the decoder's non-model tests.

It serves ``/apply-template`` (ChatML with Qwen2.5's tool-call format), ``/completion`` and
``/v1/chat/completions``. Its "model" is a script: the value of each argument (by key), the tool
name of each call, whether optional arguments are written, how many calls the turn has. It
answers each kind of request the decoder makes: a choice between texts (``n_predict=1``: another
call or the end of the turn, an optional pair or the end of the object), a tool name or an optional
key (cut at the first stop string it contains, as llama.cpp does), a value (after ``"key":``), the
outline (``context="skeleton"``). Every
request is logged with its body and its start/end times, so tests can check grammars, slots and
that branches overlapped.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

SYSTEM = "<|im_start|>system\nYou may call functions.\n<tools>\n{tools}\n</tools><|im_end|>\n"


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """ChatML with Qwen2.5's ``<tool_call>`` blocks, ending with the generation prompt."""
    return SYSTEM.format(tools="\n".join(json.dumps(t) for t in tools or [])) + render_turns(messages)


def render_turns(messages: list[dict[str, Any]], *, skip_system: bool = False) -> str:
    """The turns after the system block, in ChatML, ending with the generation prompt."""
    out = ""
    for m in messages:
        if skip_system and m["role"] == "system":
            continue
        if m["role"] == "assistant" and m.get("tool_calls"):
            parts = [f'<tool_call>\n{{"name": "{c["function"]["name"]}", "arguments": '
                     f'{json.dumps(json.loads(c["function"]["arguments"]))}}}\n</tool_call>'
                     for c in m["tool_calls"]]
            out += "<|im_start|>assistant\n" + "\n".join(parts) + "<|im_end|>\n"
        else:
            out += f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


@dataclass
class Script:
    """What the fake model answers.

    Attributes:
        calls: per call of the turn, ``(tool name, {key: value})``; optional keys present in the
            dict are written by the optional step, absent ones are not.
        delay: seconds each ``/completion`` takes (to observe overlap).
        fail_key: an argument whose branch answers HTTP 500.
        truncate_key: an argument whose branch stops at the token limit mid-value.
        names_cut: the outline step stops at its token limit (a model looping on calls).
        multiline_key: an argument whose value the model writes over several lines (pretty-printed):
            a branch stopped at a newline gets only its first line.
        raw: False makes ``/apply-template`` and ``/completion`` answer 404 (a plain OpenAI server).
    """

    calls: list[tuple[str, dict[str, Any]]]
    required: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    fail_key: str | None = None
    truncate_key: str | None = None
    raw: bool = True
    names_cut: bool = False
    multiline_key: str | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeServer:
    """Serves ``script`` with ``handler`` (default: the decoder tests' llama.cpp look-alike; the
    planner's tests pass their own `JsonHandler` subclass) on a free loopback port."""

    def __init__(self, script: Any, handler: type[BaseHTTPRequestHandler] | None = None) -> None:
        self.script = script
        handler = type("H", (handler or _Handler,), {"script": script})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_CALL = re.compile(r'"name": "')


class JsonHandler(BaseHTTPRequestHandler):
    """JSON replies, quiet logs, and llama.cpp's ``GET /props`` when the script serves the native
    endpoints (``script.raw``); subclasses answer ``POST``."""

    script: Any

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/props" and self.script.raw:
            self._send(200, {"default_generation_settings": {"n_ctx": 4096}, "total_slots": 4})
        else:
            self._send(404, {"error": {"code": 404, "message": "File Not Found"}})


class _Handler(JsonHandler):
    script: Script

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        s = self.script
        if self.path == "/v1/chat/completions":
            text = "".join(f'<tool_call>\n{{"name": "{n}", "arguments": {json.dumps(a)}}}\n</tool_call>'
                           for n, a in s.calls)
            self._send(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 40}})
            return
        if not s.raw:
            self._send(404, {"error": {"code": 404, "message": "File Not Found"}})
            return
        if self.path == "/apply-template":
            self._send(200, {"prompt": render(body["messages"], body.get("tools"))})
            return
        if self.path != "/completion":
            self._send(404, {"error": {"message": "no such path"}})
            return
        started = time.perf_counter()
        time.sleep(s.delay)
        status, answer = self._complete(body)
        entry = {"body": body, "started": started, "ended": time.perf_counter(), "answer": answer}
        with s.lock:
            s.log.append(entry)
        self._send(status, answer)

    def _complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        s = self.script
        prompt: str = body["prompt"]
        grammar: str = body.get("grammar", "")
        turn = prompt[prompt.rfind("<|im_start|>assistant\n"):]
        index = len(_CALL.findall(turn)) - 1  # the call being decoded
        stop, stops = "eos", body.get("stop") or []
        words = [json.loads(x) for x in re.findall(_LIT, grammar.split("start:", 1)[-1].split("\n", 1)[0])]
        if body.get("n_predict") == 0:
            content = ""
        elif prompt.endswith('{"name": "'):  # the outline: names and first arguments, the rest elided
            framed = turn.startswith('<|im_start|>assistant\n{"calls": [')  # the JSON framing
            sep = ', {"name": "' if framed else '\n<tool_call>\n{"name": "'
            content = sep.join(_outline_call(grammar, n, a) for n, a in s.calls) + ("]}" if framed else "")
            stop = "limit" if s.names_cut else "eos"
        elif body.get("n_predict") == 1:  # a choice between texts (choice_grammar): the whole text, as one token
            if any("name" in w or "<tool_call>" in w for w in words):  # another call, or the end of the turn
                index += 1  # the call that would follow
                more = index < len(s.calls)
                pick = [w for w in words if ("name" in w or "<tool_call>" in w) == more]
                content = pick[0] if pick else ""  # no text: the end of generation
            else:  # an optional argument, or the end of the arguments object
                content = words[-1] if _next_optional(s, prompt, index) else words[0]
        elif prompt.endswith('"name":'):  # the tool name of the next call, after its opening quote
            content, stop = _emit(words[0] + s.calls[len(_CALL.findall(turn))][0] + '"', stops)
        elif m := re.search(r'"([^"]+)":$', prompt):
            key = m.group(1)
            if key == s.fail_key:
                return 500, {"error": {"code": 500, "message": "slot crashed"}}
            args = s.calls[index][1]
            value = json.dumps(args[key], ensure_ascii=False)
            if key == s.multiline_key and stops:  # written over several lines: cut at the first newline
                value = json.dumps(args[key], ensure_ascii=False, indent=2)
            written = set(re.findall(r'"([^"]+)":', prompt[prompt.rfind('"arguments":') + len('"arguments":'):]))
            more = any(k not in written for k in args)  # the model goes on with another pair, or closes
            content, stop = _emit(" " + value + ("," if more else "") + "\n", stops)
            if key == s.truncate_key:
                content, stop = " " + value[: len(value) // 2], "limit"
        else:  # which optional argument: its key after the separator
            key = _next_optional(s, prompt, index)
            lead = json.loads(re.findall(_LIT, grammar.split("start:", 1)[1])[0])
            content, stop = _emit(lead + (key or "?") + '"', stops)
        slot = body.get("id_slot")
        word = ""
        if stop == "word":
            content, word = content
        return 200, {"content": content, "tokens_predicted": max(1, len(content) // 3), "stop_type": stop,
                     "stopping_word": word, "id_slot": 0 if slot is None else slot,
                     "timings": {"prompt_n": 5, "cache_n": len(prompt) // 4}}


def _emit(text: str, stops: list[str]) -> tuple[Any, str]:
    """``text`` as llama.cpp returns it under ``stops``: cut before the first stop string it
    contains, as ``((content, stopping word), "word")``; else ``(text, "eos")``."""
    for i in range(1, len(text) + 1):
        for word in stops:
            if text[:i].endswith(word):
                return (text[: i - len(word)], word), "word"
    return text, "eos"


def _next_optional(s: Script, prompt: str, index: int) -> str | None:
    """The next optional argument of call ``index`` the script writes that the prompt's last
    arguments object does not have yet."""
    name, args = s.calls[index]
    written = set(re.findall(r'"([^"]+)":', prompt[prompt.rfind('"arguments":') + len('"arguments":'):]))
    required = s.required.get(name, [])
    return next((k for k in args if k not in required and k not in written), None)


_LIT = r'"(?:[^"\\]|\\.)*"'


def _outline_call(grammar: str, name: str, args: dict[str, Any]) -> str:
    """One call of the outline as the grammar's rule for ``name`` writes it, with the script's
    value for the argument the rule decodes (``%json``)."""
    lit = json.dumps(name)
    line = next((ln for ln in grammar.splitlines() if re.match(rf"c\d+: {re.escape(lit)} ", ln)), None)
    if line is None:  # a tool the grammar does not admit: written anyway (the decoder must refuse it)
        return name + '"'
    rest = line.split(": ", 1)[1][len(lit) + 1:]
    if "%json" not in rest:
        return name + "".join(json.loads(x) for x in re.findall(_LIT, rest))
    opening, tail = rest.split(" %json ", 1)
    key = re.search(r'"([^"]+)":\s*$', json.loads(opening)).group(1)
    closing = re.findall(_LIT, tail)[-1:]  # the text after the value, to the end of the call
    return name + json.loads(opening) + json.dumps(args[key], ensure_ascii=False) + "".join(map(json.loads, closing))
