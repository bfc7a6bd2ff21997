"""Running the dispatcher under uvicorn with uvloop + httptools (the measured fast pair)."""

from __future__ import annotations

import uvicorn

from dispatcher.app import create_app
from shared.settings import DispatcherSettings


def serve(settings: DispatcherSettings) -> None:
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        # Longer than the clients' idle pools, so keep-alive races stay on their side.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=30,
    )
