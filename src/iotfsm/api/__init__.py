"""The platform's HTTP management API (`/api/v1`, OpenAPI at `/api/v1/openapi.json`): devices,
firmware, deployments, campaigns, resources, config, log levels and a live step stream, served
by Starlette on uvicorn in the platform process. Needs the `api` extra."""

from .server import ApiServer

__all__ = ["ApiServer"]
