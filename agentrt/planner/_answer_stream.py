"""Read the joiner's answer out of its JSON reply while the reply streams.

The joiner writes ``{"thought": ..., "action": "answer" | "replan", "answer": ...}`` under a JSON
schema, so the properties arrive in that order: the action is known before the first character
of the answer, and the answer can be shown as it is generated, without waiting for the closing
brace.
"""

from __future__ import annotations

import re

__all__ = ["AnswerFieldReader"]

_ACTION = re.compile(r'"action"\s*:\s*"(answer|replan)"')
_ANSWER_START = re.compile(r'"answer"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class AnswerFieldReader:
    """Incremental reader of the ``answer`` string of a streamed joiner reply.

    ``feed(chunk)`` returns the answer text decoded so far that was not returned before — only
    once the action is known to be ``"answer"``. A partial escape sequence at a chunk boundary
    is held back until its end arrives. Malformed JSON is not an error here: the caller parses
    the complete reply afterwards and that decides.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._action: str | None = None
        self._pos: int | None = None  # index in _buf of the next undecoded answer character
        self._closed = False

    @property
    def action(self) -> str | None:
        """``"answer"``, ``"replan"``, or ``None`` while not yet seen."""
        return self._action

    def feed(self, chunk: str) -> str:
        self._buf += chunk
        if self._action is None:
            m = _ACTION.search(self._buf)
            if m is None:
                return ""
            self._action = m.group(1)
        if self._action != "answer" or self._closed:
            return ""
        if self._pos is None:
            m = _ANSWER_START.search(self._buf)
            if m is None:
                return ""
            self._pos = m.end()
        return self._decode()

    def _decode(self) -> str:
        out: list[str] = []
        buf, i = self._buf, self._pos
        assert i is not None
        while i < len(buf):
            c = buf[i]
            if c == '"':
                self._closed = True
                i += 1
                break
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= len(buf):
                break  # the escape's second character has not arrived
            e = buf[i + 1]
            if e == "u":
                if i + 6 > len(buf):
                    break
                try:
                    code = int(buf[i + 2:i + 6], 16)
                except ValueError:
                    code = None
                if code is not None and 0xD800 <= code < 0xDC00:  # a UTF-16 surrogate pair
                    if i + 12 > len(buf):
                        break
                    try:
                        low = int(buf[i + 8:i + 12], 16) if buf[i + 6:i + 8] == "\\u" else -1
                    except ValueError:
                        low = -1
                    if 0xDC00 <= low < 0xE000:
                        out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                        i += 12
                        continue
                out.append(chr(code) if code is not None else buf[i:i + 6])
                i += 6
            else:
                out.append(_ESCAPES.get(e, e))
                i += 2
        self._pos = i
        return "".join(out)
