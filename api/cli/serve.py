"""`convplan serve`: the HTTP service under uvicorn. `register(app)` adds the command; this
module also runs on its own (``python -m convplan.api.cli.serve --port 8000``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from convplan.api.cli.common import CONTEXT, LogLevel, fail, warn


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes (each with "
                                                     "its own limits and job table).")] = 1,
    log_level: LogLevel = "info",
) -> None:
    """Serve the HTTP API (FastAPI + uvicorn); limits come from CONVPLAN_* variables."""
    import uvicorn

    from convplan.settings import ServiceSettings, SettingsError, undeclared

    try:
        settings = ServiceSettings.from_env()   # fail here, in words, not in every worker
    except SettingsError as error:
        fail(error)
    for name in undeclared():
        warn(f"{name} is not a convplan setting and is ignored (the settings: README, "
             "'Service')")
    if not _loopback(host) and settings.key is None:
        warn(f"serving on {host} without an API key: anyone who can reach this port can use it "
             "(set CONVPLAN_API_KEY)")
    uvicorn.run("convplan.api.service.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    """Add `serve` to the convplan app."""
    app.command("serve")(serve)


if __name__ == "__main__":
    standalone = typer.Typer(add_completion=False, context_settings=CONTEXT, rich_markup_mode=None)
    register(standalone)
    standalone()
