"""The Prefect UI and API are for ops, and locked when they are reachable: a real Prefect server
started the way `aftercare up` starts it, with an auth string, refuses calls without it; every
client of ours (the stack's readiness checks, the automation installer, the web app's waker,
run_deployment, `aftercare prefect-setup`) sends it; and `aftercare up` refuses, before starting
anything, to serve Prefect beyond loopback without one or with a guessable one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from pydantic import SecretStr

from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.stack import (
    StackConfig,
    UnsafePrefectExposure,
    auth_string_problem,
    basic_auth_headers,
    install_zombie_automations,
    is_loopback,
    prefect_auth,
    prefect_server_args,
    server_env,
    stack_env,
    wait_http,
)

# A test credential: long, random-looking, in no list of placeholders.
AUTH = "ops:Vq8-tR4zL1pW9sKd2mXe"
DEPLOYMENT = "process-inbox/process-inbox"
AUTH_VARIABLES = ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Prefect credential or aftercare setting."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES and not k.startswith("AFTERCARE_")}
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# -- which configurations need the login, and which strings can be it ------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_loopback_addresses_need_no_login(host: str):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "[::]",
        "",
        "192.168.1.20",
        "10.0.0.5",
        "fe80::1",
        "prefect.internal",
        "localhost.attacker.test",
        "127.0.0.1.nip.io",
        "127.1",  # getaddrinfo reads it as 127.0.0.1, but it is not how anyone writes loopback: no pass
    ],
)
def test_every_other_host_is_beyond_loopback(host: str):
    assert not is_loopback(host)


@pytest.mark.parametrize(
    "auth",
    [
        "",
        "admin:admin",
        "user:pass",
        "admin:pass",
        "admin:password",
        "prefect:prefect",
        "ops:short-one-9",
        "no-colon-but-a-long-enough-string",
        ":a-password-without-any-user-1",
        "ops:",
        "ops:<a long random password>",
        "ops:changeme-changeme-2026",
        "ops:aaaaaaaaaaaaaaaaaaaaaaaa",
        "opsopsopsopsopsops:OpsOpsOpsOpsOpsOps",
        " " + AUTH,
        AUTH + "\n",
        "ops:Vq8-tR4z\tL1pW9sKd2mXe",
    ],
)
def test_weak_or_malformed_auth_strings_are_refused(auth: str):
    assert auth_string_problem(auth) is not None


def test_a_long_random_user_password_is_accepted():
    assert auth_string_problem(AUTH) is None
    assert auth_string_problem("ops:" + "0f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d") is None


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(var_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_up_needs_the_auth_string_beyond_loopback_in_production_and_behind_a_public_ui(tmp_path: Path):
    assert prefect_auth(_settings(tmp_path)) is None  # make up: loopback, no login
    for values, named in [
        ({"prefect_host": "0.0.0.0"}, "AFTERCARE_PREFECT_HOST=0.0.0.0"),
        ({"prefect_host": "prefect.internal"}, "AFTERCARE_PREFECT_HOST=prefect.internal"),
        (
            {
                "environment": "production",
                "shopify_webhook_secret": AUTH,
                "reviews_webhook_secret": AUTH,
                "approval_secret": AUTH,
                "link_secret": AUTH,
            },
            "AFTERCARE_ENVIRONMENT=production",
        ),
        ({"prefect_ui_url": "https://prefect.shop.example"}, "AFTERCARE_PREFECT_UI_URL"),
    ]:
        with pytest.raises(UnsafePrefectExposure, match=named):
            prefect_auth(_settings(tmp_path, **values))
        # The same with the server's string, or only the clients' (then the server gets it too).
        assert prefect_auth(_settings(tmp_path, prefect_server_api_auth_string=AUTH, **values)) == AUTH
        assert prefect_auth(_settings(tmp_path, prefect_api_auth_string=AUTH, **values)) == AUTH
    assert prefect_auth(_settings(tmp_path, prefect_host="0.0.0.0"), "127.0.0.1") is None  # --prefect-host
    assert prefect_auth(_settings(tmp_path, prefect_ui_url="http://localhost:4300")) is None


def test_up_refuses_a_weak_string_even_on_loopback_and_strings_that_differ(tmp_path: Path):
    with pytest.raises(UnsafePrefectExposure, match="PREFECT_SERVER_API_AUTH_STRING cannot lock"):
        prefect_auth(_settings(tmp_path, prefect_server_api_auth_string="admin:admin"))
    with pytest.raises(UnsafePrefectExposure, match="differ"):
        prefect_auth(
            _settings(
                tmp_path,
                prefect_host="0.0.0.0",
                prefect_server_api_auth_string=AUTH,
                prefect_api_auth_string=AUTH + "2",
            )
        )


def test_settings_read_prefects_own_variable_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AFTERCARE_PREFECT_HOST", "0.0.0.0")
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", AUTH)
    settings = Settings(var_dir=tmp_path)
    assert settings.prefect_host == "0.0.0.0"
    assert settings.prefect_server_api_auth_string == SecretStr(AUTH)
    assert prefect_auth(settings) == AUTH


def test_only_the_server_gets_the_server_string_and_every_client_gets_the_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "left:over-from-the-shell-12345")
    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    cfg = StackConfig(
        var_dir=tmp_path,
        prefect_port=4300,
        prefect_host="0.0.0.0",
        prefect_auth_string=AUTH,
        prefect_ui_url="https://prefect.shop.example/",
    )
    clients = stack_env(cfg)
    server = server_env(cfg, clients)
    assert "PREFECT_SERVER_API_AUTH_STRING" not in clients and clients["PREFECT_API_AUTH_STRING"] == AUTH
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
    # Bound to every interface, reached by our own processes on loopback; people use the proxy.
    assert clients["PREFECT_API_URL"] == "http://127.0.0.1:4300/api"
    assert clients["AFTERCARE_PREFECT_UI_URL"] == "https://prefect.shop.example"
    assert server["PREFECT_UI_API_URL"] == "https://prefect.shop.example/api"
    assert prefect_server_args(cfg)[-4:] == ["--host", "0.0.0.0", "--port", "4300"]
    v6 = StackConfig(var_dir=tmp_path, prefect_host="::")
    assert v6.prefect_api_url == "http://[::1]:4200/api" and "PREFECT_UI_API_URL" not in server_env(v6, {})


# -- a real Prefect server with the auth string -----------------------------------------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """`prefect server start` on loopback with PREFECT_SERVER_API_AUTH_STRING, as `aftercare up`
    starts it (same command and environment)."""
    root = tmp_path_factory.mktemp("prefect-auth")
    cfg = StackConfig(var_dir=root, prefect_port=free_port(), prefect_auth_string=AUTH)
    with open(root / "prefect-server.log", "wb") as log:
        proc = subprocess.Popen(
            prefect_server_args(cfg),
            env=server_env(cfg, stack_env(cfg) | {"PREFECT_LOGGING_LEVEL": "WARNING"}),
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"{cfg.prefect_api_url}/health", 90, proc)  # the health probe is left open
        yield cfg
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_the_locked_server_answers_401_without_the_auth_string_and_200_with_it(locked: StackConfig):
    api = locked.prefect_api_url
    for headers in (
        {},
        basic_auth_headers(AUTH + "x"),
        basic_auth_headers("ops:" + AUTH),
        {"Authorization": f"Bearer {AUTH}"},
        {"Authorization": "Basic !!!not-base64"},
    ):
        response = httpx.post(f"{api}/flow_runs/filter", json={}, headers=headers, timeout=10)
        assert response.status_code == 401, (headers, response.text)
    assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json() == {
        "exception_message": "Unauthorized"
    }
    response = httpx.post(f"{api}/flow_runs/filter", json={}, headers=basic_auth_headers(AUTH), timeout=10)
    assert response.status_code == 200 and response.json() == []
    # The UI is told to ask for the login before it shows anything.
    ui = httpx.get(f"http://{locked.prefect_client_host}:{locked.prefect_port}/ui-settings", timeout=10)
    assert ui.status_code == 200 and ui.json()["auth"] == "BASIC"


def test_our_clients_send_the_auth_string_and_are_refused_without_it(locked: StackConfig, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api = locked.prefect_api_url
    # The installer `aftercare up` and `aftercare prefect-setup` use.
    with pytest.raises(urllib.error.HTTPError) as refused:
        install_zombie_automations(api)
    assert refused.value.code == 401
    install_zombie_automations(api, AUTH)
    names = httpx.post(f"{api}/automations/filter", json={}, headers=basic_auth_headers(AUTH), timeout=10)
    assert sorted(a["name"] for a in names.json()) == [
        "aftercare: crash flow runs that never started",
        "aftercare: crash flow runs whose heartbeats stopped",
    ]

    # A deployment to wake (nobody serves it: the runs stay Scheduled).
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("process-inbox")
            client.create_deployment(flow_id=flow_id, name="process-inbox")
    # `aftercare up` waits for the runner's deployment with the header: found with it, never without.
    deployment_url = f"{api}/deployments/name/{DEPLOYMENT}"
    wait_http(deployment_url, 10, headers=basic_auth_headers(AUTH))
    with pytest.raises(TimeoutError):
        wait_http(deployment_url, 1.5)

    # The web app's waker and run_deployment (what process-inbox uses to start a review-reply run),
    # in a process with the environment `aftercare up` gives the web app and the runner.
    script = (
        "import asyncio, json\n"
        "from prefect.deployments import run_deployment\n"
        "from aftercare.web.wake import PrefectWaker\n"
        f"waker = PrefectWaker({DEPLOYMENT!r})\n"
        "asyncio.run(waker._wake_once(create=True))\n"
        f"run = run_deployment({DEPLOYMENT!r}, timeout=0, tags=['review'])\n"
        "print(json.dumps({'woken': waker.created_runs, 'run': str(run.id)}))\n"
    )
    env = stack_env(locked) | {"PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["woken"] == 1
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
    by_tag = {tag: run for run in runs for tag in run.tags}
    assert set(by_tag) >= {"wake", "review"} and by_tag["review"].id == UUID(out["run"])

    # The same client without the string: refused, so the string is what let it in.
    with temporary_settings({PREFECT_API_URL: api}, restore_defaults={PREFECT_API_AUTH_STRING}):
        with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError) as refused_client:
            client.read_flow_runs()
    assert refused_client.value.response.status_code == 401


def test_prefect_setup_sends_the_clients_auth_string(locked: StackConfig, tmp_path: Path):
    base = clean_env(PREFECT_API_URL=locked.prefect_api_url, PREFECT_HOME=str(tmp_path / "prefect"))
    with_auth, without = (
        subprocess.Popen(
            [sys.executable, "-m", "aftercare.cli", "prefect-setup"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in (base | {"PREFECT_API_AUTH_STRING": AUTH}, base)
    )
    out, err = with_auth.communicate(timeout=60)
    assert with_auth.returncode == 0 and "automations installed" in out, err
    _, err = without.communicate(timeout=60)
    assert without.returncode == 1 and "answered 401" in err and "set PREFECT_API_AUTH_STRING" in err, err


# -- `aftercare up` refuses before starting anything ------------------------------------------------

UP_REFUSALS = {
    "wildcard": ({"AFTERCARE_PREFECT_HOST": "0.0.0.0"}, [], "login: AFTERCARE_PREFECT_HOST=0.0.0.0"),
    "ipv6 wildcard": ({"AFTERCARE_PREFECT_HOST": "::"}, [], "AFTERCARE_PREFECT_HOST=:: is reachable"),
    "lan address": ({"AFTERCARE_PREFECT_HOST": "192.168.1.20"}, [], "AFTERCARE_PREFECT_HOST=192.168.1.20"),
    "hostname": ({"AFTERCARE_PREFECT_HOST": "prefect.lan"}, [], "AFTERCARE_PREFECT_HOST=prefect.lan"),
    "flag": ({}, ["--prefect-host", "0.0.0.0"], "without a login: AFTERCARE_PREFECT_HOST=0.0.0.0"),
    "empty string": (
        {"AFTERCARE_PREFECT_HOST": "0.0.0.0", "PREFECT_SERVER_API_AUTH_STRING": ""},
        [],
        "without a login",
    ),
    "admin:admin": (
        {"AFTERCARE_PREFECT_HOST": "0.0.0.0", "PREFECT_SERVER_API_AUTH_STRING": "admin:admin"},
        [],
        "PREFECT_SERVER_API_AUTH_STRING cannot lock the Prefect server: its password is a well-known",
    ),
    "user:pass for the clients": (
        {"AFTERCARE_PREFECT_HOST": "0.0.0.0", "PREFECT_API_AUTH_STRING": "user:pass"},
        [],
        "PREFECT_API_AUTH_STRING cannot lock the Prefect server",
    ),
    "short": (
        {"AFTERCARE_PREFECT_HOST": "0.0.0.0", "PREFECT_SERVER_API_AUTH_STRING": "ops:Vq8-tR4z"},
        [],
        "shorter than 16 characters",
    ),
    "public ui url": (
        {"AFTERCARE_PREFECT_UI_URL": "https://prefect.shop.example"},
        [],
        "AFTERCARE_PREFECT_UI_URL=https://prefect.shop.example",
    ),
}


def test_up_beyond_loopback_without_a_strong_auth_string_exits_2_and_starts_nothing(tmp_path: Path):
    prefect_port, web_port = free_port(), free_port()
    procs = {}
    for case, (env, args, _) in UP_REFUSALS.items():
        workdir = tmp_path / case.replace(" ", "-").replace(":", "-")
        workdir.mkdir()
        procs[case] = (
            workdir,
            subprocess.Popen(
                [sys.executable, "-m", "aftercare.cli", "up", "--prefect-port", str(prefect_port)]
                + ["--web-port", str(web_port), *args],
                env=clean_env(AFTERCARE_VAR_DIR=str(workdir / "var"), **env),
                cwd=workdir,  # no .env of the project's is read
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            ),
        )
    outcomes = {}
    try:
        for case, (workdir, proc) in procs.items():
            out, err = proc.communicate(timeout=60)
            outcomes[case] = (proc.returncode, err, out, workdir)
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for case, (code, err, out, workdir) in outcomes.items():
        expected = UP_REFUSALS[case][2]
        assert code == 2 and expected in err and "Nothing was started" in err, (case, code, err, out)
        assert "aftercare is up" not in out, case
        assert not (workdir / "var").exists(), case  # not even the database was migrated
    assert not listening(prefect_port) and not listening(web_port)
