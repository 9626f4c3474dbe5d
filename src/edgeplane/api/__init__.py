"""The REST API (FastAPI)."""

from edgeplane.api.app import create_app

__all__ = ["create_app"]
