"""One Locust run (a "phase"): headless, in its own process, configured by a LoadConfig file.

Locust is started as `python -m locust -f perf/locust/<scenario>.py --headless`; the locustfile's
StepShape drives the user count, so the run ends by itself after the last step (or, under
stress, after the first step that breaks the SLO). Locust's own CSV files are kept next to the
per-request records the report is computed from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perf.suite.platform import REPO, base_env, log, tail
from perf.suite.sampler import ResourceSampler
from perf.suite.workload import CONFIG_ENV, LoadConfig

__all__ = ["Phase", "run_phase"]

LOCUSTFILES = REPO / "perf" / "locust"


@dataclass
class Phase:
    name: str
    kind: str
    """main (the profile), compare (an interleaved segment), or warmup."""
    target: str
    """Which server: platform, compare (the second configuration), ceiling."""
    scenario: str
    config_path: str
    records: str
    start: float = 0.0
    end: float = 0.0
    steady_start: float = 0.0
    """Start of the window the targets are judged on: after users finished spawning."""
    exit_code: int | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    metrics_before: str | None = None
    metrics_after: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("metrics_before")
        out.pop("metrics_after")
        return out


def run_phase(name: str, kind: str, target: str, scenario: str, config: LoadConfig, out_dir: Path,
              sampler: ResourceSampler | None = None) -> Phase:
    config_path = out_dir / f"{name}.config.json"
    config.records = str(out_dir / f"{name}.records.csv")
    if config.stop_on_slo is not None:
        config.verdicts = str(out_dir / f"{name}.verdicts.jsonl")
    config.dump(config_path)
    phase = Phase(name=name, kind=kind, target=target, scenario=scenario, config_path=str(config_path),
                  records=config.records)
    locustfile = LOCUSTFILES / f"{scenario}.py"
    argv = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
            "--csv", str(out_dir / f"{name}.locust"), "--loglevel", "WARNING", "--stop-timeout", "10",
            "--exit-code-on-error", "0"]
    env = base_env()
    env[CONFIG_ENV] = str(config_path)
    log(f"phase {name}: {scenario} x {max(u for u, _ in config.steps)} users against {target} "
        f"({config.duration_s:.0f} s)")
    log_path = out_dir / f"{name}.locust.log"
    phase.start = time.time()
    ramp = max(u for u, _ in config.steps[:1]) / max(config.spawn_rate, 0.1)
    phase.steady_start = phase.start + min(max(ramp + 2.0, config.warmup_s), config.steps[0][1] / 2) \
        if len(config.steps) == 1 else phase.start + config.settle_s
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    if sampler is not None:
        sampler.track("locust", proc.pid)
    try:
        phase.exit_code = proc.wait(timeout=config.duration_s + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        phase.exit_code = proc.wait()
    finally:
        if sampler is not None:
            sampler.untrack("locust")
    phase.end = time.time()
    if phase.exit_code not in (0, None):
        log(f"phase {name}: locust exited with {phase.exit_code}:\n{tail(log_path)}")
    if config.verdicts and Path(config.verdicts).exists():
        phase.verdicts = [json.loads(line) for line in Path(config.verdicts).read_text().splitlines() if line]
    return phase
