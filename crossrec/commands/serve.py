"""`crossrec serve`: run the HTTP read API (FastAPI under uvicorn with uvloop + httptools)."""

from __future__ import annotations

import typer

from crossrec.console import console
from crossrec.settings import get_settings, mask_url_password

APP_FACTORY = "serving.app:create_app"


def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    workers: int = typer.Option(1, min=1, max=64, help="uvicorn worker processes"),
    access_log: bool = typer.Option(False, help="log every request (costs throughput)"),
) -> None:
    """Serve GET /recommendations/{domain}/{user_id}, /health, /docs and the inspection page at /."""
    import uvicorn

    settings = get_settings()  # fail fast on bad configuration, before forking workers
    console.print(
        f"crossrec API on http://{host}:{port}/ (Redis {mask_url_password(settings.redis.url)}, "
        f"prefix {settings.key_prefix!r}, {workers} worker(s)); docs at /docs"
    )
    uvicorn.run(
        APP_FACTORY,
        factory=True,  # each worker builds its app (and Redis pool) from the process settings
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level="warning" if not access_log else "info",
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
