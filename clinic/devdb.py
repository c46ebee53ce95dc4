"""A throwaway PostgreSQL cluster for tests and the demo: ``initdb`` + ``pg_ctl`` in a
temporary directory, on a free 127.0.0.1 port, as the ``postgres`` user when run as root.
Never the machine's own server.

    db = DevPostgres.start(tmp_path / "pg")
    db.dsn            # postgresql://postgres@127.0.0.1:PORT/clinic
    db.restart()      # same port, same data
    db.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/15/bin")


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary; loud when the package is missing."""
    for d in BIN_DIRS:
        if Path(d, name).is_file():
            return str(Path(d, name))
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} not found: apt-get install postgresql (make setup)")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (never 5432, the machine's own server)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 5432:
            return port


def _as_postgres() -> list[str]:
    # initdb refuses to run as root.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


@dataclass
class DevPostgres:
    """A private cluster; the database ``clinic`` exists, user ``postgres`` trusted locally."""

    root: Path
    port: int
    dbname: str = "clinic"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    @classmethod
    def start(cls, root: Path, *, port: int | None = None, dbname: str = "clinic") -> DevPostgres:
        """initdb (first time), start, and create the database."""
        root.mkdir(parents=True, exist_ok=True)
        # postgres must traverse every directory on the way (pytest's are 0700).
        for parent in [root, *root.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if os.geteuid() == 0 and not mode & 0o001:
                parent.chmod((mode & 0o7777) | 0o001)
        _chown(root)
        db = cls(root, port or free_port(), dbname)
        if not (db.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [*_as_postgres(), pg_bin("initdb"), "-D", str(db.data_dir), "-A", "trust",
                 "-U", "postgres", "-E", "UTF8", "--no-sync"],
                check=True, capture_output=True,
            )
        db._pg_ctl_start()
        subprocess.run(
            [*_as_postgres(), pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(db.port),
             "-U", "postgres", dbname],
            check=False, capture_output=True,
        )
        return db

    def _pg_ctl_start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=on -c max_connections=50")
        proc = subprocess.run(
            [*_as_postgres(), pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l",
             str(self.log_path), "-w", "-t", "60", "-o", opts, "start"],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {proc.stderr}\n{log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``immediate`` is a crash as far as PostgreSQL is concerned)."""
        subprocess.run(
            [*_as_postgres(), pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
             "stop"],
            check=False, capture_output=True,
        )

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self._pg_ctl_start()
