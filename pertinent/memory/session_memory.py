"""Session memory: the running conversation, kept within a token limit.

    session = SessionMemory(px, "alice", "s1", max_tokens=800, summarizer=llm)
    session.add("user", "I'm moving to Berlin in May.")
    session.add("assistant", "Congratulations! ...")
    ctx = ltm.context(question, user_id="alice", session_id="s1", history=session.history())

Every turn goes to `Pertinent.add_turn`, so it is logged and feeds the session embedding
(which personalizes retrieval) whatever happens to it here. The window is what a prompt
gets: the most recent turns that fit `max_tokens`, counted with the reading model's
tokenizer. When it overflows, the oldest turns leave the window (down to
`low_water · max_tokens`, so that this happens once per several turns, not on every
one): with a `summarizer` (an `LLMCallable`) they are folded into a running summary that
stays at the top of the window; without one, or when the LLM fails, they are dropped,
oldest first. With `longterm`, every turn is also remembered there for later sessions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

from pertinent.client import Pertinent
from pertinent.errors import ConfigurationError, InvalidInput
from pertinent.memory.extractors import LLMCallable, LLMError
from pertinent.prompts.tokenizers import Tokenizer, tokenizer_for
from pertinent.types import Turn, as_utc, utcnow

if TYPE_CHECKING:
    from pertinent.memory.longterm import LongTermMemory

__all__ = ["SUMMARY_ROLE", "SessionMemory"]

log = logging.getLogger(__name__)

SUMMARY_ROLE = "summary"

_PROMPT = """Summarise this conversation for the assistant that continues it. Keep what the
user said about themselves, decisions, open questions, names, numbers and dates (as
dates, not "yesterday"). Plain sentences, no preamble, at most {words} words.

Summary so far:
{summary}

Turns to add to it:
{turns}"""


class SessionMemory:
    """One (user, session) conversation window; thread-safe.

    `max_tokens` bounds `history()` as rendered by the packer (``role: text`` lines, the
    summary first), counted with `model`'s tokenizer; the summary takes at most
    `summary_tokens` of it (default: a third, at most 200). Existing turns of the session are
    loaded from the store at construction (older ones that do not fit are dropped; they
    are summarised only when a summarizer is given).
    """

    def __init__(
        self,
        px: Pertinent,
        user_id: str,
        session_id: str,
        *,
        max_tokens: int = 1000,
        model: str = "gpt-4o",
        summarizer: LLMCallable | None = None,
        summary_tokens: int | None = None,
        low_water: float = 0.75,
        longterm: LongTermMemory | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        if not isinstance(px, Pertinent):
            raise ConfigurationError(
                f"SessionMemory needs a pertinent.Pertinent client, got {type(px).__name__}."
            )
        for value, what in ((user_id, "user_id"), (session_id, "session_id")):
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{what} must be a non-empty string, got {value!r}.")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise InvalidInput(f"max_tokens must be a positive int, got {max_tokens!r}.")
        if summary_tokens is None:
            summary_tokens = max(1, min(200, max_tokens // 3))
        if not isinstance(summary_tokens, int) or not 0 < summary_tokens < max_tokens:
            raise InvalidInput(
                f"summary_tokens must be an int in (0, max_tokens={max_tokens}), "
                f"got {summary_tokens!r}."
            )
        if not 0 < low_water <= 1:
            raise InvalidInput(f"low_water must be in (0, 1], got {low_water!r}.")
        if summarizer is not None and not callable(summarizer):
            raise ConfigurationError("summarizer must be a callable prompt -> text (LLMCallable).")
        self.px = px
        self.user_id = user_id
        self.session_id = session_id
        self.max_tokens = max_tokens
        self.summarizer = summarizer
        self.summary_tokens = summary_tokens
        self.low_water = low_water
        self.longterm = longterm
        self.tokenizer = tokenizer or tokenizer_for(model)
        self.summary: str = ""
        self.dropped = 0  # turns that left the window without reaching a summary
        self.summarised = 0  # turns folded into the summary
        self._window: list[Turn] = []
        self._lock = threading.Lock()
        with self._lock:
            self._window = list(px.history(user_id, session_id))
            self._shrink()

    # ------------------------------------------------------------------ public

    def add(
        self,
        role: str,
        text: str,
        *,
        timestamp: datetime | None = None,
        speaker: str | None = None,
    ) -> None:
        """Add a turn: logged, embedded into the session state, kept in the window (and
        remembered long-term when `longterm` is set and the user allows memory). Raises
        `InvalidInput` for an empty text or role, before anything is stored."""
        if not isinstance(role, str) or not role.strip():
            raise InvalidInput(f"role must be a non-empty string, got {role!r}.")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("A turn needs non-empty text.")
        when = as_utc(timestamp) if timestamp is not None else utcnow()
        self.px.add_turn(self.user_id, self.session_id, role, text, timestamp=when)
        if self.longterm is not None and self.px.consent(self.user_id).memory:
            self.longterm.add_turn(
                self.user_id,
                text,
                role=role,
                speaker=speaker,
                session_id=self.session_id,
                timestamp=when,
            )
        with self._lock:
            self._window.append(Turn(role=role, text=text, timestamp=when))
            self._shrink()

    def history(self) -> list[Turn]:
        """The window as turns for packing: the summary (role ``"summary"``) first."""
        with self._lock:
            head = [Turn(role=SUMMARY_ROLE, text=self.summary)] if self.summary else []
            return head + list(self._window)

    @property
    def turns(self) -> tuple[Turn, ...]:
        """The turns still in the window, oldest first (without the summary)."""
        with self._lock:
            return tuple(self._window)

    def token_count(self) -> int:
        """Tokens of `history()` rendered as the packer renders it."""
        with self._lock:
            return self._count(self._window)

    # ------------------------------------------------------------------ internals

    def _render(self, turns: Sequence[Turn]) -> str:
        lines = [f"{SUMMARY_ROLE}: {self.summary}"] if self.summary else []
        lines += [f"{' '.join(t.role.split())}: {t.text.strip()}" for t in turns]
        return "\n".join(lines)

    def _count(self, turns: Sequence[Turn]) -> int:
        return self.tokenizer.count(self._render(turns))

    def _shrink(self) -> None:
        """Evict the oldest turns while over the limit (down to the low-water mark)."""
        if self._count(self._window) <= self.max_tokens:
            return
        target = int(self.max_tokens * self.low_water)
        evicted: list[Turn] = []
        while self._window and self._count(self._window) > target:
            evicted.append(self._window.pop(0))
        if not evicted:
            return
        if self.summarizer is None:
            self.dropped += len(evicted)
            return
        if self._summarise(evicted):
            self.summarised += len(evicted)
            # The summary may have grown: keep the promise on the whole window.
            while self._window and self._count(self._window) > self.max_tokens:
                self._window.pop(0)
                self.dropped += 1
        else:
            self.dropped += len(evicted)

    def _summarise(self, evicted: Sequence[Turn]) -> bool:
        assert self.summarizer is not None
        words = max(20, int(self.summary_tokens * 0.7))
        prompt = _PROMPT.format(
            words=words,
            summary=self.summary or "(nothing yet)",
            turns="\n".join(_turn_line(t) for t in evicted),
        )
        try:
            text = self.summarizer(prompt)
        except LLMError as exc:
            log.warning(
                "session summary failed (%s: %s); %d turns dropped from the window instead "
                "(they stay in the session log)",
                type(exc).__name__,
                exc,
                len(evicted),
            )
            return False
        except Exception as exc:  # a provider's own error type: same outcome
            log.warning("session summary failed (%s: %s)", type(exc).__name__, exc)
            return False
        if not isinstance(text, str) or not text.strip():
            log.warning("session summary came back empty; %d turns dropped", len(evicted))
            return False
        # A model that ignores the word limit is cut at the token limit, not trusted.
        self.summary = self.tokenizer.truncate(" ".join(text.split()), self.summary_tokens)
        return True


def _turn_line(turn: Turn) -> str:
    stamp = turn.timestamp
    day = f"[{stamp.date().isoformat()}] " if isinstance(stamp, (datetime, date)) else ""
    return f"{day}{turn.role}: {' '.join(turn.text.split())}"
