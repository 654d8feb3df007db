"""convplan.api.service: the HTTP service (FastAPI app, request workers, schemas, limits)."""
