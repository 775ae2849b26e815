"""Chat over SSE: users ask one-shot streamed questions (POST /v1/chat, stream: true) and
record the time to headers (`chat open`), to the first token (`chat ttft`) and to `done`
(`chat total`). The platform's LLM is the simulated one (perf/simllm.py) started by perf/run.py."""

from _quarry import QuarryUser, StepShape

__all__ = ["ChatUser", "StepShape"]


class ChatUser(QuarryUser):
    tasks = [QuarryUser.chat]
