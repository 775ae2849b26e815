"""Upload: users send small text documents (60-250 words, JSON upload) to the upload
collection; each is queued for ingestion (202) and embedded by the arq worker."""

from _quarry import QuarryUser, StepShape

__all__ = ["StepShape", "UploadUser"]


class UploadUser(QuarryUser):
    tasks = [QuarryUser.upload]
