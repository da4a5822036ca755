"""Start the whole thing as child processes: Prefect server + UI, the deployment runner, the web
app. Used by `aftercare up` (make up) and by the benchmark, so both run what a shop runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aftercare.settings import PROJECT_ROOT


@dataclass
class StackConfig:
    var_dir: Path
    prefect_port: int = 4200
    web_port: int = 8000
    host: str = "127.0.0.1"
    sweep_seconds: int = 30
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.web_port}"


def stack_env(cfg: StackConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(cfg.var_dir / "prefect"),
        PREFECT_API_URL=cfg.prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_URL=f"http://{cfg.host}:{cfg.prefect_port}",
        # The runner checks for new runs every 10 s by default: that is latency a customer waits.
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        PREFECT_LOGGING_LEVEL=env.get("PREFECT_LOGGING_LEVEL", "INFO"),
        AFTERCARE_VAR_DIR=str(cfg.var_dir),
        AFTERCARE_SWEEP_SECONDS=str(cfg.sweep_seconds),
        AFTERCARE_WEB_BASE_URL=cfg.web_url,
        AFTERCARE_PREFECT_UI_URL=f"http://{cfg.host}:{cfg.prefect_port}",
        PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(cfg.extra_env)
    return env


# Flow runs send a heartbeat every 30 s (Prefect's minimum), so a run whose process was killed is
# marked Crashed ~90 s later by the automations below instead of showing Running for ever.
HEARTBEAT_SECONDS = 30


def zombie_automations() -> list[dict[str, object]]:
    """Prefect's "detect zombie flows" automation (docs.prefect.io/v3/advanced/detect-zombie-flows):
    a run whose heartbeats stop for 90 s without a final state is marked Crashed. And one for a run
    whose worker died between Submitting/Pending and Running (no heartbeat ever): Crashed after 120 s.
    Work is never stuck behind such a run (drain slots die with their process, aftercare/drainers.py);
    this keeps Prefect's view of the runs true for the people reading it."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    runs = ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]})
    final = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    # A run waiting for a person (review-reply, suspended for hours) has no process and sends no
    # heartbeat: it has not died. Its resume starts a new run of heartbeats.
    waiting = {f"prefect.flow-run.{s}" for s in ("Suspended", "Paused")}
    silent = AutomationCore(
        name="aftercare: crash flow runs whose heartbeats stopped",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat"} | final | waiting,
            match=runs,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=3 * HEARTBEAT_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat for 90 s: its process died")
        ],
    )
    never_started = AutomationCore(
        name="aftercare: crash flow runs that never started",
        trigger=EventTrigger(
            after={"prefect.flow-run.Submitting", "prefect.flow-run.Pending"},
            expect={"prefect.flow-run.*"},
            match=runs,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=120),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message="not running 120 s after submission: worker died"
            )
        ],
    )
    return [a.model_dump(mode="json") for a in (silent, never_started)]


def install_zombie_automations(api_url: str) -> None:
    """Create (or replace, by name) the automations of `zombie_automations` on the Prefect server."""
    import json

    def call(method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{api_url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    existing = call("POST", "/automations/filter", {})
    assert isinstance(existing, list)
    for automation in zombie_automations():
        for old in existing:
            if old.get("name") == automation["name"]:
                call("DELETE", f"/automations/{old['id']}")
        call("POST", "/automations/", automation)


def web_app_args(host: str, port: int) -> list[str]:
    """The command that serves aftercare's web app (uvicorn, quiet): one for `aftercare up`, the
    benchmark and the fault suite."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "aftercare.web.app:app_from_env",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


class Stack:
    def __init__(self, cfg: StackConfig, *, log_dir: Path | None = None):
        self.cfg = cfg
        self.env = stack_env(cfg)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        cfg = self.cfg
        bin_dir = Path(sys.executable).parent
        server = self._spawn(
            "prefect-server",
            [
                str(bin_dir / "prefect"),
                "server",
                "start",
                "--host",
                cfg.host,
                "--port",
                str(cfg.prefect_port),
            ],
        )
        wait_http(f"{cfg.prefect_api_url}/health", 120, server)
        install_zombie_automations(cfg.prefect_api_url)
        runner = self._spawn("runner", [sys.executable, "-m", "flows.serve"])
        web = self._spawn("web", web_app_args(cfg.host, cfg.web_port))
        wait_http(f"{cfg.web_url}/healthz", 60, web)
        self._wait_deployment(runner)

    def _wait_deployment(self, runner: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
        url = f"{self.cfg.prefect_api_url}/deployments/name/process-inbox/process-inbox"
        wait_http(url, timeout_s, runner)

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
