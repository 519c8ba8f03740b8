"""A Python client for the stylequeue HTTP API (httpx)."""
