"""Dagster definitions: scheduled syncs, backfills and corpus checks (see definitions.py)."""
