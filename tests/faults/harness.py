"""The fault suite (issue 8): the real stack against loopback fakes and a generated workload, with
faults injected one at a time and then all together, then checked from the database, the fakes' own
records and the 3PL's acceptance log. Prints one table per run; `ok` is False when any check fails.

Topologies: on SQLite the embedded one (aftercare.stack.Stack: Prefect server, `python -m
flows.serve`, the web app); on PostgreSQL the production one: a cluster of the suite's own (Debian's
pg_createcluster, never the machine's shared server), Prefect's database on it, prefect.yaml deployed
to a process work pool and two workers pulling from it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.spine.db import make_engine, migrate
from aftercare.stack import (
    Stack,
    StackConfig,
    install_zombie_automations,
    stack_env,
    wait_http,
    web_app_args,
)
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.warehouse import FakeThreePL
from tests.faults import workload as wl
from tests.shared_dir import find_shared

HOST = "127.0.0.1"
API_KEY = "SG.fake-test-key"
SCHEMA = (find_shared() or PROJECT_ROOT.parent / "shared") / "contracts" / "sendgrid" / "tsg_mail_v3.json"
PG_VERSION = os.environ.get("AFTERCARE_FAULTS_PG_VERSION", "15")
PG_CLUSTER = "aftercare_faults"


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Config:
    db: str = "sqlite"  # "sqlite" or "postgres"
    orders: int = 300
    copies: int = 3
    fault_seconds: float = 300.0  # the whole fault window; segments are fractions of it
    kill_interval: tuple[float, float] = (5.0, 10.0)
    provider_retry_after: float = 5.0
    pg_restart: bool = True
    drain_seconds: float = 240.0
    # Then, how long every negative review gets to reach an approver (a draft, waiting for a
    # decision): a run killed with its process is crashed by the heartbeat automation (90 s) or the
    # never-started check (120 s) and restarted by the next minute's review sweep.
    review_settle_seconds: float = 300.0
    fuzz_examples: int = 10_000
    seed: int = 8
    # Deliberately broken runs, to prove the checks can fail: "unsigned" posts one delivery with a
    # bad signature but counts it as acknowledged; "no-drain" checks before the system has drained.
    break_mode: str | None = None
    keep_dir: bool = False
    # Prefect's deployment-concurrency lease (PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION):
    # None runs Prefect's default (300 s), what a shop gets; a number runs the stack with that
    # lease instead, to see past the stall a SIGKILLed flow run causes (reported in the table).
    prefect_lease_s: float | None = None

    @classmethod
    def short(cls, **kw: Any) -> Config:
        """`make test`: SQLite, ~36 orders, 3x shuffled, 3+ kills, short provider and 3PL outages."""
        base: dict[str, Any] = {
            "db": "sqlite",
            "orders": 36,
            "fault_seconds": 70.0,
            "kill_interval": (3.0, 6.0),
            "provider_retry_after": 2.0,
            "pg_restart": False,
            "drain_seconds": 120.0,
            "review_settle_seconds": 240.0,
            "fuzz_examples": 200,
        }
        base.update(kw)
        return cls(**base)


# --- the table -------------------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    figure: Any
    expected: str
    ok: bool | None  # None: a figure, not a pass/fail check
    detail: list[str] = field(default_factory=list)


@dataclass
class Report:
    config: Config
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, check: str, figure: Any, expected: str, ok: bool | None, detail: list[str] | None = None):
        self.rows.append(Row(check, figure, expected, ok, list(detail or [])))

    @property
    def ok(self) -> bool:
        return all(r.ok is not False for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def table(self) -> str:
        c = self.config
        head = (
            f"fault suite on {c.db}: {c.orders} orders, every delivery x{c.copies} shuffled, "
            f"fault window {c.fault_seconds:.0f} s, seed {c.seed}"
            + (f", BROKEN ON PURPOSE ({c.break_mode})" if c.break_mode else "")
            + (f", Prefect deployment lease {c.prefect_lease_s:g} s" if c.prefect_lease_s else "")
        )
        w1 = max(len(r.check) for r in self.rows)
        w2 = min(24, max(len(str(r.figure)) for r in self.rows))
        w3 = max(len(r.expected) for r in self.rows)
        lines = [head, "-" * (w1 + w2 + w3 + 14)]
        for r in self.rows:
            mark = "" if r.ok is None else ("ok" if r.ok else "FAIL")
            lines.append(f"{r.check:<{w1}}  {r.figure!s:>{w2}}  {r.expected:<{w3}}  {mark}")
        lines.append("-" * (w1 + w2 + w3 + 14))
        lines.append("RESULT: " + ("PASS" if self.ok else f"FAIL ({len(self.failures)} checks)"))
        for r in self.failures:
            for d in r.detail[:8]:
                lines.append(f"  {r.check.strip()}: {d}")
            if len(r.detail) > 8:
                lines.append(f"  {r.check.strip()}: ... {len(r.detail) - 8} more")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- processes -------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def kill_tree(pid: int) -> int:
    """SIGKILL a process, its process group and every descendant (flow-run subprocesses included);
    returns how many processes were signalled."""
    kids = _children()
    victims, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in victims:
            continue
        victims.add(p)
        todo.extend(kids.get(p, []))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    for p in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return len(victims)


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    out = open(log_dir / f"{name}.log", "ab")
    return subprocess.Popen(
        args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(timeout=5)


# --- topologies ------------------------------------------------------------------------------------


class Topology:
    """Where the flows run, and how to kill and restart them."""

    db_url: str
    web_url: str
    flow_processes: list[str]

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self, name: str) -> int: ...

    def restart(self, name: str) -> None: ...

    def restart_database(self) -> None:
        raise NotImplementedError


def harness_env(
    db_url: str, sg_url: str, three_pl: FakeThreePL, secrets: dict[str, str], prefect_lease_s: float | None
) -> dict[str, str]:
    """Short timeouts, short leases: a worker killed mid-claim is taken over within the run."""
    lease = (
        {}
        if prefect_lease_s is None
        else {"PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION": f"{prefect_lease_s:g}"}
    )
    return lease | {
        "AFTERCARE_DATABASE_URL": db_url,
        "AFTERCARE_SHOPIFY_WEBHOOK_SECRET": secrets["shopify"],
        "AFTERCARE_SHOPIFY_SHOPS": wl.SHOP,
        "AFTERCARE_REVIEWS_WEBHOOK_SECRET": secrets["reviews"],
        "AFTERCARE_APPROVAL_SECRET": secrets["reviews"] + "-approval",
        "AFTERCARE_LINK_SECRET": secrets["reviews"] + "-link",
        "AFTERCARE_EMAIL_BACKEND": "sendgrid",
        "AFTERCARE_SENDGRID_API_KEY": API_KEY,
        "AFTERCARE_SENDGRID_BASE_URL": sg_url,
        "AFTERCARE_SENDGRID_TIMEOUT_S": "3",
        "AFTERCARE_WAREHOUSE_BACKEND": "http",
        "AFTERCARE_WAREHOUSE_URL": three_pl.url,
        "AFTERCARE_WAREHOUSE_SECRET": three_pl.secret,
        "AFTERCARE_WAREHOUSE_TIMEOUT_S": "3",
        "AFTERCARE_SEND_LEASE_S": "45",
        "AFTERCARE_INBOX_LEASE_S": "20",
        # A delivery that failed (the database restarting) is tried again within the run.
        "AFTERCARE_INBOX_RETRY_BASE_S": "2",
        "AFTERCARE_INBOX_RETRY_CAP_S": "15",
        "AFTERCARE_HANDOFF_LEASE_S": "45",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


class Embedded(Topology):
    """SQLite: what `aftercare up` runs (aftercare.stack.Stack)."""

    # What `aftercare up` runs, but with a 5 s sweep instead of the 5-minute safety sweep: the suite
    # kills the runner every few seconds, faster than on-demand waking (patrol every 5 s, a dead run
    # crashed after 20 s) starts a new run, so without a run always queued nothing would be mid-claim
    # when the next kill lands (tried: 0 kills mid-claim in the short suite).
    def __init__(self, workdir: Path, env: dict[str, str], sweep_seconds: int = 5):
        self.cfg = StackConfig(
            var_dir=workdir,
            prefect_port=free_port(),
            web_port=free_port(),
            sweep_seconds=sweep_seconds,
            extra_env=env,
        )
        self.stack = Stack(self.cfg, log_dir=workdir / "logs")
        self.db_url = env["AFTERCARE_DATABASE_URL"]
        self.web_url = self.cfg.web_url
        self.flow_processes = ["runner"]

    def start(self) -> None:
        self.stack.start()

    def stop(self) -> None:
        self.stack.stop()

    def kill(self, name: str) -> int:
        return kill_tree(self.stack.procs[name].pid)

    def restart(self, name: str) -> None:
        self.stack.procs[name].wait(timeout=10)
        self.stack._spawn(name, [sys.executable, "-m", "flows.serve"])


class PoolTopology(Topology):
    """PostgreSQL, production: a cluster of the suite's own, Prefect's database on it, prefect.yaml
    deployed to a process work pool, two workers pulling from it at once."""

    def __init__(self, workdir: Path, env_for: Callable[[str], dict[str, str]]):
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pg_port = free_port()
        self.admin_url = f"postgresql://postgres@{HOST}:{self.pg_port}/postgres"
        self.db_url = f"postgresql://postgres@{HOST}:{self.pg_port}/aftercare"
        self.cfg = StackConfig(var_dir=workdir, prefect_port=free_port(), web_port=free_port())
        self.web_url = self.cfg.web_url
        self.env_for = env_for
        self.env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.flow_processes = ["worker-1", "worker-2"]
        self.cluster = False

    def _pg(self, *args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        import psycopg

        with contextlib.suppress(subprocess.CalledProcessError):  # a cluster left by a killed run
            self._pg("pg_dropcluster", "--stop", PG_VERSION, PG_CLUSTER)
        self._pg("pg_createcluster", PG_VERSION, PG_CLUSTER, "-p", str(self.pg_port), "--", "--auth=trust")
        self.cluster = True
        self._pg("pg_ctlcluster", PG_VERSION, PG_CLUSTER, "start")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE aftercare")
            conn.execute("CREATE DATABASE prefect")
        migrate(Settings(database_url=self.db_url))
        self.env = stack_env(self.cfg)
        self.env.update(self.env_for(self.db_url))
        self.env.update(
            PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://postgres@{HOST}:{self.pg_port}/prefect",
            AFTERCARE_HOME=str(PROJECT_ROOT),
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="2",
        )
        bin_dir = Path(sys.executable).parent
        prefect = str(bin_dir / "prefect")
        self.procs["prefect-server"] = _spawn(
            "prefect-server",
            [prefect, "server", "start", "--host", HOST, "--port", str(self.cfg.prefect_port)],
            self.env,
            self.log_dir,
        )
        wait_http(f"{self.cfg.prefect_api_url}/health", 180, self.procs["prefect-server"])
        install_zombie_automations(self.cfg.prefect_api_url)  # what `aftercare prefect-setup` does
        for args in (
            [prefect, "work-pool", "create", "aftercare", "--type", "process"],
            [prefect, "--no-prompt", "deploy", "--all"],
        ):
            done = subprocess.run(args, env=self.env, cwd=PROJECT_ROOT, capture_output=True, timeout=300)
            (self.log_dir / "deploy.log").open("ab").write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args[1:])} failed: {(done.stdout + done.stderr)[-2000:]!r}")
        for name in self.flow_processes:
            self.restart(name)
        self.procs["web"] = _spawn("web", web_app_args(HOST, self.cfg.web_port), self.env, self.log_dir)
        wait_http(f"{self.web_url}/healthz", 60, self.procs["web"])

    def restart(self, name: str) -> None:
        old = self.procs.get(name)
        if old is not None:
            old.wait(timeout=10)
        prefect = str(Path(sys.executable).parent / "prefect")
        self.procs[name] = _spawn(
            name, [prefect, "worker", "start", "--pool", "aftercare", "--name", name], self.env, self.log_dir
        )

    def kill(self, name: str) -> int:
        return kill_tree(self.procs[name].pid)

    def restart_database(self) -> None:
        self._pg("pg_ctlcluster", PG_VERSION, PG_CLUSTER, "restart")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            _stop(proc)
        if self.cluster:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg("pg_dropcluster", "--stop", PG_VERSION, PG_CLUSTER)


# --- injecting faults ------------------------------------------------------------------------------


@dataclass
class Faults:
    kills: int = 0
    kills_while_claimed: int = 0
    restarts: int = 0
    processes_killed: int = 0
    db_restarts: int = 0
    provider: Counter[str] = field(default_factory=Counter)  # fault mode -> seconds


class Killer:
    """SIGKILLs the processes running flows at random moments (sooner when rows are claimed, so kills
    land mid-claim), restarts them a moment later."""

    def __init__(self, topo: Topology, faults: Faults, rng: random.Random, interval: tuple[float, float]):
        self.topo, self.faults, self.rng, self.interval = topo, faults, rng, interval
        self.active = threading.Event()
        self.done = threading.Event()
        self.engine = make_engine(Settings(database_url=topo.db_url))
        self.thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def _claimed(self) -> int:
        sql = (
            "SELECT (SELECT count(*) FROM inbox WHERE status = 'processing')"
            " + (SELECT count(*) FROM outbox WHERE status = 'sending')"
            " + (SELECT count(*) FROM warehouse_handoffs WHERE status = 'sending')"
        )
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.text(sql)).scalar_one())
        except sa.exc.SQLAlchemyError:
            return 0

    def _run(self) -> None:
        next_at = time.monotonic() + self.rng.uniform(*self.interval)
        while not self.done.is_set():
            time.sleep(0.25)
            if not self.active.is_set():
                continue
            now = time.monotonic()
            if now < next_at - (self.interval[1] - self.interval[0]):
                continue
            claimed = self._claimed()
            if now < next_at and not claimed:
                continue
            name = self.rng.choice(self.topo.flow_processes)
            self.faults.processes_killed += self.topo.kill(name)
            self.faults.kills += 1
            self.faults.kills_while_claimed += bool(claimed)
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.topo.restart(name)
            self.faults.restarts += 1
            next_at = time.monotonic() + self.rng.uniform(*self.interval)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        self.engine.dispose()


# --- posting ---------------------------------------------------------------------------------------


@dataclass
class Posted:
    acked: set[int] = field(default_factory=set)  # indexes of logical deliveries with a 2xx answer
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def post_all(
    web_url: str,
    deliveries: list[tuple[int, wl.Delivery]],
    copies: int,
    seconds: float,
    secrets: dict[str, str],
    rng: random.Random,
    posted: Posted,
    unsigned: int | None = None,
) -> None:
    """Post every delivery `copies` times, shuffled, spread over `seconds`; 8 at a time."""
    host, port = web_url.removeprefix("http://").split(":")
    sends = [(i, d) for i, d in deliveries for _ in range(copies)]
    rng.shuffle(sends)
    lock = threading.Lock()
    started = time.monotonic()
    gap = seconds / max(1, len(sends))

    def one(k: int) -> None:
        i, d = sends[k]
        delay = started + k * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = "/webhooks/reviews" if d.endpoint == "reviews" else "/webhooks/shopify"
        headers = d.headers(secrets["shopify"], secrets["reviews"], sign=i != unsigned)
        status = 0
        for _attempt in range(3):  # a refused connection is retried like Shopify would
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=15)
                conn.request("POST", path, body=d.body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                status = resp.status
                break
            except OSError as exc:
                with lock:
                    posted.errors.append(f"{d.topic} {d.order_name}: {exc}")
                time.sleep(1)
        with lock:
            posted.statuses[status] += 1
            if 200 <= status < 300 or i == unsigned:
                posted.acked.add(i)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(len(sends))))


# --- the run ---------------------------------------------------------------------------------------


def _scalar(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one() or 0)


UNSETTLED = {
    "inbox": "SELECT count(*) FROM inbox WHERE status IN ('pending', 'processing')"
    " OR (status = 'failed' AND attempts < 5)",
    "outbox": "SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')",
    "hand-offs": "SELECT count(*) FROM warehouse_handoffs WHERE status IN ('pending', 'sending')",
}


def drain(engine: sa.Engine, deadline_s: float) -> tuple[bool, float, dict[str, int]]:
    """Wait until inbox, outbox and hand-offs are settled twice in a row 3 s apart, or the deadline."""
    started = time.monotonic()
    calm = 0
    left: dict[str, int] = {}
    while time.monotonic() - started < deadline_s:
        try:
            left = {k: _scalar(engine, sql) for k, sql in UNSETTLED.items()}
        except sa.exc.SQLAlchemyError:
            left = {"database": -1}
        calm = calm + 1 if not any(left.values()) else 0
        if calm >= 2:
            return True, time.monotonic() - started, left
        time.sleep(3)
    return False, time.monotonic() - started, left


# Reviews that need a reply (triaged negative) and have not reached an approver yet: no draft, or
# still new/drafting. An approval run killed with its process leaves its review here until a fresh
# run takes over (tasks/review_sweep.restart_dead_runs).
REVIEWS_SHORT_OF_AN_APPROVER = (
    "SELECT r.platform_review_id, r.status, r.flow_run_id,"
    " (SELECT count(*) FROM review_drafts d WHERE d.review_id = r.id)"
    " FROM reviews r WHERE r.triage_negative"
    " AND (r.status IN ('new', 'drafting')"
    " OR NOT EXISTS (SELECT 1 FROM review_drafts d WHERE d.review_id = r.id))"
)


def settle_reviews(engine: sa.Engine, deadline_s: float) -> tuple[float, list[Any]]:
    """Wait until every negative review has reached an approver, or the deadline; returns the wait
    and the reviews still short of one."""
    started = time.monotonic()
    left: list[Any] = []
    while time.monotonic() - started < deadline_s:
        try:
            left = _rows(engine, REVIEWS_SHORT_OF_AN_APPROVER)
        except sa.exc.SQLAlchemyError:
            left = [("database", "unreachable", None, 0)]
        if not left:
            break
        time.sleep(3)
    return time.monotonic() - started, left


def run(cfg: Config) -> Report:
    """One full fault-suite run on cfg.db; returns its report (print `report.table()`)."""
    if not SCHEMA.exists():
        raise RuntimeError(f"the fake SendGrid validates against {SCHEMA}; it is not here")
    rng = random.Random(cfg.seed)
    tag = "Q" if cfg.db == "sqlite" else "P"
    work = wl.generate(cfg.orders, cfg.seed, tag)
    secrets = {
        "shopify": f"faults-shopify-{rng.getrandbits(64):x}",
        "reviews": f"faults-rev-{rng.getrandbits(64):x}",
    }
    report = Report(cfg)
    faults = Faults()
    posted = Posted()
    workdir = Path(tempfile.mkdtemp(prefix=f"aftercare-faults-{cfg.db}-"))
    say(
        f"== fault suite on {cfg.db}: {cfg.orders} orders, {len(work.deliveries)} deliveries; "
        f"logs in {workdir}"
    )
    # Real providers take a while to answer; so do these, so that rows stay claimed long enough for
    # kills to land mid-claim and for the provider's fault windows to meet sends.
    sendgrid = FakeSendGrid(SCHEMA, api_key=API_KEY, record=False, latency_s=0.15)
    three_pl = FakeThreePL(secret=f"faults-3pl-{rng.getrandbits(64):x}", latency_s=0.3)
    topo: Topology | None = None
    killer: Killer | None = None
    with sendgrid, three_pl:
        try:
            if cfg.db == "sqlite":
                url = f"sqlite:///{workdir / 'aftercare.db'}"
                migrate(Settings(database_url=url))
                topo = Embedded(
                    workdir, harness_env(url, sendgrid.url, three_pl, secrets, cfg.prefect_lease_s)
                )
            else:
                topo = PoolTopology(
                    workdir, lambda u: harness_env(u, sendgrid.url, three_pl, secrets, cfg.prefect_lease_s)
                )
            t_start = time.monotonic()
            topo.start()
            say(f"  stack up in {time.monotonic() - t_start:.0f} s")
            killer = Killer(topo, faults, rng, cfg.kill_interval)
            killer.thread.start()
            _inject(cfg, topo, killer, sendgrid, three_pl, work, secrets, rng, posted, faults, report)
            killer.stop()
            engine = make_engine(Settings(database_url=topo.db_url))
            if cfg.break_mode == "no-drain":
                drained, took, left = False, 0.0, {}
            else:
                say(f"  faults stopped; draining (up to {cfg.drain_seconds:.0f} s)")
                drained, took, left = drain(engine, cfg.drain_seconds)
            say(f"  drained: {drained} in {took:.0f} s; unsettled {left}")
            report.add(
                "drained after the faults (s)",
                f"{took:.0f}",
                f"settled within {cfg.drain_seconds:.0f} s",
                drained or cfg.break_mode == "no-drain",
                [f"still unsettled: {left}"],
            )
            if cfg.break_mode != "no-drain":
                took, short = settle_reviews(engine, cfg.review_settle_seconds)
                negative = _scalar(engine, "SELECT count(*) FROM reviews WHERE triage_negative")
                report.add(
                    "negative reviews at an approver (a draft, waiting or decided)",
                    negative - len(short),
                    f"= {negative}, within {cfg.review_settle_seconds:.0f} s (took {took:.0f} s)",
                    not short,
                    [f"{ref} {status} run {run_id} drafts {n}" for ref, status, run_id, n in short],
                )
                # A review reaches its approver a moment before the approval request it owes is sent:
                # let that mail go (the same wait as above) before checking that nothing stays claimed.
                # Seen on a busy machine: 'outbox sending: 1', an approval request sent 0.4 s later.
                drain(engine, cfg.drain_seconds)
            check(report, engine, work, posted, sendgrid, three_pl, faults)
            flow_runs_row(report, topo.cfg.prefect_api_url)
            engine.dispose()
        finally:
            if killer is not None:
                killer.stop()
            if topo is not None:
                topo.stop()
    fuzz_row(report, cfg, workdir)
    if report.ok and not cfg.keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report.notes.append(f"logs and database kept in {workdir}")
    return report


def _inject(
    cfg: Config,
    topo: Topology,
    killer: Killer,
    sendgrid: FakeSendGrid,
    three_pl: FakeThreePL,
    work: wl.Workload,
    secrets: dict[str, str],
    rng: random.Random,
    posted: Posted,
    faults: Faults,
    report: Report,
) -> None:
    """The fault window. One at a time: kills, then the provider (429, 500, hang), then the 3PL down,
    then the database restart (PostgreSQL); then all together. Phase-1 deliveries are posted over
    its first 40 %, phase-2 over 45-90 %."""
    F = cfg.fault_seconds
    indexed = list(enumerate(work.deliveries))
    unsigned = None
    if cfg.break_mode == "unsigned":
        unsigned = next(i for i, d in indexed if d.topic == "orders/create")
    phase1 = [(i, d) for i, d in indexed if d.phase == 1]
    phase2 = [(i, d) for i, d in indexed if d.phase == 2]

    def poster() -> None:
        post_all(topo.web_url, phase1, cfg.copies, 0.4 * F, secrets, rng, posted, unsigned)
        wait = t0 + 0.45 * F - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        post_all(topo.web_url, phase2, cfg.copies, 0.45 * F, secrets, rng, posted, unsigned)

    t0 = time.monotonic()
    posting = threading.Thread(target=poster, name="poster", daemon=True)
    posting.start()

    def until(frac: float) -> None:
        wait = t0 + frac * F - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def answered(mode: str) -> int:
        return int(sendgrid.summary().get(f"fault_{mode}", 0))

    def provider(mode: str, start: float, end: float) -> None:
        """The provider answers `mode` from `start` to `end` of the window, and longer (up to 0.1 of
        the window) while it has answered fewer than 3 requests so: right after the kills, the flow
        processes may still be coming back, and a window that meets no send tests nothing."""
        until(start)
        before = answered(mode)
        sendgrid.set_fault(mode, retry_after=cfg.provider_retry_after, hang_s=30.0)
        until(end)
        overrun = time.monotonic() + 0.1 * F
        while answered(mode) - before < 3 and time.monotonic() < overrun:
            time.sleep(0.5)
        sendgrid.set_fault(None)
        faults.provider[mode] += round((end - start) * F)

    say("  faults: kills alone")
    killer.active.set()
    until(0.2)
    killer.active.clear()
    say("  faults: provider 429 / 500 / hang-after-receiving, alone")
    provider("429", 0.2, 0.27)
    provider("500", 0.27, 0.33)
    provider("hang", 0.33, 0.4)
    say("  faults: 3PL down, alone")
    until(0.4)
    three_pl.go_down()
    until(0.58)
    three_pl.come_up()
    if cfg.pg_restart:
        say("  faults: PostgreSQL restart, alone")
        until(0.6)
        topo.restart_database()
        faults.db_restarts += 1
    say("  faults: all together")
    until(0.65)
    killer.active.set()
    three_pl.go_down()
    sendgrid.set_fault("429", retry_after=cfg.provider_retry_after)
    until(0.75)
    sendgrid.set_fault("hang", hang_s=30.0)
    if cfg.pg_restart:
        topo.restart_database()
        faults.db_restarts += 1
    until(0.82)
    sendgrid.set_fault("500")
    until(0.88)
    sendgrid.set_fault(None)
    faults.provider["429"] += round(0.1 * F)
    faults.provider["hang"] += round(0.07 * F)
    faults.provider["500"] += round(0.06 * F)
    three_pl.come_up()
    until(1.0)
    killer.active.clear()
    posting.join(timeout=F)


# --- checks ----------------------------------------------------------------------------------------


def _rows(engine: sa.Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).all())


def check(
    report: Report,
    engine: sa.Engine,
    work: wl.Workload,
    posted: Posted,
    sendgrid: FakeSendGrid,
    three_pl: FakeThreePL,
    faults: Faults,
) -> None:
    add = report.add
    # Faults injected.
    add(
        "kills (SIGKILL of flow processes)",
        faults.kills,
        ">= 3" if report.config.orders < 100 else ">= 10",
        faults.kills >= (3 if report.config.orders < 100 else 10),
    )
    # The full suite requires a kill to land mid-claim. The short one (`make test`, 70 s of faults,
    # kills 3-6 s apart on the embedded stack) reports it: on a 2-core machine a killed run holds
    # the deployment's slot until the waker crashes it (20 s), so some short runs never get a run
    # going between kills (seen twice on 2026-11-30, every correctness check still passing).
    full = report.config.orders >= 100
    add(
        "  of which while rows were claimed",
        faults.kills_while_claimed,
        ">= 1" if full else "(a figure in the short run)",
        faults.kills_while_claimed >= 1 if full else None,
    )
    add("  processes killed", faults.processes_killed, "", None)
    add("restarts of flow processes", faults.restarts, "= kills", faults.restarts == faults.kills)
    if report.config.pg_restart:
        add("database restarts", faults.db_restarts, ">= 1", faults.db_restarts >= 1)
    stats = sendgrid.summary()
    injected = {k.removeprefix("fault_"): v for k, v in stats.items() if str(k).startswith("fault_")}
    answered = [injected.get(m, 0) for m in ("429", "500", "hang")]
    # In the full run every fault mode must have met real sends (else the windows tested nothing);
    # the short run's windows are seconds long and may fall between two drains.
    full = report.config.fault_seconds >= 200
    add(
        "provider faults answered (429/500/hang)",
        "/".join(map(str, answered)),
        "each >= 1" if full else "",
        all(answered) if full else None,
    )
    add("3PL outage (s)", f"{three_pl.down_seconds:.0f}", "", None)

    # Deliveries: every acknowledged (signed) delivery is in the inbox.
    keys = {(r[0], r[1]) for r in _rows(engine, "SELECT source, delivery_id FROM inbox")}
    lost = [work.deliveries[i] for i in posted.acked if work.deliveries[i].inbox_key not in keys]
    add("logical deliveries posted (x3 each)", len(work.deliveries), "", None)
    add(
        "  acknowledged 2xx",
        len(posted.acked),
        f"= {len(work.deliveries)}",
        len(posted.acked) == len(work.deliveries),
        [
            f"not acknowledged: {d.topic} {d.order_name}"
            for i, d in enumerate(work.deliveries)
            if i not in posted.acked
        ]
        + posted.errors[:5],
    )
    add(
        "  HTTP answers",
        dict(sorted(posted.statuses.items())),
        "2xx (5xx only while the database restarts: not acknowledged, Shopify retries)",
        True
        if all(200 <= s < 300 for s in posted.statuses)
        else (
            None if report.config.pg_restart and all(s < 300 or s >= 500 for s in posted.statuses) else False
        ),
    )
    add(
        "  lost (acknowledged, not in inbox)",
        len(lost),
        "0",
        not lost,
        [f"{d.topic} {d.order_name} {d.inbox_key}" for d in lost],
    )
    bad_inbox = _rows(
        engine,
        "SELECT id, topic, status, reason, subject_ref FROM inbox WHERE status NOT IN ('done', 'ignored')",
    )
    add(
        "inbox rows not done",
        len(bad_inbox),
        "0",
        not bad_inbox,
        [f"inbox {r[0]} {r[1]} {r[4]}: {r[2]} ({(r[3] or '')[:160]})" for r in bad_inbox],
    )

    # Orders in their final state.
    orders = {
        int(r[0]): r
        for r in _rows(engine, "SELECT shopify_id, name, cancelled_at, financial_status, id FROM orders")
    }
    missing, wrong = [], []
    for e in work.expected:
        o = orders.get(e.shopify_id)
        if o is None:
            missing.append(f"{e.name} ({e.intent})")
            continue
        if (o[2] is not None) != e.cancelled or o[3] != e.financial_status:
            wrong.append(
                f"{e.name} ({e.intent}): cancelled={o[2] is not None} financial={o[3]}, "
                f"expected cancelled={e.cancelled} financial={e.financial_status}"
            )
    add("orders expected", len(work.expected), "", None)
    add("  present", len(work.expected) - len(missing), f"= {len(work.expected)}", not missing, missing)
    add(
        "  in the expected final state",
        len(work.expected) - len(missing) - len(wrong),
        f"= {len(work.expected)}",
        not wrong and not missing,
        wrong,
    )
    shipped = {
        int(r[0])
        for r in _rows(engine, "SELECT o.shopify_id FROM shipments s JOIN orders o ON o.id = s.order_id")
    }
    no_ship = [e.name for e in work.expected if e.fulfilled and e.shopify_id not in shipped]
    add(
        "  fulfilled orders with their shipment",
        sum(e.fulfilled for e in work.expected) - len(no_ship),
        f"= {sum(e.fulfilled for e in work.expected)}",
        not no_ship,
        no_ship,
    )
    reviews = {r[0] for r in _rows(engine, "SELECT platform_review_id FROM reviews")}
    want = [e.review[0] for e in work.expected if e.review]
    add(
        "  reviews stored",
        sum(r in reviews for r in want),
        f"= {len(want)}",
        all(r in reviews for r in want),
        [r for r in want if r not in reviews],
    )

    # Messages: exactly one reached the provider, or the row is uncertain; never two.
    accepted = sendgrid.accepted_outbox_ids()
    outbox = _rows(engine, "SELECT id, kind, order_name, status, last_error, touchpoint_id FROM outbox")
    by_id = {int(r[0]): r for r in outbox}
    dupes = {k: n for k, n in accepted.items() if n > 1}
    add("messages accepted by the provider", sum(accepted.values()), "", None)
    add(
        "  duplicates found (same outbox id twice)",
        len(dupes),
        "0",
        not dupes,
        [
            f"outbox {k} ({by_id.get(int(k), ('', '?', '?'))[1]} {by_id.get(int(k), ('', '?', '?'))[2]}) x{n}"
            for k, n in dupes.items()
        ],
    )
    unknown = [k for k in accepted if int(k) not in by_id]
    add("  provider messages without an outbox row", len(unknown), "0", not unknown, unknown)
    sent_not_there = [r for r in outbox if r[3] == "sent" and accepted.get(str(r[0]), 0) == 0]
    add(
        "  rows 'sent' the provider never got",
        len(sent_not_there),
        "0",
        not sent_not_there,
        [f"outbox {r[0]} {r[1]} {r[2]}" for r in sent_not_there],
    )
    uncertain = [r for r in outbox if r[3] == "uncertain"]
    hidden = [r for r in uncertain if f"outbox_id={r[0]}" not in (r[4] or "")]
    add(
        "  uncertain (shown to ops)",
        len(uncertain),
        "each names its outbox id",
        not hidden,
        [f"outbox {r[0]} {r[1]} {r[2]}: {r[4]}" for r in hidden],
    )
    failed = [r for r in outbox if r[3] == "failed"]
    add(
        "  failed (never reached the customer)",
        len(failed),
        "0",
        not failed,
        [f"outbox {r[0]} {r[1]} {r[2]}: {(r[4] or '')[:160]}" for r in failed],
    )
    msgs: dict[tuple[str, str], list[Any]] = {}
    for r in outbox:
        msgs.setdefault((r[2], r[1]), []).append(r)
    lost_msgs, extra = [], []
    for e in work.expected:
        for kind, rule in (
            ("order_confirmation", e.confirmation),
            ("shipment_notice", "one" if e.fulfilled else "none"),
        ):
            rows = msgs.get((e.name, kind), [])
            reached = sum(accepted.get(str(r[0]), 0) for r in rows)
            settled = any(r[3] == "uncertain" for r in rows) or reached == 1
            if rule == "one" and not settled:
                lost_msgs.append(f"{e.name} {kind}: {[(r[0], r[3]) for r in rows]} reached {reached}")
            if reached > 1 or (rule == "none" and reached):
                extra.append(f"{e.name} {kind}: reached the provider {reached} times")
    add("  touchpoints owed a message that got none", len(lost_msgs), "0", not lost_msgs, lost_msgs)
    add("  touchpoints with more than one message", len(extra), "0", not extra, extra)

    # The warehouse: what the 3PL accepted matches each order's final state.
    by_order: dict[int, list[dict[str, Any]]] = {}
    for _key, instruction in list(three_pl.log):
        if isinstance(instruction, dict) and isinstance(instruction.get("order"), dict):
            by_order.setdefault(int(instruction["order"]["id"]), []).append(instruction)
    shipped_wrongly, qty_wrong, not_handed, cancelled_wrongly = [], [], [], []
    for e in work.expected:
        got = by_order.get(e.shopify_id, [])
        ships = [i for i in got if i.get("action", "ship") == "ship"]
        cancelled = any(i.get("action") == "cancel" for i in got)
        holds = bool(ships) and not cancelled
        latest = max(ships, key=lambda i: int(i.get("version", 0))) if ships else None
        if e.must_not_ship and holds:
            shipped_wrongly.append(
                f"{e.name} ({e.intent}): the 3PL holds v{latest and latest.get('version')}"
                " with no cancellation"
            )
        if cancelled and not e.must_not_ship:
            cancelled_wrongly.append(f"{e.name} ({e.intent}) was cancelled at the 3PL")
        if e.must_be_handed_off and not holds:
            not_handed.append(f"{e.name} ({e.intent}): {len(ships)} ship instructions, cancelled={cancelled}")
        if holds and not e.must_not_ship and latest is not None:
            qty = {int(li["line_id"]): int(li["quantity"]) for li in latest.get("lines", [])}
            if qty != e.net_quantities:
                qty_wrong.append(
                    f"{e.name} ({e.intent}) v{latest.get('version')}: {qty}, expected {e.net_quantities}"
                )
    add("warehouse instructions accepted by the 3PL", len(three_pl.log), "", None)
    add(
        "  refunded/cancelled/unpaid orders held to ship",
        len(shipped_wrongly),
        "0",
        not shipped_wrongly,
        shipped_wrongly,
    )
    add("  quantities not net of refunds", len(qty_wrong), "0", not qty_wrong, qty_wrong)
    add("  paid orders the 3PL does not hold", len(not_handed), "0", not not_handed, not_handed)
    add(
        "  orders to ship cancelled at the 3PL",
        len(cancelled_wrongly),
        "0",
        not cancelled_wrongly,
        cancelled_wrongly,
    )
    add("  bad signatures at the 3PL", len(three_pl.bad_signatures), "0", not three_pl.bad_signatures)
    h_failed = _rows(
        engine,
        "SELECT order_name, version, status, last_error FROM warehouse_handoffs WHERE status = 'failed'",
    )
    add(
        "  hand-offs failed",
        len(h_failed),
        "0",
        not h_failed,
        [f"{r[0]} v{r[1]}: {(r[3] or '')[:160]}" for r in h_failed],
    )

    # Nothing stays claimed.
    stuck = {
        "inbox processing": _scalar(engine, "SELECT count(*) FROM inbox WHERE status = 'processing'"),
        "outbox sending": _scalar(engine, "SELECT count(*) FROM outbox WHERE status = 'sending'"),
        "hand-offs sending": _scalar(
            engine, "SELECT count(*) FROM warehouse_handoffs WHERE status = 'sending'"
        ),
        "outbox pending": _scalar(engine, "SELECT count(*) FROM outbox WHERE status = 'pending'"),
        "hand-offs pending": _scalar(
            engine, "SELECT count(*) FROM warehouse_handoffs WHERE status = 'pending'"
        ),
    }
    add(
        "rows left processing/sending/pending",
        sum(stuck.values()),
        "0",
        not any(stuck.values()),
        [f"{k}: {v}" for k, v in stuck.items() if v],
    )
    add(
        "SendGrid contract violations",
        len(sendgrid.violations),
        "0",
        not sendgrid.violations,
        [str(v.errors[:2]) for v in sendgrid.violations],
    )


def flow_runs_row(report: Report, api_url: str) -> None:
    """Flow runs by state after the drain. A run still Running minutes after its start is a zombie (its
    process was killed); while it holds the deployment's concurrency slot, no other run starts."""
    import urllib.request
    from datetime import UTC, datetime

    body = json.dumps({"limit": 200, "sort": "START_TIME_DESC"}).encode()
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
    )
    runs = None
    for _attempt in range(3):  # Prefect's SQLite server can be slow to answer right after a run
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                runs = json.load(resp)
            break
        except OSError as exc:
            error = exc
    if runs is None:
        report.add("flow runs (Prefect API)", "unreadable", "readable", False, [str(error)])
        return
    states = Counter(f"{r['state_name']}" for r in runs)
    now = datetime.now(UTC)
    zombies = [
        r
        for r in runs
        if r["state_type"] in ("RUNNING", "PENDING")
        and (r.get("start_time") or r.get("expected_start_time"))
        and (
            now
            - datetime.fromisoformat((r.get("start_time") or r["expected_start_time"]).replace("Z", "+00:00"))
        ).total_seconds()
        > 120
    ]
    report.add("flow runs by state (last 200)", dict(states), "", None)
    report.add(
        "  runs left Running/Submitting > 2 min (killed, never crashed)",
        len(zombies),
        "0",
        not zombies,
        [
            f"{r['name']} ({r['id']}) {r['state_name']} since "
            + str(r.get("start_time") or r["expected_start_time"])
            for r in zombies
        ]
        + [f"{states.get('AwaitingConcurrencySlot', 0)} runs waiting for the deployment's concurrency slot"],
    )


def fuzz_row(report: Report, cfg: Config, workdir: Path) -> None:
    """The fuzzing bullet is written elsewhere (tests/faults/fuzz.py); connected here when present."""
    try:
        from tests.faults.fuzz import run_fuzz  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        report.add("fuzzed webhook requests (5xx / problems)", "not connected", "tests/faults/fuzz.py", None)
        return
    url = f"sqlite:///{workdir / 'fuzz.db'}"
    migrate(Settings(database_url=url))
    settings = Settings(
        database_url=url,
        var_dir=workdir / "fuzz",
        shopify_webhook_secret="faults-fuzz-shopify-secret",
        reviews_webhook_secret="faults-fuzz-reviews-secret",
        wake_prefect=False,
    )
    result = run_fuzz(settings, cfg.fuzz_examples, cfg.seed)
    report.add(
        f"fuzzed webhook requests: {result.requests}, 5xx / problems",
        f"{result.server_errors}/{result.problem_count}",
        "0/0",
        result.server_errors == 0 and result.problem_count == 0,
        [str(p) for p in result.problems[:8]],
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--short", action="store_true", help="the `make test` configuration")
    parser.add_argument("--orders", type=int)
    parser.add_argument("--seconds", type=float, help="fault window")
    parser.add_argument("--fuzz", type=int, help="fuzzed requests")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--break", dest="break_mode", choices=["unsigned", "no-drain"])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--prefect-lease", type=float, help="Prefect deployment-concurrency lease, s")
    args = parser.parse_args(argv)
    reports = []
    for n, db in enumerate(d.strip() for d in args.db.split(",") if d.strip()):
        kw: dict[str, Any] = {
            "db": db,
            "break_mode": args.break_mode,
            "keep_dir": args.keep,
            "prefect_lease_s": args.prefect_lease,
            # Only PostgreSQL has a server to restart (SQLite is a file in the app's process).
            "pg_restart": db == "postgres",
        }
        if n > 0 and args.fuzz is None:
            # The fuzzer posts to the app with a fresh database of its own: the full 10,000 once
            # per suite, a smaller sample on the later topologies.
            kw["fuzz_examples"] = 1_000
        for name, value in (
            ("orders", args.orders),
            ("fault_seconds", args.seconds),
            ("fuzz_examples", args.fuzz),
            ("seed", args.seed),
        ):
            if value is not None:
                kw[name] = value
        cfg = Config.short(**kw) if args.short else Config(**kw)
        report = run(cfg)
        reports.append(report)
        say("\n" + report.table() + "\n")
    return 0 if all(r.ok for r in reports) else 1
