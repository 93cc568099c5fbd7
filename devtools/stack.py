"""Private Postgres, Redis and RabbitMQ servers as plain processes, for ``make run`` and the tests.

Each server lives in a state folder of its own, on non-default ports, so it never touches a
system server. Every server started here is stopped by its own pid or stop command.

``python -m devtools.stack run`` (what ``make run`` calls) starts the three servers, applies the schema,
starts the four services, prints where to connect, and on Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.migrate import migrate

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
RABBIT_SERVER = "/usr/sbin/rabbitmq-server"
RABBITMQCTL = "/usr/sbin/rabbitmqctl"
IS_ROOT = os.geteuid() == 0


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install postgresql (make deps)")
    return found


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def _as_user(user: str) -> list[str]:
    return ["runuser", "-u", user, "--"] if IS_ROOT else []


def _chown(path: Path, user: str) -> None:
    if IS_ROOT:
        entry = pwd.getpwnam(user)
        for root, _dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


async def wait_ready(
    url: str, *, path: str = "/readyz", timeout: float = 30, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until a service answers 200 on ``path`` (its readiness by default)."""
    import asyncio

    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{url} exited with {proc.returncode}")
            try:
                async with session.get(f"{url}{path}", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url}{path} not 200 after {timeout}s")


@dataclass
class Postgres:
    state: Path
    port: int
    fsync: bool = True
    options: str = ""  # more -c settings (a primary's synchronous standby, a standby's apply delay)

    @property
    def data(self) -> Path:
        return self.state / "data"

    def dsn(self, database: str = "chat") -> str:
        return f"postgresql://chat@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        _chown(self.state, "postgres")
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    *_as_user("postgres"),
                    _pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "chat",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        options = f"-p {self.port} -k {self.state} -c listen_addresses=127.0.0.1 -c max_connections=300"
        options += " -c autovacuum_naptime=5s"  # rewritten rows are vacuumed often (migration 0005)
        if not self.fsync:
            options += " -c fsync=off -c full_page_writes=off"
        if self.options:
            options += f" {self.options}"
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():  # left by a crash: pg_ctl start copes if the pid is dead
            self.stop()
        subprocess.run(
            [
                *_as_user("postgres"),
                _pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.state / "postgres.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if not (self.data / "standby.signal").exists():  # a standby has the primary's databases
            self.ensure_database("chat")

    def sql(self, *statements: str, database: str = "postgres") -> str:
        """Run ``statements`` with psql, each on its own (outside a transaction); their output."""
        psql = [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "chat", "-d", database, "-tAq"]
        return subprocess.run(
            [*psql, *(arg for sql in statements for arg in ("-c", sql))], check=True, capture_output=True, text=True
        ).stdout

    def ensure_database(self, name: str, template: str | None = None) -> None:
        psql = [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "chat", "-d", "postgres", "-tAq"]
        exists = subprocess.run(
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not exists:
            sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
            subprocess.run([*psql, "-c", sql], check=True)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*_as_user("postgres"), _pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def kill(self) -> None:
        """kill -9 of the postmaster and every process it started, as when its machine dies. It
        stays dead: a killed primary is replaced by its standby (devtools/cluster.py)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        postmaster = int(pid_file.read_text().split()[0])
        for pid in [*children_of(postmaster), postmaster]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pid_file.unlink(missing_ok=True)

    def crash(self) -> None:
        """Stop as a crash would: every process quits at once, no shutdown checkpoint, and the next
        start replays the WAL (``pg_ctl stop -m immediate``; a SIGKILL of the postmaster alone would
        leave its backends holding the shared memory, and a new postmaster refuses to start)."""
        self.stop("immediate")


@dataclass
class Redis:
    state: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more options, e.g. ("--replicaof", "127.0.0.1", "<port>")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        log = open(self.state / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.state),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_port(self.port, 20, self.proc)

    def kill(self) -> None:
        """kill -9, as when its machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class RabbitMQ:
    state: Path
    port: int
    dist_port: int
    epmd_port: int
    name: str = "chat"
    proc: subprocess.Popen[bytes] | None = None
    config: str = ""  # more rabbitmq.conf lines (a cluster's peers and partition handling)
    own_epmd: bool = True  # stop the epmd on epmd_port with the node (a cluster's nodes share one)

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def pid_file(self) -> Path:
        return self.state / "node.pid"

    def url(self, vhost: str = "/") -> str:
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.state / "mnesia"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_LOG_BASE": str(self.state / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.state / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.state / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.state / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.state / "rabbitmq-env.conf"),
            # no scheduler busy-waiting: on a small shared machine it burns CPU the services need
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RABBITMQCTL, "-n", self.node, *args],
            env=self._env(),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        for sub in ("mnesia", "log"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.state / "enabled_plugins").write_text("[].\n")
        # guest may connect over loopback only (the default); keep the disk alarm low for small disks
        (self.state / "rabbitmq.conf").write_text(
            "disk_free_limit.absolute = 50MB\nloopback_users.guest = true\n" + self.config
        )
        (self.state / "advanced.config").write_text("[].\n")
        (self.state / "rabbitmq-env.conf").write_text("")
        if IS_ROOT:
            _chown(self.state, "rabbitmq")
        log = open(self.state / "server.out", "ab")
        command = [RABBIT_SERVER] if IS_ROOT else ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
        self.proc = subprocess.Popen(
            command, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.state)
        )
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}; see {self.state}/log")
            result = self.ctl("await_startup", "--timeout", "10", check=False, timeout=30)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq did not start: {result.stderr.strip()[:500]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """kill -9 of the node, as when its machine dies: the Erlang VM (whose pid it writes to its
        pid file) and everything in its process group (``su``, as root, starts it in a session of
        its own, so that is not ours). Its data stays: :meth:`start` brings it back into its cluster."""
        try:
            pid = int(self.pid_file.read_text().strip())
            # our node's VM, not a process that took a stale file's pid
            if f"-epmd_port {self.epmd_port}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                b"\0", b" "
            ):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # not running
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.proc = None
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("stop", check=False, timeout=60)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        if self.own_epmd:
            stop_epmd(self.epmd_port)

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def stop_epmd(port: int) -> None:
    """Our own epmd (on a private port) outlives the nodes that started it; stop it too."""
    epmd = shutil.which("epmd") or "/usr/bin/epmd"
    subprocess.run(
        [epmd, "-port", str(port), "-kill"], capture_output=True, env={**os.environ, "ERL_EPMD_PORT": str(port)}
    )


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc; empty if it is gone)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


@dataclass
class Stack:
    """The three servers under one state folder."""

    state: Path
    postgres: Postgres
    redis: Redis
    rabbitmq: RabbitMQ

    @classmethod
    def at(cls, state: Path, base_port: int, *, fsync: bool = True) -> Stack:
        return cls(
            state=state,
            postgres=Postgres(state / "postgres", base_port + 1, fsync=fsync),
            redis=Redis(state / "redis", base_port + 2),
            rabbitmq=RabbitMQ(state / "rabbitmq", base_port + 3, base_port + 4, base_port + 5, name=f"chat{base_port}"),
        )

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)  # the postgres and rabbitmq users must reach their folders
        self.postgres.start()
        self.redis.start()
        self.rabbitmq.start()

    def stop(self) -> None:
        for server in (self.rabbitmq, self.redis, self.postgres):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                print(f"devstack: stopping {server.__class__.__name__} failed: {exc}", file=sys.stderr)

    def env(self, database: str = "chat", vhost: str = "/") -> dict[str, str]:
        """The services' settings for the three servers."""
        return {
            "CHAT_DATABASE_URL": self.postgres.dsn(database),
            "CHAT_AMQP_URL": self.rabbitmq.url(vhost),
            "CHAT_REDIS_URL": self.redis.url(),
        }

    def describe(self) -> str:
        return f"  Postgres {self.postgres.dsn()}\n  RabbitMQ {self.rabbitmq.url()}\n  Redis    {self.redis.url()}\n"

    def cpu_roots(self) -> dict[str, list[int]]:
        """Each server's root processes (their descendants count with them), for CPU sampling."""
        assert self.rabbitmq.proc is not None and self.redis.proc is not None
        return {
            "rabbitmq": [self.rabbitmq.proc.pid],
            "redis": [self.redis.proc.pid],
            "postgres": [self.postgres.postmaster_pid()],
        }


class Engines(Protocol):
    """What ``make run`` needs of its servers: one node of each (Stack) or clusters (devtools/cluster.py)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def env(self, database: str = ..., vhost: str = ...) -> dict[str, str]: ...
    def describe(self) -> str: ...
    def cpu_roots(self) -> dict[str, list[int]]: ...


def dev_secret(state: Path) -> str:
    path = state / "jwt-secret"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


SERVICES = ("writer", "notifier", "gateway", "query")


def service_env(stack: Engines, secret: str) -> dict[str, str]:
    return {**stack.env(), "CHAT_JWT_SECRET": secret, "CHAT_DEV_LOGIN": "true"}


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def metric_sum(text: str, name: str, label: str = "") -> float:
    """The sum of every sample of ``name`` in a Prometheus text page (all its label sets, or
    those whose line contains ``label``, e.g. ``exchange="chat.events"``)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {" and label in line
    )


def spawn_service(name: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``chat-<name>`` as a process with ``env``, its output appended to ``log``
    (devstack, the tests' harness and the benchmarks all start services this way)."""
    with open(log, "ab") as out:
        return subprocess.Popen([_bin(f"chat-{name}")], env=dict(env), stdout=out, stderr=subprocess.STDOUT)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 25) -> None:
    """SIGTERM every process still running, wait for each, SIGKILL those that outlast ``timeout``."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def private_system(
    prefix: str, base_port: int, *, fsync: bool
) -> AsyncIterator[tuple[Stack, Path, list[subprocess.Popen[bytes]]]]:
    """Private servers in a temporary folder, migrated, for a benchmark: yields the stack, its
    folder and a list to put service processes in; on exit stops those, then the servers."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    stack = Stack.at(state, base_port, fsync=fsync)
    async with _running(stack, state) as procs:
        yield stack, state, procs


@asynccontextmanager
async def private_cluster(
    prefix: str, base_port: int
) -> AsyncIterator[tuple[Engines, Path, list[subprocess.Popen[bytes]]]]:
    """:func:`private_system` with the clustered engines of devtools/cluster.py."""
    from .cluster import ClusterStack  # it builds on this module's servers

    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)
    stack = ClusterStack.at(state, base_port)
    async with _running(stack, state) as procs:
        yield stack, state, procs


@asynccontextmanager
async def _running(stack: Engines, state: Path) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(stack.start)
        await migrate(stack.env()["CHAT_DATABASE_URL"])
        yield procs
    finally:
        await asyncio.to_thread(stop_processes, procs)
        await asyncio.to_thread(stack.stop)
        shutil.rmtree(state, ignore_errors=True)


def run(state: Path, base_port: int, cluster: bool = False) -> int:
    stack: Engines
    if cluster:
        from .cluster import ClusterStack  # it builds on this module's servers

        stack = ClusterStack.at(state, base_port)
    else:
        stack = Stack.at(state, base_port)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kind = (
        "a Postgres primary and standby, Redis with Sentinels, 3 RabbitMQ nodes"
        if cluster
        else "Postgres, Redis and RabbitMQ"
    )
    print(f"devstack: starting {kind} in {state} ...", flush=True)
    try:
        stack.start()
        secret = dev_secret(state)
        env = {**os.environ, **service_env(stack, secret)}
        subprocess.run([_bin("chat-migrate")], env=env, check=True, stdout=subprocess.DEVNULL)
        logs = state / "logs"
        logs.mkdir(exist_ok=True)
        for name in SERVICES:
            procs[name] = spawn_service(name, env, logs / f"{name}.log")
        for name, port in (("writer", 8082), ("notifier", 8083), ("gateway", 8080), ("query", 8081)):
            _wait_port(port, 30, procs[name])
        print(
            "\nThe chat backend is running:\n"
            "  web client            http://127.0.0.1:8081/app/  (sign in with any user id)\n"
            "  gateway  (WebSocket)  ws://127.0.0.1:8080/?Authorization=<token>\n"
            "  query    (REST)       http://127.0.0.1:8081/conversations\n"
            "  writer   (ops)        http://127.0.0.1:8082/readyz\n"
            "  notifier (ops)        http://127.0.0.1:8083/readyz\n"
            f"{stack.describe()}"
            f"  logs     {logs}/<service>.log\n\n"
            "Mint a token:  make token USER=alice\n"
            "Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"devstack: chat-{name} exited with {proc.returncode}; see {logs}/{name}.log", flush=True)
                    stopping = True
            time.sleep(0.5)
        return 0
    finally:
        print("\ndevstack: stopping ...", flush=True)
        stop_processes(procs.values())
        stack.stop()
        print("devstack: stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--cluster", action="store_true", help="clustered engines (devtools/cluster.py)")
    parser.add_argument("--state", help="state folder (default .state, or .state-cluster with --cluster)")
    parser.add_argument(
        "--base-port",
        type=int,
        help="Postgres on base+1, Redis base+2, AMQP base+3 (default 17430); with --cluster, base+1 to base+14 (default 17440)",
    )
    args = parser.parse_args()
    state = args.state or (".state-cluster" if args.cluster else ".state")
    base_port = args.base_port or (17440 if args.cluster else 17430)
    raise SystemExit(run(Path(state).resolve(), base_port, cluster=args.cluster))


if __name__ == "__main__":
    main()
