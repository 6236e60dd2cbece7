"""Start a throwaway JupyterLab on 127.0.0.1 for browser tests, and always stop it.

The server runs from this interpreter's environment with private config, data, runtime and IPython
directories, so a user's settings and kernels never leak in while the environment's own ``python3``
kernelspec (under ``sys.prefix/share/jupyter``) stays discoverable. Notebooks are copied into a
temporary root, so whatever the browser saves never touches the repository.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# Settings a first-time user would be asked about; answering them up front keeps toasts and
# network requests out of the page under test.
_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
_SERVER_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
    },
}


@dataclass(frozen=True)
class JupyterLabServer:
    """A running server: where it listens, its token, the root it serves and its log file."""

    port: int
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str, *, workspace: str | None = None) -> str:
        """URL that opens notebook ``name`` (relative to the root) in the Lab UI, token included.

        A named ``workspace`` starts from an empty layout instead of restoring the tabs that an
        earlier page on this server left open.
        """
        lab = f"/lab/workspaces/{quote(workspace)}" if workspace else "/lab"
        return f"{self.base_url}{lab}/tree/{quote(name)}?token={self.token}"

    def api(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> object:
        """Call the REST API (``path`` like ``/api/status``) and return the decoded JSON, or None."""
        request = urllib.request.Request(self.base_url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, characters: int = 4000) -> str:
        """The end of the server's combined stdout/stderr, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def _wait_until_ready(server: JupyterLabServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {server.process.returncode} before it "
                               f"answered /api/status:\n{server.log_tail()}")
        try:
            server.api("/api/status", timeout=2.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer /api/status within {timeout:.0f} s:\n{server.log_tail()}")


def _stop(server: JupyterLabServer, *, grace: float = 15.0) -> None:
    """Ask the server to shut down (it stops its kernels), then terminate, then kill its group."""
    process = server.process
    if process.poll() is None:
        try:
            server.api("/api/shutdown", method="POST", timeout=5.0)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
    # The server leads its own process group; anything left in it (a stuck kernel) goes too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@contextmanager
def running_jupyterlab(notebooks: Iterable[str | os.PathLike], *, subdir: str = "",
                       links: Mapping[str, str | os.PathLike] | None = None,
                       env: Mapping[str, str] | None = None, startup_timeout: float = 120.0,
                       extra_args: Iterable[str] = ()) -> Iterator[JupyterLabServer]:
    """Serve copies of ``notebooks`` from a fresh temporary root with JupyterLab on 127.0.0.1.

    The copies go to ``root/subdir``; ``links`` maps names in the root to existing folders that
    are symlinked there (``{"configs": repo / "configs"}``), so notebooks that open ``../configs``
    work as they do in the repository. ``env`` is the server's environment (default: this
    process's); kernels inherit it, so variables such as ``SMOKE=1`` reach the notebook. The port
    is free, the token random, and the server and its kernels are stopped on exit even when the
    body raises.
    """
    with tempfile.TemporaryDirectory(prefix="hsbs-jupyterlab-") as scratch:
        scratch = Path(scratch)
        root_dir = scratch / "root"
        notebook_dir = root_dir / subdir
        notebook_dir.mkdir(parents=True)
        for notebook in notebooks:
            shutil.copy2(notebook, notebook_dir / Path(notebook).name)
        for name, target in (links or {}).items():
            (root_dir / name).symlink_to(Path(target).resolve(), target_is_directory=Path(target).is_dir())

        config_dir, data_dir = scratch / "config", scratch / "data"
        for relative, settings in _USER_SETTINGS.items():
            _write_json(config_dir / "lab" / "user-settings" / relative, settings)
        _write_json(config_dir / "jupyter_server_config.json", _SERVER_CONFIG)

        server_env = dict(os.environ if env is None else env)
        server_env.update({
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(data_dir),
            "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
            "IPYTHONDIR": str(scratch / "ipython"),
        })
        # Only the environment's own share/jupyter should be searched, not a user's JUPYTER_PATH.
        server_env.pop("JUPYTER_PATH", None)
        server_env.pop("JUPYTER_CONFIG_PATH", None)

        port, token = free_port(), secrets.token_hex(24)
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}", "--ServerApp.disable_check_xsrf=False",
            f"--LabApp.user_settings_dir={config_dir / 'lab' / 'user-settings'}",
            f"--LabApp.workspaces_dir={config_dir / 'lab' / 'workspaces'}",
            *extra_args,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # containers and CI images often run as root
        log_path = scratch / "jupyterlab.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=root_dir, env=server_env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = JupyterLabServer(port=port, token=token, root_dir=root_dir, log_path=log_path, process=process)
        try:
            _wait_until_ready(server, startup_timeout)
            yield server
        finally:
            _stop(server)
