"""An SSH host (paramiko) implementing :class:`tfship.store.Host`.

Security defaults: host keys are verified against known_hosts lines (a file,
``DEPLOY_SERVER_KNOWN_HOSTS`` or ``~/.ssh/known_hosts``, and/or the text of an environment
variable, read in memory) and an unknown or changed key is refused; accepting an unknown host
needs ``accept_unknown_host=True`` and logs a warning. Keys come from a file or from an
environment variable's text, PEM/OpenSSH or its base64 (loaded in memory, never written to
disk); with neither, from what CircleCI's ``add_ssh_keys`` leaves: the ssh-agent
(``SSH_AUTH_SOCK``) and ``~/.ssh/id_*`` (``id_rsa_<fingerprint>`` included). A password is used
only if given, with a warning. Every remote command is built with ``shlex.quote``. Nothing
secret is logged.

:meth:`SSHHost.forward` carries local TCP connections to an address as seen from the host
(direct-tcpip), so TF Serving can listen on the host's loopback only.

Uploads stream a tar archive over one exec channel (no per-file round trips), which is what
makes them as fast as ``scp``; integrity is checked afterwards by hashing on the host.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import select
import shlex
import shutil
import socket
import tarfile
import threading
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
    key_text: str | None = None  # the private key itself (CircleCI env var), or its base64
    key_text_name: str = "the SSH key variable"  # where key_text came from, for messages
    password: str | None = None
    known_hosts: str | None = None
    known_hosts_lines: str | None = None  # known_hosts text (an environment variable's)
    known_hosts_lines_name: str = "the known_hosts variable"
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


def load_key_text(text: str, name: str = "DEPLOY_SERVER_SSH_KEY") -> paramiko.PKey:
    """A private key from its text (OpenSSH or PEM, or the base64 of either); no file is written.

    ``name`` is the variable the text came from: errors name it and never quote the text.
    """
    pem = key_pem(text, name)
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(pem))
        except paramiko.PasswordRequiredException as exc:
            raise ConfigError(
                f"{name} holds a passphrase-protected key",
                hint="CI has nobody to type the passphrase: use a deploy key without one "
                "(ssh-keygen -p -N '' -f KEY), or add_ssh_keys",
            ) from exc
        except (paramiko.SSHException, ValueError):
            continue
    raise ConfigError(
        f"{name} is not a usable private key (ed25519, ecdsa or rsa, no passphrase)",
        hint="set it to the key file's whole text, or to `base64 -w0 KEY`",
    )


def key_pem(text: str, name: str) -> str:
    """The key's PEM/OpenSSH text from what an environment variable holds.

    CircleCI's environment variables lose newlines easily, so three shapes are accepted: the
    text itself, the text with its line breaks turned into spaces or literal ``\\n``, and the
    base64 of the text (``base64 -w0 KEY``: one line, nothing to lose). Anything else is an
    error naming ``name`` (never quoting the secret).
    """
    stripped = text.strip()
    if "-----BEGIN" not in stripped:
        try:
            decoded = base64.b64decode("".join(stripped.split()), validate=True).decode("ascii")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            decoded = ""
        if "-----BEGIN" not in decoded:
            raise ConfigError(
                f"{name} is neither a private key's text (-----BEGIN ... PRIVATE KEY-----) "
                "nor the base64 of one",
                hint=f"set {name} to the key file's whole text, or to `base64 -w0 KEY`",
            )
        stripped = decoded.strip()
    return _rewrap(stripped.replace("\\n", "\n"))


def _rewrap(pem: str) -> str:
    """Restore a PEM block's line breaks (a flattened variable keeps only spaces, or none)."""
    head, sep, rest = pem.partition("-----BEGIN ")
    kind, sep2, rest = rest.partition("-----")
    end = f"-----END {kind}-----"
    body, sep3, _ = rest.partition(end)
    if not (sep and sep2 and sep3) or ":" in body:  # no block, or PEM headers: leave as is
        return pem + "\n"
    body = "".join(body.split())
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {kind}-----", *lines, end]) + "\n"


def home_keys() -> list[str]:
    """The private key files in ``~/.ssh``: ``id_<type>`` and ``add_ssh_keys``'s
    ``id_rsa_<fingerprint>`` (paramiko's own search knows only the first)."""
    folder = Path(os.path.expanduser("~/.ssh"))
    if not folder.is_dir():
        return []
    return sorted(
        str(p)
        for p in folder.glob("id_*")
        if p.is_file() and not p.name.endswith((".pub", "-cert.pub"))
    )


def agent_key_count() -> int | None:
    """How many keys the ssh-agent at ``SSH_AUTH_SOCK`` holds; None without an agent."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return None
    agent = paramiko.Agent()
    try:
        return len(agent.get_keys())
    finally:
        agent.close()


def add_known_hosts_lines(keys: paramiko.HostKeys, text: str, name: str) -> int:
    """Add known_hosts lines (an environment variable's text) to ``keys``; return how many.

    Accepts real line breaks or literal ``\\n`` (a variable that lost its newlines); a line
    that is not ``host[,host] keytype base64`` is an error naming the variable and line.
    """
    count = 0
    for n, line in enumerate(text.replace("\\n", "\n").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, n)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError) as exc:
            raise ConfigError(
                f"{name} line {n} is not a known_hosts line ({type(exc).__name__})",
                hint="use the output of `ssh-keyscan -p PORT HOST`, one host key per line",
            ) from exc
        if entry is None or entry.key is None:
            raise ConfigError(
                f"{name} line {n} is not a known_hosts line (host[,host] keytype base64)",
                hint="use the output of `ssh-keyscan -p PORT HOST`, one host key per line",
            )
        for hostname in entry.hostnames:
            keys.add(hostname, entry.key.get_name(), entry.key)
        count += 1
    return count


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
        # A tunnel's thread may reconnect while this one uses or closes the connection: every
        # read or change of _client and _sftp holds it (reentrant: sftp() closes, then connects).
        self._lock = threading.RLock()
        self.bytes_sent = 0

    # --- connection --------------------------------------------------------------------------
    def connect(self) -> SSHHost:
        """Connect (bounded retries with backoff on transient errors); verify the host key."""
        attempt = 0
        while True:
            try:
                with self._lock:
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

    def _load_host_keys(self, client: paramiko.SSHClient) -> str:
        """Load every known_hosts source; return what was read (for messages)."""
        read, missing = [], []
        if self.s.known_hosts_lines and self.s.known_hosts_lines.strip():
            n = add_known_hosts_lines(
                client.get_host_keys(), self.s.known_hosts_lines, self.s.known_hosts_lines_name
            )
            read.append(f"${self.s.known_hosts_lines_name} ({n} lines)")
        else:
            missing.append(f"${self.s.known_hosts_lines_name} (unset)")
        explicit = self.s.known_hosts
        if explicit and not os.path.exists(explicit) and not self.s.accept_unknown_host:
            # A file named explicitly must exist: a typo must not silently fall back.
            raise HostError(
                f"{self.name}: known_hosts file {self.s.known_hosts} not found; the host "
                "key cannot be checked",
                hint="fix DEPLOY_SERVER_KNOWN_HOSTS (ssh-keyscan -p PORT HOST > known_hosts) "
                "or pass --accept-unknown-host-key",
            )
        known = self.s.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        if os.path.exists(known):
            client.load_host_keys(known)
            read.append(known)
        else:
            missing.append(f"{known} (missing)")
        if not read and not self.s.accept_unknown_host:
            raise HostError(
                f"{self.name}: no known_hosts to check the host key against (tried "
                f"{', '.join(missing)})",
                hint=f"set {self.s.known_hosts_lines_name} to `ssh-keyscan -p PORT HOST`'s "
                "output, or DEPLOY_SERVER_KNOWN_HOSTS to a file; or pass "
                "--accept-unknown-host-key",
            )
        return ", ".join(read) or "nothing"

    def _auth_sources(self, pkey: paramiko.PKey | None) -> tuple[list[str], list[str]]:
        """The key files to offer and a description of every source tried (for messages).

        A key given explicitly (text, file) or a password is all that is offered: the outcome
        does not depend on what the machine happens to hold. Without one, what CircleCI's
        add_ssh_keys leaves is used: the agent, then ~/.ssh's keys.
        """
        if pkey is not None or self.s.key_file or self.s.password:
            tried = []
            if pkey is not None:
                tried.append(f"the key in ${self.s.key_text_name}")
            if self.s.key_file:
                tried.append(f"key file {self.s.key_file}")
            if self.s.password:
                tried.append("a password")
            return ([self.s.key_file] if self.s.key_file else []), tried
        agent = agent_key_count()
        files = home_keys()
        tried = [
            "ssh-agent: SSH_AUTH_SOCK unset" if agent is None else f"ssh-agent ({agent} keys)",
            f"~/.ssh keys ({', '.join(Path(f).name for f in files)})"
            if files
            else "~/.ssh keys (none)",
            f"${self.s.key_text_name} (unset)",
        ]
        if not agent and not files:
            raise HostError(
                f"{self.name}: no SSH key to log in with (tried {'; '.join(tried)})",
                hint=f"add the key with CircleCI's add_ssh_keys, set {self.s.key_text_name} to "
                "its text (or base64), or DEPLOY_SERVER_SSH_KEY_FILE to a file",
            )
        return files, tried

    def _connect_once(self) -> None:
        client = paramiko.SSHClient()
        known = self._load_host_keys(client)
        if self.s.accept_unknown_host:
            event(
                "ssh",
                "WARNING: accepting an unknown host key (no protection against man-in-the-middle)",
                host=self.name,
            )
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key_text = self.s.key_text if self.s.key_text and self.s.key_text.strip() else None
        pkey = load_key_text(key_text, self.s.key_text_name) if key_text else None
        if self.s.password:
            event("ssh", "WARNING: password authentication; prefer a key", host=self.name)
        key_files, tried = self._auth_sources(pkey)
        explicit = pkey is not None or bool(self.s.key_file or self.s.password)
        try:
            client.connect(
                self.s.hostname,
                port=self.s.port,
                username=self.s.username,
                pkey=pkey,
                key_filename=key_files or None,
                password=self.s.password,
                timeout=self.s.connect_timeout,
                banner_timeout=self.s.connect_timeout,
                auth_timeout=self.s.connect_timeout,
                allow_agent=not explicit,
                look_for_keys=False,  # home_keys() lists ~/.ssh, add_ssh_keys' names included
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
                f"{self.name}: authentication failed ({_why(exc)}); tried {'; '.join(tried)}",
                hint="check DEPLOY_SERVER_USERNAME, and that one of those keys is in the "
                "user's authorized_keys on the host",
            ) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostError(
                    f"{self.name}: unknown host key (not in {known}); refusing to connect",
                    hint="add it to known_hosts, or pass --accept-unknown-host-key",
                ) from exc
            if "No authentication methods available" in str(exc):
                raise HostError(
                    f"{self.name}: authentication failed (no key was accepted); tried "
                    f"{'; '.join(tried)}",
                    hint="check DEPLOY_SERVER_USERNAME and the SSH key",
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
        with self._lock:
            client = self._client
            if client is None or not client.get_transport().is_active():
                self.connect()
                client = self._client
            return client

    def forward(self, remote_host: str, remote_port: int) -> Forward:
        """A local port (127.0.0.1, ephemeral) whose connections go to ``remote_host:
        remote_port`` as the SSH host sees it; close it with :meth:`Forward.close`."""
        return Forward(self, remote_host, remote_port)

    def sftp(self) -> paramiko.SFTPClient:
        """The host's SFTP session, opened (and the link reconnected) when there is none."""
        with self._lock:
            sftp = self._sftp
            if sftp is not None and not sftp.get_channel().get_transport().is_active():
                self.close()  # the link dropped since: start a new one
                sftp = None
            if sftp is None:
                sftp = self._sftp = self._ssh().open_sftp()
                sftp.get_channel().settimeout(self.s.read_timeout)
            return sftp

    def close(self) -> None:
        """Close the SFTP session and the connection; the next use reconnects."""
        with self._lock:
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
            # paramiko's sendall re-slices what is left after each 32 KiB packet: on bytes
            # that copies the rest of the 1 MiB chunk every time; a memoryview slices for free
            # (half the client's CPU per upload, bench/deploy.py --fleet-only)
            chan.sendall(memoryview(data))
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


class Forward:
    """Local TCP port forwarding over SSH (``ssh -L``): paramiko direct-tcpip channels.

    One thread accepts on 127.0.0.1:<ephemeral>; each connection gets a channel to
    ``remote`` opened from the host and a thread copying bytes both ways. A channel the host
    cannot open (nothing listens there) closes the local connection at once, which a client
    sees as the server not answering. :meth:`close` stops every thread and frees the port.
    """

    def __init__(self, host: SSHHost, remote_host: str, remote_port: int) -> None:
        self.host = host
        self.remote = (remote_host, int(remote_port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        # select() on the listener and this pair's end: close() wakes the loop at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pipes: list[tuple[socket.socket, paramiko.Channel, threading.Thread]] = []
        self.connections = 0  # carried so far (tests and logs)
        self._thread = threading.Thread(
            target=self._accept, name=f"tfship-tunnel-{self.port}", daemon=True
        )
        self._thread.start()
        event(
            "ssh",
            f"tunnel 127.0.0.1:{self.port} -> {remote_host}:{remote_port} on the host",
            host=host.name,
        )

    def _accept(self) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._closed.is_set() or self._listener not in ready:
                return
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            try:
                transport = self.host._ssh().get_transport()
                chan = transport.open_channel(
                    "direct-tcpip", self.remote, peer, timeout=self.host.s.connect_timeout
                )
            except Exception as exc:  # noqa: BLE001 (this thread must outlive any one failure)
                # The host could not reach remote, or the link is down (a reconnect racing a
                # close included): refuse this connection, as a closed port would, and keep
                # accepting. Logged once per connection, as one line.
                event(
                    "ssh",
                    f"tunnel to {self.remote[0]}:{self.remote[1]}: {_why(exc)}",
                    host=self.host.name,
                )
                sock.close()
                continue
            pump = threading.Thread(
                target=self._pump,
                args=(sock, chan),
                name=f"tfship-tunnel-{self.port}-pipe",
                daemon=True,
            )
            with self._lock:
                if self._closed.is_set():
                    sock.close()
                    chan.close()
                    return
                self._pipes.append((sock, chan, pump))
                self.connections += 1
            pump.start()

    def _pump(self, sock: socket.socket, chan: paramiko.Channel) -> None:
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([sock, chan, self._wake_r], [], [])
                if self._closed.is_set():
                    return
                if sock in ready:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(CHUNK)
                    if not data:
                        return
                    sock.sendall(data)
        except (OSError, *TRANSIENT):
            return  # either end went away: the client sees its connection close
        finally:
            sock.close()
            chan.close()
            with self._lock:
                self._pipes = [p for p in self._pipes if p[0] is not sock]

    def close(self) -> None:
        """Stop accepting, close every carried connection, join the threads, free the port."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake_w.send(b"x")  # wakes every select() above: the read end stays readable
        self._thread.join(timeout=10)
        with self._lock:
            pipes = list(self._pipes)
        for sock, chan, pump in pipes:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            chan.close()
            pump.join(timeout=10)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
