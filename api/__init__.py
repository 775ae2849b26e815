"""The HTTP API (Litestar). HTTP only: SQL lives in storage/, domain logic in rag/."""
