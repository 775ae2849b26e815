"""Rate limiting: per API key and per tenant, per route class, with limits from the tenant's
plan (see `policy`), enforced by `middleware` through one atomic Redis script
(storage.ratelimit)."""
