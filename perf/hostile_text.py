"""Time the text handling that issue 13 found superlinear, on its hostile inputs (40,000 spaces).

    PYTHONPATH=$PWD python perf/hostile_text.py [--timeout 120]

Each case runs in its own process (a quadratic one can be killed at the timeout) and reports the
time of the call alone, not the imports. Run it on an older checkout for the "before" numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

SPACES = "' ' * 40000"
CASES = {
    "detect_format(<!---->*27 + x)": (
        "from rag.parsing import detect_format",
        "detect_format(None, 'application/octet-stream', b'<!---->' * 27 + b'x')",
    ),
    "normalise (trailing blanks)": ("from rag.parsing.base import normalise", f"normalise({SPACES} + 'x')"),
    "parse_markdown (ATX heading)": (
        "from rag.parsing.plain import parse_markdown", f"parse_markdown('# x' + {SPACES} + 'x')",
    ),
    "parse_markdown (front-matter title)": (
        "from rag.parsing.plain import parse_markdown",
        f"parse_markdown('---\\ntitle: a' + {SPACES} + 'b\\n---\\nbody')",
    ),
    "strip_citations": ("from rag.agent import strip_citations", f"strip_citations({SPACES} + 'x')"),
    "decompose (and-split)": ("from rag.llm.heuristics import decompose", f"decompose({SPACES} + 'x')"),
    "glob '*a'*12 + 'b' on 'a'*40": (
        "from rag.connectors.globs import matches", "matches('a' * 40, ['*a' * 12 + 'b'], [])",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0)
    timeout = parser.parse_args().timeout
    for name, (setup, call) in CASES.items():
        code = f"{setup}\nimport time\nt = time.perf_counter()\n{call}\nprint(f'{{time.perf_counter() - t:.3f}} s')"
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                                  check=True)
            took = done.stdout.strip()
        except subprocess.TimeoutExpired:
            took = f"> {timeout:g} s (killed)"
        print(f"{name:40} {took}", flush=True)


if __name__ == "__main__":
    main()
