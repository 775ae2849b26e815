"""arq workers: short asynchronous tasks (ingestion, embedding) run outside the API."""
