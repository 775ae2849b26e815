"""Resource sampling during a run, once a second in a background thread:

- CPU (% of one core) and RSS (MB) of every process of the platform (the `quarry up` supervisor
  and all its descendants: Granian workers, arq, Postgres backends, Valkey) grouped by role, plus
  the extra servers (second API, ceiling, simulated LLM) and the load generator itself;
- Postgres connections (`pg_stat_activity`, client backends, total and active);
- Redis memory and clients (`INFO memory`, `INFO clients`).

And `/metrics` scrapes (Prometheus text) with a small parser for cache hit rates.
RSS sums over processes count pages shared between forked workers more than once.
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psutil

__all__ = ["ResourceSampler", "cache_hit_rates", "parse_prometheus", "role_of", "scrape"]


def role_of(cmdline: list[str], name: str) -> str:
    """The part of the platform a process of the `quarry up` tree is."""
    joined = " ".join(cmdline)
    if "granian" in joined or name.startswith("granian"):
        return "api"
    if "ops.cli worker" in joined or "arq" in joined:
        return "arq"
    if name.startswith("postgres") or "/postgres" in (cmdline[0] if cmdline else ""):
        return "postgres"
    if "valkey" in joined or "valkey" in name:
        return "valkey"
    if "ops.cli up" in joined:
        return "supervisor"
    if "dagster" in joined:
        return "dagster"
    return "other"


class ResourceSampler:
    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.roots: dict[str, tuple[int, bool, str]] = {}  # label -> (pid, classify by role, role prefix)
        self.procs: dict[int, tuple[psutil.Process, str]] = {}
        self.last_cpu: dict[int, float] = {}
        self.samples: list[dict[str, Any]] = []
        self.db_probe: Callable[[], dict[str, int]] | None = None
        self.redis_probe: Callable[[], dict[str, float]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def track(self, label: str, pid: int, by_role: bool = False, role_prefix: str = "") -> None:
        """Sample `pid` and its descendants as `label`, or by role (`role_prefix` + api, postgres, ...:
        two platforms side by side, e.g. `A:api` and `B:api`)."""
        with self._lock:
            self.roots[label] = (pid, by_role, role_prefix)

    def untrack(self, label: str) -> None:
        with self._lock:
            self.roots.pop(label, None)

    def _refresh(self) -> None:
        seen: dict[int, tuple[psutil.Process, str]] = {}
        with self._lock:
            roots = dict(self.roots)
        for label, (pid, by_role, prefix) in roots.items():
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                if by_role:
                    try:
                        role = prefix + role_of(proc.cmdline(), proc.name())
                    except psutil.Error:
                        continue
                else:
                    role = label
                old = self.procs.get(proc.pid)
                seen[proc.pid] = (old[0], role) if old else (proc, role)
        self.procs = seen

    def _sample(self, wall: float, dt: float) -> dict[str, Any]:
        roles: dict[str, dict[str, float]] = {}
        for pid, (proc, role) in list(self.procs.items()):
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
            except psutil.Error:
                continue
            cpu = times.user + times.system
            previous = self.last_cpu.get(pid)
            self.last_cpu[pid] = cpu
            entry = roles.setdefault(role, {"cpu": 0.0, "rss_mb": 0.0, "procs": 0})
            entry["cpu"] += 0.0 if previous is None or dt <= 0 else max(0.0, (cpu - previous) / dt * 100)
            entry["rss_mb"] += rss / 2**20
            entry["procs"] += 1
        sample: dict[str, Any] = {"t": wall, "roles": {k: {kk: round(vv, 2) for kk, vv in v.items()}
                                                       for k, v in roles.items()},
                                  "machine_cpu": psutil.cpu_percent(None), "loadavg1": psutil.getloadavg()[0]}
        # CPU the machine spent outside this run's processes (other work on a shared machine),
        # in % of one core like the roles.
        tracked = sum(v["cpu"] for v in roles.values())
        sample["other_cpu"] = round(max(0.0, sample["machine_cpu"] * (psutil.cpu_count() or 1) - tracked), 2)
        for probe, prefix in ((self.db_probe, "db"), (self.redis_probe, "redis")):
            if probe is None:
                continue
            try:
                sample.update({f"{prefix}_{k}": v for k, v in probe().items()})
            except Exception:  # noqa: S112 - a probe failing is recorded as a gap, not a crash
                continue
        return sample

    def _loop(self) -> None:
        last = time.monotonic()
        refreshed = 0.0
        psutil.cpu_percent(None)
        while not self._stop.is_set():
            now = time.monotonic()
            if now - refreshed > 3.0:
                self._refresh()
                refreshed = now
            self.samples.append(self._sample(time.time(), now - last))
            last = now
            self._stop.wait(self.interval_s)

    def start(self) -> ResourceSampler:
        self._thread = threading.Thread(target=self._loop, name="perf-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def postgres_probe(admin_url: str) -> Callable[[], dict[str, int]]:
    """Client connections to the platform's Postgres (not counting the probe's own)."""
    import psycopg2

    state: dict[str, Any] = {"conn": None}

    def probe() -> dict[str, int]:
        if state["conn"] is None or state["conn"].closed:
            state["conn"] = psycopg2.connect(admin_url)
            state["conn"].autocommit = True
        with state["conn"].cursor() as cur:
            cur.execute("SELECT count(*), count(*) FILTER (WHERE state = 'active'), "
                        "count(*) FILTER (WHERE state LIKE 'idle in transaction%') FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
            total, active, idle_tx = cur.fetchone()
        return {"connections": int(total), "active": int(active), "idle_in_tx": int(idle_tx)}

    return probe


def redis_probe(url: str) -> Callable[[], dict[str, float]]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)

    def probe() -> dict[str, float]:
        memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
        clients: dict[str, Any] = client.info("clients")  # type: ignore[assignment]
        return {"used_memory_mb": round(memory["used_memory"] / 2**20, 3),
                "rss_mb": round(memory.get("used_memory_rss", 0) / 2**20, 3),
                "clients": clients.get("connected_clients", 0)}

    return probe


# --- /metrics --------------------------------------------------------------------------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted labels): value}; comments and bad lines skipped."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(3) or "")))
        series[(match.group(1), labels)] = value
    return series


def scrape(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> str | None:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            if response.status != 200:
                return None
            return str(response.read().decode("utf-8", "replace"))
    except OSError:
        return None


def _outcome(name: str, labels: dict[str, str]) -> str | None:
    for value in (labels.get("result"), labels.get("outcome"), labels.get("status"), labels.get("event")):
        if value in ("hit", "hits"):
            return "hit"
        if value in ("miss", "misses"):
            return "miss"
    if re.search(r"hits?(_total)?$", name):
        return "hit"
    if re.search(r"miss(es)?(_total)?$", name):
        return "miss"
    return None


def cache_hit_rates(before: str | None, after: str | None) -> dict[str, dict[str, float]]:
    """Hit rate per cache over the interval between two scrapes: series whose name mentions
    `cache` and whose name or `result`/`outcome` label says hit or miss, grouped by their `cache`
    (or `name`) label. {} when /metrics has no such series."""
    if after is None:
        return {}
    old = parse_prometheus(before or "")
    counts: dict[str, dict[str, float]] = {}
    for (name, labels), value in parse_prometheus(after).items():
        if "cache" not in name or name.endswith(("_created", "_bucket", "_sum", "_count")):
            continue
        label_map = dict(labels)
        outcome = _outcome(name, label_map)
        if outcome is None:
            continue
        cache = label_map.get("cache") or label_map.get("name") or name.split("cache")[0].strip("_") or "cache"
        delta = value - old.get((name, labels), 0.0)
        entry = counts.setdefault(cache, {"hit": 0.0, "miss": 0.0})
        entry[outcome] += max(0.0, delta)
    out = {}
    for cache, c in counts.items():
        total = c["hit"] + c["miss"]
        out[cache] = {"hits": c["hit"], "misses": c["miss"], "hit_rate": c["hit"] / total if total else math.nan}
    return out
