"""Clustered engines as private processes on one host, for ``make run CLUSTER=1``, the fail-over
tests and the benchmark: the topology the Kubernetes manifests recommend.

- RabbitMQ: three nodes of one cluster (peers from the config file, one shared epmd, the
  ``rabbitmq`` user's Erlang cookie), ``cluster_partition_handling = pause_minority``.
- Postgres: a primary and a synchronous standby made by ``pg_basebackup -R``; a commit returns
  once the standby has it on disk, so promoting the standby loses nothing that was confirmed.
- Redis: a master, a replica and three Sentinels (``redis-server --sentinel``), which promote the
  replica two seconds after the master stops answering.

Every server gets its own folder under ``state`` and a port from ``base_port``; each is stopped by
its own pid or stop command.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .stack import Postgres, RabbitMQ, Redis, _as_user, _chown, _pg_bin, _wait_port, stop_epmd

SENTINEL_MASTER = "chat"


@dataclass
class RabbitCluster:
    nodes: list[RabbitMQ]
    epmd_port: int

    @classmethod
    def at(cls, state: Path, ports: list[tuple[int, int]], epmd_port: int, name: str) -> RabbitCluster:
        names = [f"{name}-{i}" for i in range(len(ports))]
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{i + 1} = {n}@localhost\n" for i, n in enumerate(names)
        )
        config = (
            "cluster_formation.peer_discovery_backend = classic_config\n"
            + peers
            + "cluster_partition_handling = pause_minority\n"
        )
        nodes = [
            RabbitMQ(state / n, amqp, dist, epmd_port, name=n, config=config, own_epmd=False)
            for n, (amqp, dist) in zip(names, ports)
        ]
        return cls(nodes, epmd_port)

    def start(self) -> None:
        """The first node, then the others at once: each finds the first and joins it."""
        self.nodes[0].start()
        _in_parallel([node.start for node in self.nodes[1:]])
        self.wait_members(len(self.nodes))

    def wait_members(self, count: int, timeout: float = 90) -> None:
        """Until ``count`` nodes run in the cluster, as a running node sees it."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.running_nodes()
            if len(running) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ cluster: {len(running)} of {count} nodes running")
            time.sleep(0.5)

    def running_nodes(self) -> list[str]:
        for node in self.alive():
            result = node.ctl("eval", "rabbit_nodes:all_running().", check=False, timeout=20)
            if result.returncode == 0:
                return [n.strip(" []'\n") for n in result.stdout.split(",") if "@" in n]
        return []

    def alive(self) -> list[RabbitMQ]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl`` against a node that runs."""
        return self.alive()[0].ctl(*args, check=check)

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def urls(self, vhost: str = "/") -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{n.port}/{quote(vhost, safe='')}" for n in self.nodes]

    def node_named(self, name: str) -> RabbitMQ:
        return next(n for n in self.nodes if n.node == name)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception:  # keep stopping the others
                node.kill()
        stop_epmd(self.epmd_port)


@dataclass
class PostgresPair:
    """A primary and its synchronous standby."""

    primary: Postgres
    standby: Postgres

    @classmethod
    def at(cls, state: Path, primary_port: int, standby_port: int, *, standby_options: str = "") -> PostgresPair:
        return cls(
            Postgres(state / "primary", primary_port),
            Postgres(state / "standby", standby_port, options=standby_options),
        )

    def start(self) -> None:
        self.primary.start()  # before it has a standby: its first commits must not wait for one
        if not (self.standby.data / "PG_VERSION").exists():
            self.standby.state.mkdir(parents=True, exist_ok=True)
            _chown(self.standby.state, "postgres")
            subprocess.run(
                [
                    *_as_user("postgres"),
                    _pg_bin("pg_basebackup"),
                    *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "chat"),
                    *("-D", str(self.standby.data), "-R", "-X", "stream", "--checkpoint=fast"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self.standby.start()
        # From now on a commit returns once the standby has flushed it ('*': whichever standby is
        # connected). ALTER SYSTEM writes the primary's own configuration, which the standby's copy
        # predates: once promoted it does not wait for a standby it does not have.
        self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()")

    def dsn(self, database: str = "chat") -> str:
        """Both hosts, as libpq takes them: a service finds the primary among them."""
        return f"postgresql://chat@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/{database}"

    def read_dsn(self, database: str = "chat") -> str:
        return f"postgresql://chat@127.0.0.1:{self.standby.port},127.0.0.1:{self.primary.port}/{database}"

    def promote_standby(self) -> None:
        """``pg_ctl promote``: the standby takes writes (what an operator does after a fail-over)."""
        subprocess.run(
            [*_as_user("postgres"), _pg_bin("pg_ctl"), "-D", str(self.standby.data), "-w", "promote"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            try:
                server.stop()
            except Exception:
                pass


@dataclass
class Sentinel:
    state: Path
    port: int
    master_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        config = self.state / "sentinel.conf"  # Sentinel rewrites it as it learns the topology
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.state}\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 2000\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} 10000\n"
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        )
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with open(self.state / "sentinel.log", "ab") as log:
            self.proc = subprocess.Popen(
                [binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_port(self.port, 20, self.proc)

    def master(self) -> tuple[str, int] | None:
        """The master's address as this Sentinel knows it."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split()
        return (out[0], int(out[1])) if len(out) == 2 else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@dataclass
class RedisSentinels:
    """A master, a replica and three Sentinels."""

    master: Redis
    replica: Redis
    sentinels: list[Sentinel] = field(default_factory=list)

    @classmethod
    def at(cls, state: Path, master_port: int, replica_port: int, sentinel_ports: list[int]) -> RedisSentinels:
        master = Redis(state / "master", master_port)
        replica = Redis(state / "replica", replica_port, args=("--replicaof", "127.0.0.1", str(master_port)))
        return cls(master, replica, [Sentinel(state / f"sentinel-{p}", p, master_port) for p in sentinel_ports])

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        self.wait_replicating(self.replica.port)
        for sentinel in self.sentinels:
            sentinel.start()

    @staticmethod
    def wait_replicating(port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (
            "master_link_status:up"
            not in subprocess.run(
                ["redis-cli", "-p", str(port), "INFO", "replication"], capture_output=True, text=True
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis replica on {port} does not replicate")
            time.sleep(0.1)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def elected(self) -> tuple[str, int] | None:
        """The master a majority of the Sentinels names."""
        votes = [s.master() for s in self.sentinels if s.proc is not None]
        for address in votes:
            if address is not None and votes.count(address) * 2 > len(self.sentinels):
                return address
        return None

    def servers(self) -> list[Redis]:
        return [self.master, self.replica]

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            try:
                server.stop()
            except Exception:
                pass


@dataclass
class ClusterStack:
    """The three clustered engines under one state folder; ports from ``base_port`` + 1 to + 14."""

    state: Path
    postgres: PostgresPair
    redis: RedisSentinels
    rabbitmq: RabbitCluster

    @classmethod
    def at(cls, state: Path, base_port: int) -> ClusterStack:
        b = base_port
        return cls(
            state=state,
            postgres=PostgresPair.at(state / "postgres", b + 1, b + 2),
            redis=RedisSentinels.at(state / "redis", b + 3, b + 4, [b + 5, b + 6, b + 7]),
            rabbitmq=RabbitCluster.at(
                state / "rabbitmq", [(b + 8, b + 9), (b + 10, b + 11), (b + 12, b + 13)], b + 14, f"chat{b}"
            ),
        )

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)  # the postgres and rabbitmq users must reach their folders
        _in_parallel([self.postgres.start, self.redis.start, self.rabbitmq.start])

    def env(self, database: str = "chat", vhost: str = "/") -> dict[str, str]:
        """The services' settings for every engine, as lists of hosts (docs/protocol.md section 4)."""
        return {
            "CHAT_DATABASE_URL": self.postgres.dsn(database),
            "CHAT_DATABASE_READ_URL": self.postgres.read_dsn(database),
            "CHAT_AMQP_URL": ",".join(self.rabbitmq.urls(vhost)),
            "CHAT_REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in self.redis.addresses),
            "CHAT_REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
        }

    def describe(self) -> str:
        env = self.env()
        return (
            f"  Postgres {env['CHAT_DATABASE_URL']} (primary first; reads {env['CHAT_DATABASE_READ_URL']})\n"
            f"  RabbitMQ {env['CHAT_AMQP_URL']}\n"
            f"  Redis    Sentinels {env['CHAT_REDIS_SENTINELS']}, master {SENTINEL_MASTER!r}\n"
        )

    def cpu_roots(self) -> dict[str, list[int]]:
        """Each engine's root processes, every node of it (their descendants count with them)."""
        redis = [s.proc.pid for s in [*self.redis.servers(), *self.redis.sentinels] if s.proc is not None]
        return {
            "rabbitmq": [n.proc.pid for n in self.rabbitmq.nodes if n.proc is not None],
            "redis": redis,
            "postgres": [self.postgres.primary.postmaster_pid(), self.postgres.standby.postmaster_pid()],
        }

    def stop(self) -> None:
        for part in (self.rabbitmq, self.redis, self.postgres):
            try:
                part.stop()
            except Exception as exc:
                print(f"devstack: stopping {part.__class__.__name__} failed: {exc}")


def _in_parallel(starts: list[Callable[[], None]]) -> None:
    """Run the callables at once (each server's start waits on its own process); raise the first failure."""
    failures: list[BaseException] = []

    def run(start: Callable[[], None]) -> None:
        try:
            start()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
