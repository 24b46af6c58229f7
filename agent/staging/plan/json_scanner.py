"""Finds where each device of a JSON plan starts, so a problem names its line.

No library does this: the stdlib ``json`` module reports a position only for an error, never for the
values of a successful parse, and none of the runtime dependencies parses JSON with positions.  So the
top level is walked here by hand and each device decoded by ``json.JSONDecoder.raw_decode`` at its offset.
"""

from __future__ import annotations

import bisect
import json
from typing import Any

from agent.staging.plan.entries import PlanFileError
from agent.staging.plan.keys import SHAPE_HINT

_JSON_SPACE = " \t\n\r"
#: One element of the devices list: the offset it starts at, its value, the keys given twice inside it.
Found = tuple[int, Any, list[str]]


class JsonPlanScanner:
    """Walks the top of a JSON plan with ``raw_decode`` so each device keeps the offset it starts at."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.duplicates: list[str] = []
        self.decoder = json.JSONDecoder(object_pairs_hook=self._pairs)
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                self.duplicates.append(key)
            out[key] = value
        return out

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1

    def space(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in _JSON_SPACE:
            i += 1
        return i

    def expect(self, i: int, chars: str, what: str) -> str:
        if i >= len(self.text) or self.text[i] not in chars:
            raise json.JSONDecodeError(f"Expecting {what}", self.text, i)
        return self.text[i]

    def value(self, i: int) -> tuple[Any, int]:
        return self.decoder.raw_decode(self.text, i)

    def items(self, i: int) -> tuple[list[Found], int]:
        """The elements of the array at ``i``: (offset, value, duplicate keys inside it)."""
        self.expect(i, "[", "'['")
        out: list[Found] = []
        i = self.space(i + 1)
        if i < len(self.text) and self.text[i] == "]":
            return out, i + 1
        while True:
            self.duplicates = []
            start = i
            value, i = self.value(i)
            out.append((start, value, self.duplicates))
            i = self.space(i)
            if self.expect(i, ",]", "',' delimiter") == "]":
                return out, i + 1
            i = self.space(i + 1)

    def devices(self, source: str) -> list[Found]:
        """The devices of a bare list, or of the one ``"devices"`` key of a top-level object."""
        i = self.space(0)
        head = self.expect(i, "[{", 'a list of devices, or an object with "devices"')
        if head == "[":
            found, i = self.items(i)
        else:
            found, seen = [], False
            i = self.space(i + 1)
            if not (i < len(self.text) and self.text[i] == "}"):
                while True:
                    self.expect(i, '"', "property name enclosed in double quotes")
                    key_at = i
                    key, i = self.value(i)
                    i = self.space(i)
                    self.expect(i, ":", "':' delimiter")
                    i = self.space(i + 1)
                    if key != "devices":
                        raise PlanFileError(
                            source, f"unknown top-level key {key!r}", line=self.line(key_at), hint=SHAPE_HINT["json"]
                        )
                    if seen:
                        raise PlanFileError(source, '"devices" given twice', line=self.line(key_at))
                    seen = True
                    if i < len(self.text) and self.text[i] != "[":
                        raise PlanFileError(
                            source, '"devices" must be a list', line=self.line(i), hint=SHAPE_HINT["json"]
                        )
                    found, i = self.items(i)
                    i = self.space(i)
                    if self.expect(i, ",}", "',' delimiter") == "}":
                        break
                    i = self.space(i + 1)
            i += 1
        i = self.space(i)
        if i < len(self.text):
            raise json.JSONDecodeError("Extra data", self.text, i)
        return found
