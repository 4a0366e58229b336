"""An SSH host (paramiko) implementing :class:`tfship.store.Host`.

Security defaults: host keys are verified against a known_hosts file
(``DEPLOY_SERVER_KNOWN_HOSTS`` or ``~/.ssh/known_hosts``) and an unknown or changed key is
refused; accepting an unknown host needs ``accept_unknown_host=True`` and logs a warning. Keys
come from a file or from an environment variable's text (loaded in memory, never written to
disk). A password is used only if given, with a warning. Every remote command is built with
``shlex.quote``. Nothing secret is logged.

Uploads stream a tar archive over one exec channel (no per-file round trips), which is what
makes them as fast as ``scp``; integrity is checked afterwards by hashing on the host.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import shlex
import shutil
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tfship.errors import ConfigError, HostError
from tfship.log import event

TRANSIENT = (EOFError, ConnectionError, socket.timeout, TimeoutError, paramiko.SSHException)
CHUNK = 1 << 20
# (text in a remote error, what to do about it): checked in order on failed remote commands.
REMOTE_CAUSES = (
    (
        "No space left on device",
        "free space on the host (old versions in <model>/.rejected/ can go) or lower --keep",
    ),
    (
        "Disk quota exceeded",
        "raise the deploy user's quota or free space on the host",
    ),
    (
        "Permission denied",
        "let DEPLOY_SERVER_USERNAME write DEPLOY_SERVER_PATH (chown/chmod it on the host)",
    ),
    ("Read-only file system", "DEPLOY_SERVER_PATH is on a read-only file system"),
)


@dataclass
class SSHSettings:
    """How to reach a deploy host."""

    hostname: str
    username: str | None = None
    port: int = 22
    key_file: str | None = None
    key_text: str | None = None  # the private key itself (CircleCI env var)
    password: str | None = None
    known_hosts: str | None = None
    accept_unknown_host: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    keepalive: int = 15
    retries: int = 3
    backoff: float = 0.5

    @property
    def label(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{user}{self.hostname}:{self.port}"


def load_key_text(text: str) -> paramiko.PKey:
    """A private key from its text (OpenSSH or PEM); no file is written."""
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text.strip() + "\n"))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(type(exc).__name__)
    raise ConfigError(
        "DEPLOY_SERVER_SSH_KEY is not a usable private key (ed25519, ecdsa or rsa, no passphrase)"
    )


class FastTransport(paramiko.Transport):
    """Prefer AES-GCM: authenticated encryption without a separate per-packet HMAC."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        *(c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c),
    )


class SSHHost:
    """:class:`tfship.store.Host` over SSH (SFTP for metadata, exec channels for bulk)."""

    def __init__(self, s: SSHSettings) -> None:
        self.s = s
        self.name = s.label
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.bytes_sent = 0

    # --- connection --------------------------------------------------------------------------
    def connect(self) -> SSHHost:
        """Connect (bounded retries with backoff on transient errors); verify the host key."""
        attempt = 0
        while True:
            try:
                self._connect_once()
                return self
            except HostError:
                raise
            except (*TRANSIENT, OSError) as exc:  # refused / unreachable / DNS: OSError kin
                attempt += 1
                if attempt > self.s.retries:
                    raise HostError(
                        f"{self.name}: cannot connect after {attempt} tries ({_why(exc)})",
                        hint="check DEPLOY_SERVER_HOSTNAME / DEPLOY_SERVER_PORT and the network",
                    ) from exc
                event(
                    "ssh",
                    f"connect failed ({_why(exc)}), retrying",
                    host=self.name,
                    attempt=attempt,
                )
                time.sleep(self.s.backoff * 2 ** (attempt - 1))

    def _connect_once(self) -> None:
        client = paramiko.SSHClient()
        known = self.s.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        if os.path.exists(known):
            client.load_host_keys(known)
        elif not self.s.accept_unknown_host:
            raise HostError(
                f"{self.name}: known_hosts file {known} not found; the host key cannot be checked",
                hint="set DEPLOY_SERVER_KNOWN_HOSTS (ssh-keyscan -p PORT HOST > known_hosts) or "
                "pass --accept-unknown-host-key",
            )
        if self.s.accept_unknown_host:
            event(
                "ssh",
                "WARNING: accepting an unknown host key (no protection against man-in-the-middle)",
                host=self.name,
            )
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pkey = load_key_text(self.s.key_text) if self.s.key_text else None
        if self.s.password:
            event("ssh", "WARNING: password authentication; prefer a key", host=self.name)
        try:
            client.connect(
                self.s.hostname,
                port=self.s.port,
                username=self.s.username,
                pkey=pkey,
                key_filename=self.s.key_file,
                password=self.s.password,
                timeout=self.s.connect_timeout,
                banner_timeout=self.s.connect_timeout,
                auth_timeout=self.s.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
                transport_factory=FastTransport,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostError(
                f"{self.name}: host key CHANGED (got {exc.key.get_name()} "
                f"{exc.key.get_fingerprint().hex()}); refusing to connect",
                hint="if the host was rebuilt, update known_hosts; otherwise investigate",
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise HostError(
                f"{self.name}: authentication failed ({_why(exc)})",
                hint="check DEPLOY_SERVER_USERNAME and the SSH key",
            ) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostError(
                    f"{self.name}: unknown host key (not in {known}); refusing to connect",
                    hint="add it to known_hosts, or pass --accept-unknown-host-key",
                ) from exc
            raise
        except (FileNotFoundError, PermissionError) as exc:
            raise ConfigError(f"SSH key file: {exc}") from exc
        transport = client.get_transport()
        transport.set_keepalive(self.s.keepalive)
        transport.default_window_size = 1 << 27
        self._client = client
        self._sftp = None

    def _ssh(self) -> paramiko.SSHClient:
        if self._client is None or not self._client.get_transport().is_active():
            self.connect()
        return self._client

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is not None and not self._sftp.get_channel().get_transport().is_active():
            self.close()  # the link dropped since: start a new one
        if self._sftp is None:
            self._sftp = self._ssh().open_sftp()
            self._sftp.get_channel().settimeout(self.s.read_timeout)
        return self._sftp

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._sftp:
                self._sftp.close()
        with contextlib.suppress(Exception):
            if self._client:
                self._client.close()
        self._client = self._sftp = None

    def _retry(self, what: str, fn: Callable):
        """Run an idempotent operation; reconnect and retry on transient errors (bounded)."""
        attempt = 0
        while True:
            try:
                return fn()
            except (*TRANSIENT, OSError) as exc:
                if isinstance(exc, OSError) and not _link_lost(exc):
                    raise
                attempt += 1
                self.close()
                if attempt > self.s.retries:
                    raise HostError(
                        f"{self.name}: {what} failed after {attempt} tries ({_why(exc)})"
                    ) from exc
                event("ssh", f"{what}: {_why(exc)}, reconnecting", host=self.name, attempt=attempt)
                time.sleep(self.s.backoff * 2 ** (attempt - 1))

    def run(
        self,
        command: str,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run a remote command (already quoted); return (exit status, stdout, stderr)."""
        chan = self._ssh().get_transport().open_session(timeout=self.s.connect_timeout)
        chan.settimeout(timeout or self.s.read_timeout)
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = _drain(chan)
        return chan.recv_exit_status(), out, err

    def check(self, command: str, what: str, timeout: float | None = None) -> bytes:
        code, out, err = self.run(command, timeout=timeout)
        if code != 0:
            raise self._failed(what, err, code)
        return out

    def _failed(self, what: str, err: bytes, code: int) -> HostError:
        """One line for a remote command that failed, with the fix for the usual causes."""
        lines = [x.strip() for x in err.decode(errors="replace").splitlines() if x.strip()]
        for cause, hint in REMOTE_CAUSES:
            hit = next((x for x in lines if cause in x), None)
            if hit:
                return HostError(f"{self.name}: {what} failed: {hit[:300]}", hint=hint)
        return HostError(f"{self.name}: {what} failed: {'; '.join(lines)[:300] or f'exit {code}'}")

    # --- Host protocol -----------------------------------------------------------------------
    def listdir(self, path: str) -> list[str]:
        def op():
            try:
                return sorted(self.sftp().listdir(path))
            except FileNotFoundError:
                return []

        return self._retry(f"list {path}", op)

    def exists(self, path: str) -> bool:
        def op():
            try:
                self.sftp().stat(path)
                return True
            except FileNotFoundError:
                return False

        return self._retry(f"stat {path}", op)

    def makedirs(self, path: str) -> None:
        self._retry(
            f"mkdir -p {path}",
            lambda: self.check(f"mkdir -p -- {shlex.quote(path)}", f"mkdir -p {path}"),
        )

    def mkdir(self, path: str) -> None:
        try:
            self.sftp().mkdir(path)
        except OSError as exc:
            if self.exists(path):
                raise FileExistsError(path) from exc
            raise self._failed(f"create {path}", _why(exc).encode(), 1) from exc

    def rename(self, src: str, dst: str) -> None:
        """Rename on the host; survives a connection lost before the answer came back.

        After a reconnect, ``src`` gone and ``dst`` present means the lost request was carried
        out (callers hold the model's lock and use unique source names, so it was ours).
        """
        tries = 0

        def op() -> None:
            nonlocal tries
            tries += 1
            if tries > 1 and self.exists(dst) and not self.exists(src):
                event("ssh", "the rename was done before the link dropped", host=self.name)
                return
            try:
                # OpenSSH's sftp-server renames a folder only if the target does not exist.
                self.sftp().rename(src, dst)
            except OSError as exc:
                if _link_lost(exc):
                    raise ConnectionError(_why(exc)) from exc
                if self.exists(dst):
                    raise FileExistsError(dst) from exc
                raise self._failed(f"rename {src} -> {dst}", _why(exc).encode(), 1) from exc

        self._retry(f"rename {src}", op)

    def remove_tree(self, path: str) -> None:
        self._retry(
            f"rm -rf {path}", lambda: self.check(f"rm -rf -- {shlex.quote(path)}", f"remove {path}")
        )

    def put_tree(
        self,
        local: Path,
        remote: str,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream ``local`` as a tar archive into a new folder ``remote``; return bytes sent."""
        if self.exists(remote):
            raise FileExistsError(remote)
        q = shlex.quote(remote)
        chan = self._ssh().get_transport().open_session(timeout=self.s.connect_timeout)
        chan.settimeout(self.s.read_timeout)
        chan.exec_command(f"mkdir -- {q} && tar -x -f - -C {q}")
        sent = 0

        def send(data: bytes) -> None:
            nonlocal sent
            chan.sendall(data)
            sent += len(data)
            if progress:
                progress(sent)

        # A pax stream written by hand: headers from TarInfo, file bodies in 1 MiB chunks
        # straight to the channel (tarfile's 16 KiB copy loop costs half the throughput).
        root = Path(local)
        for path in sorted(root.rglob("*")):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            st = path.lstat()
            info.mode, info.mtime = st.st_mode & 0o7777, int(st.st_mtime)
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                send(info.tobuf(tarfile.PAX_FORMAT))
                continue
            if not path.is_file():
                raise HostError(f"{path}: only files and folders can be uploaded")
            info.size = st.st_size
            send(info.tobuf(tarfile.PAX_FORMAT))
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    send(block)
            if info.size % tarfile.BLOCKSIZE:
                send(tarfile.NUL * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE))
        send(tarfile.NUL * tarfile.BLOCKSIZE * 2)
        chan.shutdown_write()
        out, err = _drain(chan)
        code = chan.recv_exit_status()
        if code != 0:
            raise self._failed(f"upload to {remote}", err, code)
        self.bytes_sent += sent
        return sent

    def get_tree(self, remote: str, local: Path) -> None:
        data = self._retry(
            f"download {remote}",
            lambda: self.check(f"tar -c -f - -C {shlex.quote(remote)} .", f"download {remote}"),
        )
        local.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                # "data": no member outside ``local``, no absolute or escaping links, no devices.
                tar.extractall(local, filter="data")
        except tarfile.TarError as exc:
            shutil.rmtree(local, ignore_errors=True)  # nothing half-copied is left to load
            raise HostError(
                f"{self.name}: refused the copy of {remote}: {exc}",
                hint="the version folder on the host holds something a model export never"
                " writes; inspect it there",
            ) from exc

    def hash_tree(self, path: str) -> dict[str, str]:
        q = shlex.quote(path)
        out = self._retry(
            f"hash {path}",
            lambda: self.check(
                f"cd {q} && find . -type f -print0 | xargs -0 -r sha256sum",
                f"hash {path}",
                timeout=600,
            ),
        )
        result = {}
        for line in out.decode().splitlines():
            digest, _, name = line.partition("  ")
            result[name[2:] if name.startswith("./") else name] = digest
        return dict(sorted(result.items()))

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def read_bytes(self, path: str) -> bytes:
        def op():
            with self.sftp().open(path, "rb") as fh:
                return fh.read()

        return self._retry(f"read {path}", op)

    def write_text(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with self.sftp().open(tmp, "wb") as fh:
            fh.write(text.encode())
        self.sftp().posix_rename(tmp, path)


def _drain(chan: paramiko.Channel) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the remote's EOF, both at once (no window deadlock)."""
    out, err = bytearray(), bytearray()
    timeout = chan.gettimeout() or 60.0
    deadline = time.monotonic() + timeout
    while True:
        progressed = False
        while chan.recv_ready():
            out += chan.recv(CHUNK)
            progressed = True
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(CHUNK)
            progressed = True
        if (chan.eof_received or chan.closed) and not (
            chan.recv_ready() or chan.recv_stderr_ready()
        ):
            return bytes(out), bytes(err)
        if progressed:
            deadline = time.monotonic() + timeout
        elif time.monotonic() > deadline:
            raise TimeoutError(f"no output from the remote command for {timeout:g} s")
        else:
            select.select([chan], [], [], 0.02)


def _link_lost(exc: BaseException) -> bool:
    """The SSH link died (as opposed to the host refusing an operation)."""
    if isinstance(exc, TRANSIENT):
        return True
    # paramiko raises a bare OSError("Socket is closed") on a closed channel; a refusal from
    # the host's SFTP server carries an errno.
    return isinstance(exc, OSError) and exc.errno is None and "closed" in str(exc).lower()


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
