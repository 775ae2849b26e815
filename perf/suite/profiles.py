"""The profiles of `quarry perf PROFILE`: who many users do what, for how long.

Think times are chosen so the offered load lands in the targets' 100-200 requests/s band:
users / mean think time ≈ requests/s while responses stay fast (load-100: ~100 rps, load-200:
~130 rps, load-500: ~170 rps). Every value can be overridden on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["PROFILES", "Profile", "get_profile"]

DEFAULT_WEIGHTS = {"search": 85.0, "chat": 5.0, "upload": 1.0, "browse": 9.0}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    steps: list[tuple[int, float]]
    think_s: tuple[float, float]
    spawn_rate: float
    warmup_s: float = 0.0
    """Left out of the judged window at the start (caches fill, pools open); see LoadConfig."""
    scenario: str = "mixed"
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    stress: bool = False
    endurance: bool = False
    chunks: int = 2000
    compare: bool = True
    compare_s: float = 20.0
    compare_rounds: int = 2
    compare_users: int = 32
    keys: int = 20

    @property
    def users(self) -> int:
        return max(u for u, _ in self.steps)

    @property
    def duration_s(self) -> float:
        return sum(d for _, d in self.steps)


def _load(users: int, think: tuple[float, float], spawn: float) -> Profile:
    return Profile(name=f"load-{users}", description=f"{users} concurrent users, steady, mixed workload",
                   steps=[(users, 120.0)], think_s=think, spawn_rate=spawn, warmup_s=30.0)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(name="smoke", description="a 20 s check that the suite works (CI); no thresholds",
                     steps=[(8, 20.0)], think_s=(0.2, 0.8), spawn_rate=8.0, chunks=120, compare=True,
                     compare_s=4.0, compare_rounds=1, compare_users=4, keys=4),
    "load-100": _load(100, (0.5, 1.5), 20.0),
    "load-200": _load(200, (1.0, 2.0), 40.0),
    "load-500": _load(500, (2.0, 4.0), 50.0),
    "stress": Profile(name="stress", description="users stepped up until an SLO breaks; reports the breaking point",
                      steps=[(u, 30.0) for u in (25, 50, 100, 150, 200, 300, 400, 500, 700, 1000)],
                      think_s=(0.5, 1.5), spawn_rate=50.0, stress=True, compare=False),
    "endurance": Profile(name="endurance", description="steady load for a long time: drift of latency, RSS, "
                         "DB connections and Redis memory", steps=[(100, 1800.0)], think_s=(0.5, 1.5),
                         spawn_rate=20.0, warmup_s=60.0, endurance=True, compare=False),
}


def get_profile(name: str, **overrides: object) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(PROFILES[name], **changes)  # type: ignore[arg-type]
