"""Throw-away servers of our own for tests that stop, kill or restart them (the machine's
shared services are never touched): each on a free port with its data in a directory of its
own, every URL carrying a password (so tests can check that logs mask it)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PASSWORD = "s3cret"  # every URL carries one: the logs must show it masked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


class Server:
    """One private server process; ``stop`` and ``start`` keep its port and data directory."""

    kind = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = open(self.root / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        self.starts += 1
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server did not start:\n{self.server_log()}")
            time.sleep(0.02)

    def ready(self) -> bool:
        return port_open(self.port)

    def stop(self, *, crash: bool) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def server_log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))

    def url(self) -> str:
        raise NotImplementedError


class RedisServer(Server):
    kind = "Redis"

    def command(self) -> list[str]:
        return [REDIS_SERVER or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.root), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--requirepass", PASSWORD]  # fmt: skip

    def ready(self) -> bool:
        import redis

        try:
            r = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD,
                            socket_connect_timeout=0.5, socket_timeout=2)  # fmt: skip
            try:
                return bool(r.ping())  # LOADING (replaying the AOF) is an error: not ready yet
            finally:
                r.close()
        except Exception:
            return False

    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0?prefix=rs-{uuid.uuid4().hex[:10]}"


class NatsServer(Server):
    kind = "NATS"

    def command(self) -> list[str]:
        return [NATS_SERVER or "nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.root / "js"), "--user", "omniq", "--pass", PASSWORD]  # fmt: skip

    def url(self) -> str:
        return f"nats://omniq:{PASSWORD}@127.0.0.1:{self.port}?namespace=r{uuid.uuid4().hex[:10]}"


class PostgresServer(Server):
    """A cluster of its own (initdb'd here; as the postgres user when running as root)."""

    kind = "PostgreSQL"

    def __init__(self, root: Path, bindir: Path) -> None:
        super().__init__(root)
        self.bindir = bindir
        self.data = root / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                 "--no-locale", "-E", "UTF8")  # fmt: skip

    def _pg(self, tool: str, *args: str) -> None:
        out = subprocess.run([*self.as_user, str(self.bindir / tool), *args], cwd=self.root,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{out.stdout}\n{out.stderr}\n{self.server_log()}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")  # fmt: skip
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                 "-t", "30", "-o", options, "start")  # fmt: skip
        self.starts += 1

    def stop(self, *, crash: bool) -> None:
        mode = "immediate" if crash else "fast"
        with contextlib.suppress(RuntimeError):  # not running
            self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def server_log(self) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def url(self) -> str:
        return (f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"
                f"?schema=omniq_r_{uuid.uuid4().hex[:10]}")  # fmt: skip


REDIS_SERVER = shutil.which("redis-server")
NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if os.path.exists(p)), None
)
PG_BINDIRS = sorted(
    (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
)


def private_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="omniq-restart-"))


def serve(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop(crash=False)
        shutil.rmtree(server.root, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own (append-only file on), stopped and removed afterwards."""
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    pytest.importorskip("redis", reason="the redis extra is not installed")
    server = RedisServer(private_dir())
    yield from serve(server)
