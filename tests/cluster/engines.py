"""The shared engines of a cluster test, started by the test itself: a PostgreSQL 15 cluster
(initdb + pg_ctl in a temp dir, as the ``postgres`` user since PostgreSQL refuses root,
listening only on a Unix socket in that dir) and a Redis server (Unix socket only, AOF with
fsync always unless asked otherwise). No system service, no TCP port to collide on."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Postgres:
    """``with Postgres() as pg:`` -> ``pg.dsn`` (database ``hpbx``). Its files live in a fresh
    temp dir of their own (pytest's tmp dirs are closed to the postgres user), removed at stop."""

    def __init__(self):
        self.bin = _pg_bin()
        if self.bin is None:
            pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="hpbx-pg-"))
        self.data = self.dir / "pgdata"
        self.sock = self.dir / "pgsock"
        self.log = self.dir / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres" if self.as_user else pwd.getpwuid(os.geteuid()).pw_name
        self.port = 5432  # only names the socket file; no TCP listener

    @property
    def dsn(self) -> str:
        return f"host={self.sock} port={self.port} dbname=hpbx user={self.user}"

    def _run(self, *cmd: str) -> None:
        subprocess.run(self.as_user + list(cmd), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, cwd="/")

    def start(self) -> "Postgres":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self.as_user:
            for p in (self.dir, self.sock):
                shutil.chown(p, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                  "-o", f"-c listen_addresses='' -c unix_socket_directories='{self.sock}' "
                        f"-c port={self.port} -c fsync=off -c max_connections=50", "start")
        self._run(str(self.bin / "createdb"), "-h", str(self.sock), "-p", str(self.port), "-U",
                  self.user, "hpbx")
        return self

    def restart(self) -> None:
        """A fast restart: every client connection is dropped."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast",
                  "-w", "-t", "30", "restart")

    def psql(self, sql: str) -> str:
        out = subprocess.run(self.as_user + [str(self.bin / "psql"), "-h", str(self.sock), "-p",
                                             str(self.port), "-U", self.user, "-d", "hpbx", "-At",
                                             "-c", sql],
                             check=True, capture_output=True, text=True, cwd="/")
        return out.stdout

    def stop(self) -> None:
        subprocess.run(self.as_user + [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                       "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd="/")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Redis:
    """``with Redis(tmp) as r:`` -> ``r.url`` (unix://...)."""

    def __init__(self, directory: Path, appendfsync: str = "always"):
        self.appendfsync = appendfsync
        if not os.path.exists(REDIS_SERVER):
            pytest.skip("redis-server is not installed (Debian package redis-server)")
        self.dir = Path(directory)
        self.sock = self.dir / "redis.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> "Redis":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", self.appendfsync,
             "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("redis-server did not start: "
                                     + (self.dir / "redis.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        return self

    def client(self):
        import redis
        return redis.Redis(unix_socket_path=str(self.sock))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "Redis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
