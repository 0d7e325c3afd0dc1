"""Token ids -> text as they come: whole characters per token and stop strings, shared by every engine.

:class:`IncrementalText` gives each new token's text piece (a character split over several tokens comes
out whole, with the token that completes it); :class:`StopStrings` holds back the events whose text may
begin a stop string, and cuts the text before the stop string once one appears.
"""

from __future__ import annotations

import dataclasses

from autodeco.engines.base import TokenEvent

INCOMPLETE_CHARACTER = "\ufffd"
"""What a tokenizer decodes an unfinished multi-byte character to."""


class IncrementalText:
    """The text piece of each new token, decoding only a short window of recent ids.

    Each call decodes ``ids[prefix:]`` and returns what it adds to ``ids[prefix:read]`` (the text already
    returned), so a tokenizer that renders a token differently at the start of a string (SentencePiece's
    leading space) still gets its context. A piece that ends in an unfinished character is held back
    (an empty piece) until a later token completes it.

    Example:
        >>> class Bytes:  # a byte-level toy tokenizer: one token per UTF-8 byte
        ...     def decode(self, ids, skip_special_tokens=True):
        ...         return bytes(ids).decode("utf-8", errors="replace")
        >>> text = IncrementalText(Bytes())
        >>> [text.piece(token) for token in "hé!".encode()]
        ['h', '', 'é', '!']
    """

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # ids before this have had their text returned

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def piece(self, token_id: int, *, final: bool = False) -> str:
        """Add ``token_id``; return the text it completes ('' while a character is unfinished, unless ``final``)."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) and not final:
            return ""  # a special token skipped, or nothing new yet
        if after.endswith(INCOMPLETE_CHARACTER) and not final:
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :] if after.startswith(before) else after


@dataclasses.dataclass
class StopStrings:
    """Release token events while watching their text for stop strings.

    ``add`` returns the events that can be released now (their text can no longer be the start of a
    stop string) and whether a stop string was found; once found, the released texts end right
    before it and the last released event carries ``finish_reason="stop"``.

    Example:
        >>> stops = StopStrings(["\\n\\n"])
        >>> event = lambda text: TokenEvent(token_id=0, text=text, temperature=1.0, top_p=1.0)
        >>> [e.text for e in stops.add(event("a"))[0]]
        ['a']
        >>> stops.add(event("\\n"))  # may begin the stop string: held back
        ([], False)
        >>> released, stopped = stops.add(event("\\nb"))
        >>> [(e.text, e.finish_reason) for e in released], stopped
        ([('', None), ('', 'stop')], True)
    """

    stop: list[str]
    pending: list[TokenEvent] = dataclasses.field(default_factory=list)
    text: str = ""
    """The text released so far (never contains a stop string)."""

    def add(self, event: TokenEvent) -> tuple[list[TokenEvent], bool]:
        """Add one event; returns ``(events to release, stopped)``; the events' ``text`` is cut at a stop string."""
        self.pending.append(event)
        pending_text = "".join(item.text for item in self.pending)
        whole = self.text + pending_text
        found = [index for index in (whole.find(stop) for stop in self.stop) if index >= 0]
        if found:
            return self._cut(min(found) - len(self.text)), True
        held = self._held_length(whole) if event.finish_reason is None else 0
        released = []
        while self.pending and len(pending_text) - len(self.pending[0].text) >= held:
            first = self.pending.pop(0)
            pending_text = pending_text[len(first.text) :]
            released.append(first)
        if event.finish_reason is not None:
            released += self.pending
            self.pending = []
        self.text += "".join(item.text for item in released)
        return released, False

    def _cut(self, keep: int) -> list[TokenEvent]:
        """Release every pending event, their text cut to the first ``keep`` characters, the last one finishing."""
        released = []
        for item in self.pending:
            piece = item.text[: max(keep, 0)]
            keep -= len(item.text)
            released.append(dataclasses.replace(item, text=piece, finish_reason=None))
        released[-1].finish_reason = "stop"
        self.pending = []
        self.text += "".join(item.text for item in released)
        return released

    def _held_length(self, whole: str) -> int:
        """Length of the longest end of ``whole`` that is the start of a stop string (it may still complete)."""
        held = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(whole)), held, -1):
                if whole.endswith(stop[:length]):
                    held = length
                    break
        return held
