"""Run a server in a thread of this process (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """``with ServerThread(create_app(config)) as url:`` serves on a free loopback port.

    :meth:`stop` ends it (``force=True`` drops connections in flight)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="error",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="histoseg-serve", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self.url

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
