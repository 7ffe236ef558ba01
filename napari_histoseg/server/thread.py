"""Run a server in a thread of this process (tests, benchmarks, notebooks)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """``with ServerThread(create_app(config)) as url:`` serves on a free loopback port.

    :meth:`stop` ends it; :meth:`kill` drops the connections in flight first."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="error",
                                                    lifespan="off"))
        self.loop = None
        self.thread = threading.Thread(target=self._run, name="histoseg-serve", daemon=True)

    def _run(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.close()

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self.url

    def kill(self, timeout: float = 10.0):
        """Drop every open connection at once (as a crashed server or a pulled cable
        would), then stop."""
        def abort():
            for conn in list(self.server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()

        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(abort)
        self.stop(force=True, timeout=timeout)

    def stop(self, force: bool = True, timeout: float = 10.0):
        self.server.force_exit = force
        self.server.should_exit = True
        self.thread.join(timeout)
        store = getattr(getattr(self.app, "state", None), "store", None)
        if store is not None:
            store.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc):
        self.stop()
