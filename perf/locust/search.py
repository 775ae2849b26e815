"""Search: users send /v1/search with a Zipf query mix (a few popular queries, a long tail),
thinking between requests. Run by perf/run.py (`quarry perf ... --scenario search`)."""

from _quarry import QuarryUser, StepShape

__all__ = ["SearchUser", "StepShape"]


class SearchUser(QuarryUser):
    tasks = [QuarryUser.search]
