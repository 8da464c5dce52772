"""A real S3-compatible server on 127.0.0.1 for the remote-checkpoint tests (moto's server mode),
behind a TCP proxy the tests can kill and revive: "the server dies" without losing the bucket
(moto keeps its objects in memory, so killing moto itself would also wipe the remote).

Never any cloud or metadata address: keys are explicit, AWS_EC2_METADATA_DISABLED is set, and
every endpoint is 127.0.0.1.
"""
from __future__ import annotations

import socket
import struct
import threading
import urllib.request

import pytest

BUCKET = "traind-test"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true"}
# Fail fast when the server is down: one try, 1 s to connect (botocore's defaults take 3-11 s).
FAST_FAIL = {"retries": {"total_max_attempts": 1, "mode": "standard"}, "connect_timeout": 1, "read_timeout": 10}


class KillableProxy:
    """127.0.0.1:port -> upstream. kill(): every connection reset and new ones refused;
    revive(): accepting again on the same port. cut_after(n): kill once n more bytes went upstream."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._budget: int | None = None
        self.killed = threading.Event()
        self._listen()

    def _listen(self) -> None:
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self.port = self._server.getsockname()[1]
        self._server.listen(64)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, up]
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self._budget is not None:
                    with self._lock:
                        self._budget -= len(data)
                        over = self._budget <= 0
                    if over:
                        self.kill()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, nbytes: int) -> None:
        self._budget = nbytes

    def kill(self) -> None:
        self._budget = None
        self.killed.set()
        try:
            self._server.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept() (close alone does not)
        except OSError:
            pass
        self._server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:       # RST, like a dead host: SO_LINGER 0
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def revive(self) -> None:
        self.killed.clear()
        self._listen()


class S3:
    def __init__(self, server_port: int, proxy: KillableProxy):
        self.server_port, self.proxy = server_port, proxy

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    def options(self, fast_fail: bool = True) -> dict:
        opts = {"key": "testing", "secret": "testing", "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": "us-east-1"}}
        if fast_fail:
            opts["config_kwargs"] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in FAST_FAIL.items()}
        return opts

    def fs(self):
        """A direct client (not through the proxy) for the test's own reads and fault injection."""
        import s3fs
        return s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                                 endpoint_url=f"http://127.0.0.1:{self.server_port}")

    def boto(self):
        import boto3
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.server_port}", aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")


@pytest.fixture(scope="session")
def moto_server():
    pytest.importorskip("moto.server", reason="the remote tests need moto[server] (pip install -e '.[test]')")
    pytest.importorskip("s3fs", reason="the remote tests need s3fs (pip install -e '.[test]')")
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server._server.server_address[1]
    server.stop()


@pytest.fixture
def s3(moto_server, monkeypatch):
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    base = f"http://127.0.0.1:{moto_server}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))      # never through a proxy
    direct.open(urllib.request.Request(f"{base}/moto-api/reset", method="POST"), timeout=10).read()
    proxy = KillableProxy(moto_server)
    box = S3(moto_server, proxy)
    box.boto().create_bucket(Bucket=BUCKET)
    yield box
    proxy.kill()
