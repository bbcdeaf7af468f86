"""The HTTP ingest shim (FastAPI). Run with `uvicorn api_shim.app:app`."""
