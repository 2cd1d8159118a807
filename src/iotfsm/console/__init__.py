"""The live web console: pages for people, served by the API's process beside `/api/v1`.

Plain HTML, CSS and JavaScript modules from `static/` (no build step, nothing fetched from the
network), and the declared machines' diagrams from `diagrams.py`. The pages read and change the
platform only through `/api/v1`, with the session cookie the API sets, and follow it live through
the API's stream of step records; so a program sees exactly what a person sees.

The API mounts `routes(ctx)` under `/console` when this package imports.
"""

from .routes import routes

__all__ = ["routes"]
