"""An open-loop HTTP/1.1 load generator on asyncio streams (loopback only).

Requests are scheduled at fixed intervals whatever the server does, and each latency is measured
from the moment the request was *due*, not when a connection became free, so a slow server cannot
hide its queueing (no coordinated omission). Bodies are prepared before the clock starts.

Each result also says how much of the machine's CPU time the hypervisor took while it ran (`steal`
in /proc/stat): on a shared virtual machine a run with a third of the CPU stolen queues for reasons
that are not the code's, and its figures are read with that beside them."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
from dataclasses import dataclass, field


@dataclass
class Result:
    offered_rate: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    due_times: list[float] = field(default_factory=list)  # wall-clock time each request was due
    steal_pct: float | None = None  # share of CPU time the hypervisor took during the run (Linux only)

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k]

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "offered_rps": round(self.offered_rate, 1),
            "achieved_rps": round(self.achieved_rate, 1),
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "p50_ms": round(self.pct(50), 2),
            "p95_ms": round(self.pct(95), 2),
            "p99_ms": round(self.pct(99), 2),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else float("nan"),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else float("nan"),
            "cpu_steal_pct": self.steal_pct,
        }


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs so far, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (fields[7], sum(fields)) if len(fields) == 8 else None


def steal_between(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


class _Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        close = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _run(
    host: str, port: int, requests: list[bytes], rate: float, connections: int, on_due: list[float] | None
) -> Result:
    result = Result(offered_rate=rate, duration_s=0.0)
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(_Conn(host, port))
    interval = 1.0 / rate
    start = time.perf_counter()
    wall_start = time.time()
    tasks = []

    async def one(raw: bytes, due: float) -> None:
        conn = await pool.get()
        try:
            status = await conn.request(raw)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.ok += 1
            else:
                result.errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            conn.close()
            result.errors += 1
        finally:
            pool.put_nowait(conn)
        result.latencies_ms.append((time.perf_counter() - due) * 1000)

    for i, raw in enumerate(requests):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result.sent += 1
        result.due_times.append(wall_start + i * interval)
        tasks.append(asyncio.create_task(one(raw, due)))
    await asyncio.gather(*tasks)
    result.duration_s = len(requests) * interval
    while not pool.empty():
        pool.get_nowait().close()
    return result


def run(host: str, port: int, requests: list[bytes], rate: float, connections: int = 64) -> Result:
    """Send the prepared requests at `rate` per second; return latencies, outcomes and the CPU the
    hypervisor stole meanwhile."""
    before = cpu_times()
    result = asyncio.run(_run(host, port, requests, rate, connections, None))
    result.steal_pct = steal_between(before, cpu_times())
    return result


def wait_warm(host: str, port: int, timeout_s: float = 120.0) -> float:
    """Wait until the web app says its pages' warm-up is done (`/healthz` answers `"warm": true`):
    the figures are of the app running, not of its first seconds, when the survey analysers load in
    a background thread. Returns how long it waited, for the bench to print."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
                if json.loads(resp.read()).get("warm"):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the web app on port {port} did not finish its warm-up within {timeout_s:.0f} s")
