"""Running the dispatcher under uvicorn with uvloop + httptools (the measured fast pair)."""

from __future__ import annotations

import contextlib
import socket

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from edgefleet.dispatcher.app import Dispatcher, create_app
from edgefleet.shared.settings import DispatcherSettings


class _Server(uvicorn.Server):
    """uvicorn's server, telling the dispatcher when it starts to shut down: uvicorn waits
    for open responses before the application's own shutdown, and subscription streams
    stay open until they are told to end (with the spec's graceful completion)."""

    def __init__(self, config: uvicorn.Config, app: Dispatcher) -> None:
        super().__init__(config)
        self.dispatcher = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.dispatcher.stopping()
        await super().shutdown(sockets)


def serve(settings: DispatcherSettings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
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
    server = _Server(config, app)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run does
        server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
