"""Fleet membership of one agent replica: register, heartbeat, re-register, leave.

Control traffic only, so it uses httpx. The loop never gives up on transient failures
(dispatcher restarting, network blip): it retries with capped exponential backoff and
re-registers whenever the dispatcher answers 404 to a heartbeat (its registry lost us,
e.g. Redis was restarted). Configuration errors (401 wrong token, 409 name conflict,
422 invalid registration) are logged loudly once per attempt cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger("edgefleet.agent.registration")


class Registrar:
    def __init__(
        self,
        *,
        agent: str,
        version: str,
        region: str,
        url: str,
        dispatcher_url: str,
        fleet_token: str,
        heartbeat_s: float,
        load: Callable[[], dict[str, Any]],
        bus: bool = False,
        on_registered: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.agent = agent
        self.bus = bus
        self.on_registered = on_registered
        self.region = region
        self.url = url
        self.version = version
        self.replica_id = f"{agent}-{region}-{uuid.uuid4().hex[:10]}"
        self.base = dispatcher_url.rstrip("/")
        if self.base.endswith("/mcp"):
            self.base = self.base[: -len("/mcp")]
        self.heartbeat_s = heartbeat_s
        self.load = load
        self.registered = asyncio.Event()
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {fleet_token}"}, timeout=httpx.Timeout(10.0, connect=2.0)
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"registrar-{self.replica_id}")

    async def _register(self) -> bool:
        body = {
            "replica_id": self.replica_id,
            "name": self.agent,
            "region": self.region,
            "url": self.url,
            "version": self.version,
            "bus": self.bus,
        }
        resp = await self._client.post(f"{self.base}/v1/agents", json=body)
        if resp.status_code in (200, 201):
            info = resp.json()
            log.info("registered %s with %s (%d tools)", self.replica_id, self.base, len(info.get("tools", [])))
            if self.on_registered is not None:
                self.on_registered(info)
            self.registered.set()
            return True
        log.error("registration of %s refused: HTTP %s %s", self.replica_id, resp.status_code, resp.text[:500])
        return False

    async def _run(self) -> None:
        backoff = 0.2
        registered = False
        while True:
            try:
                if not registered:
                    registered = await self._register()
                else:
                    resp = await self._client.post(
                        f"{self.base}/v1/agents/replicas/{self.replica_id}/heartbeat", json=self.load()
                    )
                    if resp.status_code == 404:
                        log.warning("dispatcher forgot replica %s; registering again", self.replica_id)
                        self.registered.clear()
                        registered = await self._register()
                    elif resp.status_code >= 400:
                        log.error("heartbeat refused: HTTP %s %s", resp.status_code, resp.text[:300])
                        registered = False
                if registered:
                    backoff = 0.2
                    await asyncio.sleep(self.heartbeat_s)
                    continue
            except httpx.HTTPError as exc:
                log.warning("dispatcher %s unreachable (%s); retrying", self.base, type(exc).__name__)
                registered = False if not self.registered.is_set() else registered
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    async def aclose(self) -> None:
        """Stop heartbeating and deregister (best effort) so routing stops at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.registered.is_set():
            with contextlib.suppress(httpx.HTTPError):
                await self._client.delete(f"{self.base}/v1/agents/replicas/{self.replica_id}", timeout=2.0)
        await self._client.aclose()
