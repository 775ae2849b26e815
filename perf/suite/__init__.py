"""The load, stress and endurance suite: `quarry perf PROFILE` (see docs/perf-suite.md).

perf/run.py is the command; this package holds its parts. Nothing here imports Locust (which
monkey-patches the standard library with gevent at import time): the locustfiles under
perf/locust/ import `perf.suite.workload`, never the other way round.
"""
