"""``medseg ui``: the MLflow UI on the project's tracking store, as one small, cleanly stoppable process group.

``mlflow server`` is started as a subprocess in its own session (process group) with one uvicorn worker and
job execution off (2 processes, ~0.5 GB instead of ~14 processes, ~3 GB), bound to 127.0.0.1 by default.
Stopping kills the whole group, so no worker outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from medseg.core.errors import MedsegError
from medseg.tracking.store import artifacts_dir, default_tracking_uri, missing_store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
#: the page of an experiment's runs table in MLflow's UI (the workflow type keeps it off the GenAI overview)
RUNS_PAGE = "{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class UiError(MedsegError):
    """The UI server could not be started (port taken, store missing, server exited)."""


def _connect_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url(host: str, port: int) -> str:
    host = _connect_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS says is free on ``host`` now (there is a small race until the server binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`UiError` naming the port if something is listening on it (or it cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((_connect_host(host), port)) == 0:
            raise UiError(f"port {port} on {host} is already in use; choose another with --port (0 picks a free one)")
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UiError(
                f"cannot bind port {port} on {host}: {exc.strerror or exc}; choose another with --port"
            ) from None


def server_command(store_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``mlflow server`` command line: one worker, the given store, artefacts proxied from beside the store."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    artifacts = artifacts_dir(store_uri)
    if artifacts is not None:  # new experiments made in the UI keep artefacts beside the store, not in ./mlartifacts
        command += ["--artifacts-destination", artifacts.resolve().as_uri()]
    return command


def server_env() -> dict[str, str]:
    """The server's environment: job execution (and its extra worker processes) switched off."""
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.pop("MLFLOW_TRACKING_URI", None)  # the server gets its store from --backend-store-uri only
    return env


def _check_store(store_uri: str) -> None:
    db = missing_store(store_uri)
    if db is not None:
        raise UiError(f"{db}: no MLflow store here yet; run `medseg run <pipeline>` first or pass --backend-store-uri")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``; from /proc on Linux, else a signal-0 probe."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``timeout`` seconds.

    SIGINT and SIGTERM are held back meanwhile, so a second Ctrl-C cannot cut the clean-up short.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        _stop_group(process, timeout)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop_group(process: subprocess.Popen, timeout: float) -> None:
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        pgid = process.pid  # leader gone; its group id is its pid (start_new_session=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    # workers may outlive the leader: wait for the group to empty, then kill whatever remains
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_members(pgid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def wait_until_up(url: str, process: subprocess.Popen, log_path: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``<url>/health`` until it answers; fail early (with the server's last log lines) if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise UiError(f"mlflow server exited with code {code} before answering: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UiError(f"mlflow server did not answer at {url} within {timeout:.0f} s: {_tail(log_path)}")
        time.sleep(0.25)


@contextlib.contextmanager
def serve(
    store_uri: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float = START_TIMEOUT_S,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run the MLflow UI on ``store_uri`` (default: the project's store) and yield its URL once it answers.

    ``port=0`` picks a free port. The server (and all its workers) is stopped on exit, whatever happens.
    The server's own output goes to ``log_path`` (default: a temporary file, deleted afterwards).
    """
    with _serve(store_uri, host, port, timeout, log_path) as (url, _process, _log):
        yield url


@contextlib.contextmanager
def _serve(
    store_uri: str | None, host: str, port: int, timeout: float, log_path: Path | None
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    store_uri = store_uri or default_tracking_uri()
    _check_store(store_uri)
    port = free_port(host) if port == 0 else port
    check_port_free(host, port)
    url = _url(host, port)
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medseg-ui-"))) / "server.log"
        log_file = stack.enter_context(open(log_path, "wb"))
        process = subprocess.Popen(
            server_command(store_uri, host, port),
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C goes to medseg, which stops the group itself
        )
        try:
            wait_until_up(url, process, log_path, timeout)
            yield url, process, log_path
        finally:
            stop_group(process)


class _Stop(Exception):
    """Raised from the SIGTERM handler to leave the wait loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def model_training_experiments(store_uri: str) -> list[tuple[str, str]]:
    """(name, id) of every experiment in the store that holds runs, tagging untagged ones as model-training
    experiments so MLflow opens them on their runs."""
    import mlflow

    from medseg.tracking.tracker import ensure_experiment

    client = mlflow.MlflowClient(tracking_uri=store_uri)
    found = []
    for experiment in client.search_experiments():
        if experiment.name == "Default" and not client.search_runs([experiment.experiment_id], max_results=1):
            continue
        found.append((experiment.name, ensure_experiment(client, experiment.name)))
    return found


def experiment_links(store_uri: str, url: str) -> list[tuple[str, str]]:
    """(experiment name, link to its runs table in the UI at ``url``): what ``medseg ui`` prints."""
    return [(name, runs_page(url, key)) for name, key in model_training_experiments(store_uri)]


def runs_page(url: str, experiment_id: str) -> str:
    return RUNS_PAGE.format(url=url, experiment_id=experiment_id)


def run_ui(store_uri: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """``medseg ui``: serve until Ctrl-C or SIGTERM, then stop the server's process group and return."""
    store_uri = store_uri or default_tracking_uri()
    _check_store(store_uri)
    experiments = model_training_experiments(store_uri)  # before serving: nothing slow after the URL is printed
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    # Ctrl-C stops the server even where SIGINT was inherited as ignored (a `cmd &` in a non-interactive shell)
    previous_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _serve(store_uri, host, port, START_TIMEOUT_S, None) as (url, process, log_path):
            print(f"MLflow UI for {store_uri} at {url}  (Ctrl-C to stop)", flush=True)
            for name, experiment_id in experiments:
                print(f"  {name} runs: {runs_page(url, experiment_id)}", flush=True)
            code = process.wait()
            raise UiError(f"mlflow server at {url} exited unexpectedly with code {code}: {_tail(log_path)}")
    except (KeyboardInterrupt, _Stop):
        print("stopped", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_interrupt)
