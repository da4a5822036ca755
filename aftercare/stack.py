"""Start the whole thing as child processes: Prefect server + UI, the deployment runner, the web
app. Used by `aftercare up` (make up) and by the benchmark, so both run what a shop runs.

The Prefect UI and API can resume a review run, so whoever reaches them can publish a reply in the
shop's name. On loopback (`make up`) nobody else can; anywhere else the server runs with Prefect's
basic auth (`PREFECT_SERVER_API_AUTH_STRING`), and every client we start sends the same string
(`PREFECT_API_AUTH_STRING`). `prefect_auth` refuses the configurations that would break this."""

from __future__ import annotations

import base64
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aftercare.errors import ConfigError
from aftercare.settings import LOCAL_DEV_SECRET, PROJECT_ROOT, Settings

# A password shorter than this, or one of these, is guessed before anyone notices: refused.
MIN_AUTH_PASSWORD = 16
_WEAK_PASSWORDS = {
    "admin", "pass", "passw0rd", "password", "secret", "changeme", "changethis", "prefect", "test",
    "user", "root", "letmein", "qwerty", "123456", "12345678", LOCAL_DEV_SECRET,
}  # fmt: skip
_PLACEHOLDER_WORDS = ("changeme", "changethis", "change-me", "change_me", "example", "placeholder")


class UnsafePrefectExposure(ConfigError):
    """`aftercare up` would serve the Prefect API and UI to others without a login (or with one
    anybody can guess). Nothing is started."""


@dataclass
class StackConfig:
    var_dir: Path
    prefect_port: int = 4200
    web_port: int = 8000
    # The web app's address, and the Prefect server's unless `prefect_host` says otherwise.
    host: str = "127.0.0.1"
    sweep_seconds: int = 300
    # send-timed-messages' safety schedule (it schedules its own runs at each next send time).
    timed_contact_seconds: int = 3600
    extra_env: dict[str, str] = field(default_factory=dict)
    # Where the Prefect server listens (AFTERCARE_PREFECT_HOST); beyond loopback it needs the auth string.
    prefect_host: str | None = None
    # Prefect's basic auth, "user:password": the server checks it, our processes send it.
    prefect_auth_string: str | None = None
    # The Prefect UI as people reach it (AFTERCARE_PREFECT_UI_URL: a reverse proxy, say); links in
    # approvers' mails point there. Unset: the server's own address.
    prefect_ui_url: str | None = None

    @property
    def prefect_bind_host(self) -> str:
        return self.host if self.prefect_host is None else self.prefect_host

    @property
    def prefect_client_host(self) -> str:
        """The address our own processes reach the server at: a wildcard is reached on loopback."""
        host = self.prefect_bind_host.strip("[]")
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.prefect_client_host}:{self.prefect_port}/api"

    @property
    def prefect_ui(self) -> str:
        return (self.prefect_ui_url or f"http://{self.prefect_client_host}:{self.prefect_port}").rstrip("/")

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.web_port}"


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only: `localhost` or a
    loopback address (127.0.0.0/8, ::1). Wildcards, LAN addresses and any other name are not (a
    hostname may resolve anywhere, and does on the next DNS change)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def auth_string_problem(auth_string: str) -> str | None:
    """Why an auth string cannot lock the Prefect server, or None when it can. Prefect compares the
    whole `user:password` string (the UI asks for it as one); the password part must be long,
    not a placeholder and not the user name again."""
    if not auth_string:
        return "it is empty"
    if auth_string != auth_string.strip() or any(ord(c) < 32 or ord(c) == 127 for c in auth_string):
        return "it has spaces or control characters around or inside it (a copy-paste slip?)"
    user, colon, password = auth_string.partition(":")
    if not colon or not user or not password:
        return "it is not of the form user:password"
    low = password.lower()
    unfilled = password.startswith("<") and password.endswith(">")  # "<a long random password>"
    if low in _WEAK_PASSWORDS or low == user.lower() or unfilled or any(w in low for w in _PLACEHOLDER_WORDS):
        return "its password is a well-known placeholder"
    if len(password) < MIN_AUTH_PASSWORD:
        return f"its password is shorter than {MIN_AUTH_PASSWORD} characters"
    if len(set(password)) < 8:
        return "its password repeats a few characters"
    return None


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


def prefect_exposure(settings: Settings, prefect_host: str | None = None) -> list[str]:
    """What makes the Prefect server reachable from beyond this machine, each as the setting that
    says so. Empty: `make up` on a laptop, where no login is needed."""
    host = settings.prefect_host if prefect_host is None else prefect_host
    why = []
    if not is_loopback(host):
        why.append(f"AFTERCARE_PREFECT_HOST={host or '(empty)'} is reachable beyond loopback")
    if settings.environment == "production":
        why.append("AFTERCARE_ENVIRONMENT=production (a reverse proxy may publish a loopback server)")
    if "prefect_ui_url" in settings.model_fields_set and not is_loopback(_host_of(settings.prefect_ui_url)):
        why.append(f"AFTERCARE_PREFECT_UI_URL={settings.prefect_ui_url} sends approvers to it from elsewhere")
    return why


def prefect_auth(settings: Settings, prefect_host: str | None = None) -> str | None:
    """The auth string `aftercare up` starts the Prefect server with and gives every process it
    starts; None on loopback without one. Raise `UnsafePrefectExposure` when the server would be
    reachable beyond loopback without a login, or with a guessable one, or when the server's and
    the clients' strings differ (every call of ours would be refused)."""
    server = settings.prefect_server_api_auth_string
    client = settings.prefect_api_auth_string
    server_value = server.get_secret_value() if server is not None else None
    client_value = client.get_secret_value() if client is not None else None
    if server_value and client_value and server_value != client_value:
        raise UnsafePrefectExposure(
            "PREFECT_SERVER_API_AUTH_STRING and PREFECT_API_AUTH_STRING differ: the Prefect server would "
            "refuse every process aftercare starts (give both the same user:password). Nothing was started."
        )
    auth = server_value or client_value or None
    why = prefect_exposure(settings, prefect_host)
    if auth is None and why:
        raise UnsafePrefectExposure(
            f"refusing to start the Prefect server without a login: {'; '.join(why)}. Whoever reaches "
            "its API or UI can resume a review run and publish a reply. Set "
            "PREFECT_SERVER_API_AUTH_STRING=<user>:<a long random password> (the same value as "
            "PREFECT_API_AUTH_STRING on workers elsewhere), or keep AFTERCARE_PREFECT_HOST=127.0.0.1; "
            "see docs/production.md. Nothing was started."
        )
    if auth is not None and (problem := auth_string_problem(auth)):
        variable = "PREFECT_SERVER_API_AUTH_STRING" if server_value else "PREFECT_API_AUTH_STRING"
        raise UnsafePrefectExposure(
            f"{variable} cannot lock the Prefect server: {problem}. Use <user>:<a random password of at "
            f"least {MIN_AUTH_PASSWORD} characters> (e.g. ops:$(openssl rand -hex 24)). Nothing was started."
        )
    return auth


def basic_auth_headers(auth_string: str | None) -> dict[str, str]:
    """The header Prefect's clients send for `auth_string` (none without one)."""
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode("utf-8")).decode("ascii")}


def stack_env(cfg: StackConfig) -> dict[str, str]:
    """The environment of every process the stack starts except the server's own secret: the
    server's auth string goes to the server alone (`server_env`); the clients get theirs."""
    env = dict(os.environ)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if cfg.prefect_auth_string:
        env["PREFECT_API_AUTH_STRING"] = cfg.prefect_auth_string
    env.update(
        PREFECT_HOME=str(cfg.var_dir / "prefect"),
        PREFECT_API_URL=cfg.prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_URL=cfg.prefect_ui,
        # The runner checks for new runs every 10 s by default: that is latency a customer waits.
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        PREFECT_LOGGING_LEVEL=env.get("PREFECT_LOGGING_LEVEL", "INFO"),
        AFTERCARE_VAR_DIR=str(cfg.var_dir),
        AFTERCARE_SWEEP_SECONDS=str(cfg.sweep_seconds),
        AFTERCARE_TIMED_CONTACT_SECONDS=str(cfg.timed_contact_seconds),
        AFTERCARE_WEB_BASE_URL=cfg.web_url,
        AFTERCARE_PREFECT_UI_URL=cfg.prefect_ui,
        PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(cfg.extra_env)
    return env


def server_env(cfg: StackConfig, env: dict[str, str]) -> dict[str, str]:
    """The Prefect server's environment: the clients' plus the auth string it checks, and (when the
    UI has an address of its own, behind a reverse proxy) the API address the browser must use."""
    out = dict(env)
    if cfg.prefect_auth_string:
        out["PREFECT_SERVER_API_AUTH_STRING"] = cfg.prefect_auth_string
    if cfg.prefect_ui_url and "PREFECT_UI_API_URL" not in os.environ:
        out["PREFECT_UI_API_URL"] = f"{cfg.prefect_ui}/api"
    return out


def prefect_server_args(cfg: StackConfig) -> list[str]:
    """The command that serves the Prefect API and UI at `cfg.prefect_bind_host`."""
    prefect = str(Path(sys.executable).parent / "prefect")
    host = cfg.prefect_bind_host.strip("[]")
    return [prefect, "server", "start", "--host", host, "--port", str(cfg.prefect_port)]


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


def install_zombie_automations(api_url: str, auth_string: str | None = None) -> None:
    """Create (or replace, by name) the automations of `zombie_automations` on the Prefect server
    (sending `auth_string` the way Prefect's clients do, when the server has one)."""
    import json

    headers = {"Content-Type": "application/json", **basic_auth_headers(auth_string)}

    def call(method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{api_url}{path}", data=data, method=method, headers=headers)
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


def wait_http(
    url: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Wait until `url` answers a GET with a status below 400 (urllib raises on the others)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers or {}), timeout=2
            ) as resp:
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

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            env=self.env if env is None else env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        cfg = self.cfg
        server = self._spawn("prefect-server", prefect_server_args(cfg), server_env(cfg, self.env))
        wait_http(f"{cfg.prefect_api_url}/health", 120, server)  # Prefect leaves its health probe open
        install_zombie_automations(cfg.prefect_api_url, cfg.prefect_auth_string)
        runner = self._spawn("runner", [sys.executable, "-m", "flows.serve"])
        web = self._spawn("web", web_app_args(cfg.host, cfg.web_port))
        wait_http(f"{cfg.web_url}/healthz", 60, web)
        self._wait_deployment(runner)

    def _wait_deployment(self, runner: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
        for name in ("process-inbox/process-inbox", "send-timed-messages/send-timed-messages"):
            url = f"{self.cfg.prefect_api_url}/deployments/name/{name}"
            wait_http(url, timeout_s, runner, basic_auth_headers(self.cfg.prefect_auth_string))

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
