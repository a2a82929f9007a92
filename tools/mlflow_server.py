"""An MLflow tracking server backed by PostgreSQL, for runs logged from many machines
(``make mlflow-server``).

    python tools/mlflow_server.py [--dir runs/postgres] [--port 5000] [--pg-port 5433]

Starts a PostgreSQL cluster of its own in ``--dir`` (``initdb`` on first use; Debian's
``postgresql`` package, installed with apt-get if missing and this runs as root), creates the
``mlflow`` database, and runs ``mlflow server`` on 127.0.0.1 in the foreground with that
database as its backend store and ``--artifacts-destination`` (default
``runs/mlflow-artifacts``) as the artifact root it serves. Clients need only the URI:

    snakemake reproduce_glow --config tracking_uri=http://127.0.0.1:5000
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python -m papers.glow.train --config …

Ctrl-C (or SIGTERM, or SIGHUP) stops the server, then PostgreSQL. PostgreSQL listens on
127.0.0.1 and its socket folder only, trusting local connections; to serve a lab, put the
server behind authentication (``mlflow server --app-name basic-auth``) or a reverse proxy, and
give it a host name (``--host 0.0.0.0``) on a trusted network. ``initdb`` refuses to run as
root, so as root the cluster belongs to the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl); Debian keeps them in
    /usr/lib/postgresql/<version>/bin, off the PATH."""
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if versions:
        return versions[-1].parent
    if os.geteuid() != 0:
        sys.exit("error: PostgreSQL is not installed: `sudo apt-get install postgresql` (or "
                 "run this as root, which installs it)")  # fmt: skip
    print("installing PostgreSQL (Debian's postgresql package)", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env).returncode != 0:
        # a fresh machine's package lists may be missing or stale: refresh them once
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(install, check=True, env=env)
    return postgres_bin()


def as_owner(cmd: list[str]) -> list[str]:
    """Run as the cluster's owner: ``postgres`` when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(folder: Path, port: int) -> Path:
    """Initialise (first use) and start the cluster in ``folder``; return its data folder."""
    bin_dir, data = postgres_bin(), folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        subprocess.run(as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow",
                                 "--auth=trust", "--encoding=UTF8"]),
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                             str(folder / "postgres.log"), "-o", options, "-w", "start"]),
                   check=True)  # fmt: skip
    exists = subprocess.run(
        [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d",
         "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'mlflow'"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not exists:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "mlflow", "mlflow"], check=True)  # fmt: skip
    return data


def stop_postgres(data: Path) -> None:
    pg_ctl = str(postgres_bin() / "pg_ctl")
    subprocess.run(as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), check=False)


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120,
                  what: str = "mlflow server") -> None:  # fmt: skip
    """Return once ``url``'s ``/health`` answers 200; exit with a message if ``server`` (the
    process serving it) dies first or ``timeout`` seconds pass. Also used by
    tools/mlflow_screenshots.py."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: {what} exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: {what} did not answer on {url} within {timeout:.0f} s")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tools/mlflow_server.py",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO / "runs" / "postgres",
        help="the PostgreSQL cluster's folder (default: runs/postgres)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=REPO / "runs" / "mlflow-artifacts",
        help="where the server stores the artifacts it serves",
    )
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    parser.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port")
    args = parser.parse_args(argv)

    # Ctrl-C, SIGTERM and SIGHUP all stop both servers, from the moment PostgreSQL may start.
    # SIGINT's handler is set explicitly: a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and would never see KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    folder = args.dir.resolve()
    backend = f"postgresql://mlflow@127.0.0.1:{args.pg_port}/mlflow"
    url = f"http://127.0.0.1:{args.port}"
    server, data = None, None
    try:
        data = start_postgres(folder, args.pg_port)
        server = subprocess.Popen([
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(args.artifacts.resolve()),
            "--host", "127.0.0.1", "--port", str(args.port),
        ], start_new_session=True)  # fmt: skip
        wait_until_up(url, server)
        print(f"MLflow server on {url} (backend {backend}, artifacts {args.artifacts}); "
              "Ctrl-C stops it", flush=True)  # fmt: skip
        while server.poll() is None:
            time.sleep(0.5)
        raise SystemExit(f"error: mlflow server exited with status {server.returncode}")
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if data is not None:  # PostgreSQL started (the MLflow server starts after it)
            stop_postgres(data)
            print("stopped the MLflow server and PostgreSQL", flush=True)


if __name__ == "__main__":
    main()
