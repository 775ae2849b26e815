"""Mixed workload: search, chat, upload and browse (list + get documents) with the weights of
the run configuration (`--weights search=85,chat=10,upload=1,browse=4`), think time between."""

from _quarry import CONFIG, QuarryUser, StepShape, tasks_from_weights

__all__ = ["MixedUser", "StepShape"]


class MixedUser(QuarryUser):
    tasks = tasks_from_weights(CONFIG.weights)
