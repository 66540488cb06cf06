"""The nerfsim REST API (FastAPI), versioned under /v1."""
