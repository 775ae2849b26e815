"""The simulated OpenAI-compatible LLM (perf/simllm.py) as a long-running perf server.

    python -m perf.suite.llm --port 8100 --ttft-ms 300 --tokens-per-s 50 --tokens 40

Why not `python -m perf.simllm`: its command line starts the server with record_bodies=False,
and then it drops request bodies of 4 KiB and more before parsing them — which the agent's
second call (the conversation with the search results as tool output) always exceeds, so
every chat failed with "400: could not parse the JSON body". Here bodies are kept so they
parse, and the request log is trimmed every second so a long (endurance) run does not grow it
without bound. `GET /sim/stats` still answers for the requests kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from perf.simllm import SimLLM

KEEP = 200


async def _trim(sim: SimLLM) -> None:
    while True:
        await asyncio.sleep(1.0)
        done = [r for r in sim.requests if r.outcome != "pending"]
        if len(done) > KEEP:
            drop = {id(r) for r in done[:-KEEP]}
            sim.requests = [r for r in sim.requests if id(r) not in drop]


async def serve(args: argparse.Namespace) -> None:
    sim = SimLLM(host="127.0.0.1", port=args.port, ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s,
                 tokens=args.tokens, tool_first=True, record_bodies=True)
    await sim.start()
    print(json.dumps({"simllm": sim.base_url, "ttft_ms": args.ttft_ms, "tokens_per_s": args.tokens_per_s,
                      "tokens": args.tokens}), flush=True)
    trimmer = asyncio.create_task(_trim(sim))
    try:
        await asyncio.Event().wait()
    finally:
        trimmer.cancel()
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
