"""The agent: a bounded plan → tool call → observe loop over injected tools, answering with
citations. Framework-free: the API injects a `Toolbox` whose queries run under the tenant's RLS."""

from rag.agent.events import (
    AgentEvent,
    CitationEvent,
    DoneEvent,
    ErrorEvent,
    SourceRef,
    StepEvent,
    TokenEvent,
    ToolCallEvent,
    ToolCallRecord,
    ToolResultEvent,
    UsageOut,
)
from rag.agent.loop import SYSTEM_PROMPT, Agent, AgentLimits, AgentRun, Emit, strip_citations
from rag.agent.protocol import TOOL_SPECS, CollectionInfo, Passage, Toolbox

__all__ = [
    "SYSTEM_PROMPT", "TOOL_SPECS", "Agent", "AgentEvent", "AgentLimits", "AgentRun", "CitationEvent",
    "CollectionInfo", "DoneEvent", "Emit", "ErrorEvent", "Passage", "SourceRef", "StepEvent", "TokenEvent",
    "ToolCallEvent", "ToolCallRecord", "ToolResultEvent", "Toolbox", "UsageOut", "strip_citations",
]
