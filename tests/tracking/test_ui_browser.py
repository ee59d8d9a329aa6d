"""`medseg ui`: the command line it builds, port errors, clean shutdown, and the real UI rendered in headless Chromium.

The browser test installs Debian's ``chromium`` when it is missing (root, apt-get; a few minutes once) and skips
with the reason when it cannot. Screenshots go to ``test-artifacts/`` in the repository root.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.tracking.ui import experiment_links, serve, server_command, server_env
from tests.helpers.mlflow_store import make_store
from tests.helpers.paths import REPO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
INSTALL_TIMEOUT_S = 300


# ---------------------------------------------------------------- fast: command line, defaults, errors


def test_server_command_binds_localhost_with_one_worker_by_default() -> None:
    command = server_command("sqlite:////data/mlruns/mlflow.db")
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5000"
    assert command[command.index("--workers") + 1] == "1"
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////data/mlruns/mlflow.db"
    assert command[command.index("--artifacts-destination") + 1] == "file:///data/mlruns/artifacts"
    assert server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_cli_ui_defaults_to_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("medseg.tracking.ui.run_ui", lambda *args: calls.append(args))
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 0, result.output
    assert calls == [(None, "127.0.0.1", 5000)]


def test_cli_ui_port_taken_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.touch()  # the port is checked before the server starts; the store only has to exist
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port), "--backend-store-uri", f"sqlite:///{db}"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"port {port}" in lines[0], result.output


def test_cli_ui_missing_store_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ui", "--port", "0", "--backend-store-uri", f"sqlite:///{tmp_path}/x/m.db"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "no MLflow store" in result.output
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- slow: a real server


def _server_processes(port: int) -> list[str]:
    """Command lines of processes serving ``port`` (the mlflow CLI and its uvicorn both carry ``--port N``)."""
    found = subprocess.run(
        ["pgrep", "-af", f"mlflow.* --port {port}( |$)"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    return found.stdout.strip().splitlines()


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text(encoding="utf-8").splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    return make_store(tmp_path_factory.mktemp("ui") / "mlruns")


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_cli_ui_serves_and_stops_cleanly(ui_store: tuple[str, dict[str, str]], signum: int) -> None:
    """The real command: prints the URL once the server answers; Ctrl-C / SIGTERM stop every process, exit 0."""
    import urllib.request

    uri, _ = ui_store
    command = [sys.executable, "-m", "medseg", "ui", "--port", "0", "--backend-store-uri", uri]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    port = None
    try:
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert process.poll() is None, process.stderr.read()
                continue
            if "http://127.0.0.1:" in line:
                url = line.split(" at ")[1].split()[0]
                port = int(url.rsplit(":", 1)[1])
        assert port is not None, "no URL printed within 120 s"
        link = lines.get(timeout=10)  # then each experiment's runs table, a link the browser test opens
        assert link.strip().startswith(f"skin_lesion runs: {url}/#/experiments/"), link
        assert link.strip().endswith("/runs?workflowType=machine_learning"), link
        with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
            assert reply.status == 200
        assert _listening(port) == {"0100007F"}  # 127.0.0.1 only
        assert len(_server_processes(port)) == 2  # mlflow CLI + one uvicorn worker, no job runners
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _server_processes(port) == []


# ---------------------------------------------------------------- slow: the UI in a real browser


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's headless-capable Chromium, installed with apt-get when missing; skips (with why) if impossible."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} missing and cannot install it (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    start = time.monotonic()
    try:
        for step in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
            done = subprocess.run(
                step,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=env,
                timeout=INSTALL_TIMEOUT_S,
            )
            if done.returncode != 0:
                pytest.skip(f"{CHROMIUM} missing; `{' '.join(step)}` failed: {done.stderr.strip()[-500:]}")
    except subprocess.TimeoutExpired as exc:
        pytest.skip(f"{CHROMIUM} missing; `{' '.join(exc.cmd)}` took over {INSTALL_TIMEOUT_S} s")
    if not CHROMIUM.exists():
        pytest.skip(f"apt-get installed chromium but {CHROMIUM} is still missing")
    ARTIFACTS.mkdir(exist_ok=True)
    took = f"installed chromium in {time.monotonic() - start:.0f} s\n"
    (ARTIFACTS / "chromium-install.txt").write_text(took, encoding="utf-8")
    sys.stderr.write(took)
    return CHROMIUM


def _chromium(binary: Path, profile: Path, url: str, *extra: str, timeout: float = 150) -> str:
    """Render ``url`` headless (30 s of virtual time for the JS app) and return stdout; never leaves a process."""
    command = [
        "nice",
        "-n",
        "10",
        str(binary),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        *extra,
        url,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, err[-2000:]
    return out


@pytest.fixture
def ui_url(ui_store: tuple[str, dict[str, str]]) -> Iterator[str]:
    """The UI on the two-run store, on a free port; stopped (every process) afterwards, whatever happened."""
    uri, _ = ui_store
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(uri, port=0, log_path=ARTIFACTS / "ui-server.log") as url:
        yield url
    port = int(url.rsplit(":", 1)[1])
    assert _server_processes(port) == [], "mlflow server processes left behind"


@pytest.mark.slow
def test_ui_shows_runs_in_a_real_browser(
    chromium: Path, ui_url: str, ui_store: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    uri, ids = ui_store
    # the link `medseg ui` prints for the experiment: its runs table, no clicking (MLflow 3 would otherwise open an
    # untagged experiment on its GenAI overview of traces)
    links = dict(experiment_links(uri, ui_url))
    experiment_page = links["skin_lesion"]
    assert experiment_page == f"{ui_url}/#/experiments/{ids['experiment_id']}/runs?workflowType=machine_learning"
    run_page = f"{ui_url}/#/experiments/{ids['experiment_id']}/runs/{ids['baseline-epochs2']}"
    profile = tmp_path / "chromium-profile"

    dom = _chromium(chromium, profile, experiment_page, "--dump-dom")
    (ARTIFACTS / "ui-experiment.html").write_text(dom, encoding="utf-8")
    for expected in ("skin_lesion", "baseline-epochs2", "longer-epochs3"):
        assert expected in dom, f"{expected!r} not on the experiment page (DOM in test-artifacts/ui-experiment.html)"

    dom = _chromium(chromium, profile, run_page, "--dump-dom")
    (ARTIFACTS / "ui-run.html").write_text(dom, encoding="utf-8")
    assert "0.8765" in dom, "test_dice 0.8765 not on the run page (DOM in test-artifacts/ui-run.html)"
    assert "baseline-epochs2" in dom and "test_dice" in dom

    for name, page in (("ui-experiment.png", experiment_page), ("ui-run.png", run_page)):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        _chromium(chromium, profile, page, f"--screenshot={shot}", "--window-size=1400,900")
        assert shot.is_file() and shot.stat().st_size > 10_000, f"{shot} missing or blank"
