"""Running the dispatcher under uvicorn with uvloop + httptools (the measured fast pair)."""

from __future__ import annotations

import uvicorn

from edgefleet.dispatcher.app import create_app
from edgefleet.shared.settings import DispatcherSettings


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
        # uvicorn would otherwise rewrite the client address from X-Forwarded-For for
        # 127.0.0.1 peers on its own; EDGEFLEET_TRUSTED_PROXIES alone decides (dispatcher/caller.py).
        proxy_headers=False,
        # Longer than the clients' idle pools, so keep-alive races stay on their side.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=30,
    )
