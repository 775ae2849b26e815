"""The chat-completion contract every LLM provider implements.

A provider turns a list of messages (and the tools the model may call) into a stream of
deltas: text, tool-call fragments, then one `Finish` with the token usage. Streaming is the
only primitive; `collect` assembles a whole completion from it. Providers are shared by all
requests of a process and must be safe to use from many coroutines at once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import msgspec

__all__ = [
    "Completion", "Delta", "Finish", "LLMProvider", "Message", "TextDelta", "ToolCall", "ToolCallAssembler",
    "ToolCallDelta", "ToolChoice", "ToolSpec", "Usage", "collect", "estimate_prompt_tokens", "estimate_tokens",
]

Role = Literal["system", "user", "assistant", "tool"]
ToolChoice = Literal["auto", "none"]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    arguments: str
    """JSON text as the model wrote it (it may be invalid: the tool reports that back)."""


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] = []
    """Assistant messages: the calls the model made."""
    tool_call_id: str | None = None
    """Tool messages: the call this is the result of."""
    name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object."""


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


class TextDelta(msgspec.Struct, frozen=True, tag="text"):
    text: str


class ToolCallDelta(msgspec.Struct, frozen=True, tag="tool_call", kw_only=True):
    """A fragment of tool call number `index`: the id and name arrive once, the arguments in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Finish(msgspec.Struct, frozen=True, tag="finish", kw_only=True):
    reason: str
    """stop | tool_calls | length | content_filter (as the provider said)."""
    usage: Usage | None = None
    """None when the provider did not report usage (callers estimate)."""


Delta: TypeAlias = TextDelta | ToolCallDelta | Finish


@runtime_checkable
class LLMProvider(Protocol):
    name: str
    """e.g. "openai" or "offline"."""
    model: str

    def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """Deltas of one completion, ending with exactly one `Finish`. Raises `rag.llm.errors.LLMError`
        subclasses. Closing the iterator early (or cancelling the task) releases the request at once."""
        ...

    async def aclose(self) -> None: ...


class ToolCallAssembler:
    """Joins `ToolCallDelta` fragments into whole `ToolCall`s, in index order."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        part = self._parts.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        if delta.id:
            part["id"] = delta.id
        if delta.name:
            part["name"] += delta.name if not part["name"] or part["name"] != delta.name else ""
        part["arguments"] += delta.arguments

    def calls(self) -> list[ToolCall]:
        out = []
        for index in sorted(self._parts):
            part = self._parts[index]
            if not part["name"]:
                continue  # a fragment without a name cannot be executed
            out.append(ToolCall(id=part["id"] or f"call_{index}", name=part["name"],
                                arguments=part["arguments"] or "{}"))
        return out


class Completion(msgspec.Struct, kw_only=True):
    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage


def estimate_tokens(text: str) -> int:
    """About four characters per token: the usual rule of thumb for English BPE vocabularies."""
    return math.ceil(len(text) / 4) if text else 0


def estimate_prompt_tokens(messages: Sequence[Message]) -> int:
    total = 0
    for m in messages:
        total += 4 + estimate_tokens(m.content or "")  # ~4 tokens of per-message framing
        total += sum(estimate_tokens(c.name) + estimate_tokens(c.arguments) for c in m.tool_calls)
    return total


async def collect(
    provider: LLMProvider, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (),
    tool_choice: ToolChoice = "auto", max_tokens: int | None = None,
) -> Completion:
    """A whole completion from the provider's stream."""
    text: list[str] = []
    assembler = ToolCallAssembler()
    finish = Finish(reason="stop")
    stream = provider.stream(messages, tools=tools, tool_choice=tool_choice, max_tokens=max_tokens)
    try:
        async for delta in stream:
            if isinstance(delta, TextDelta):
                text.append(delta.text)
            elif isinstance(delta, ToolCallDelta):
                assembler.add(delta)
            else:
                finish = delta
    finally:
        await stream.aclose()
    joined = "".join(text)
    usage = finish.usage or Usage(prompt_tokens=estimate_prompt_tokens(messages),
                                  completion_tokens=estimate_tokens(joined))
    return Completion(text=joined, tool_calls=assembler.calls(), finish_reason=finish.reason, usage=usage)
