"""What ``edge check-config`` checks on the machine itself, beyond the schema: who owns the
keys and the vault's directory, symbolic links, the control socket's directory, the client
certificate's CN, and that what the config names is installed.

Every problem is one line, ``key.path: what — fix: how``, never echoing a value (paths are
shown: the fix needs them).

Who may own a key file or the vault's directory: the user running the command, or root. When
that user is root (an installer's ``sudo edge check-config``), also the ``edge`` system user
the unit runs as (``User=edge`` in systemd/edge.service).

Symbolic links: a key file that is a symbolic link is refused (the file provider opens keys
with ``O_NOFOLLOW``, so the daemon would fail on it; the same rule applies to every key file).
Links in the directories above a key file are followed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.config import GatewayConfig

#: the system user the shipped unit runs as
SERVICE_USER = "edge"

_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def valid_host(value: str) -> bool:
    """A DNS name (letters, digits, '-' per label, at most 253 characters) or an IP address;
    never a URL, a ``host:port``, a bracketed IPv6 address or anything with spaces."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # a malformed IPv4 address such as 10.0.0.256 or 10.1
    return all(_LABEL_RE.fullmatch(label) for label in labels)


def owner_uids() -> frozenset[int]:
    """Who may own key files and the vault's directory (see the module docstring)."""
    uids = {os.geteuid(), 0}
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    return frozenset(uids)


def key_file_problem(key: str, path: Path, st: os.stat_result,
                     owners: Collection[int] | None = None) -> str | None:
    """A key file (``lstat`` result ``st``) that is a link, not a regular file, or owned by
    another user."""
    if stat.S_ISLNK(st.st_mode):
        return (f"{key}: {path} is a symbolic link — fix: set {key} to the file itself "
                "(edge never follows a link to a key)")
    if not stat.S_ISREG(st.st_mode):
        return f"{key}: {path} is not a regular file — fix: point {key} at the key file"
    if st.st_uid not in (owner_uids() if owners is None else owners):
        return (f"{key}: key file {path} belongs to another user — fix: chown it to the user "
                f"edge runs as (or root) and chmod 600 {path}")
    return None


def socket_dir_problem(directory: Path) -> str | None:
    """Why the control socket may not live in ``directory`` (None when it may, or when it does
    not exist yet): writable by others, or owned by another user."""
    try:
        st = directory.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (f"daemon.control_socket: directory {directory} cannot be examined "
                f"({exc.strerror}) — fix: check its permissions")
    if st.st_mode & stat.S_IWOTH:
        return (f"daemon.control_socket: directory {directory} is writable by others — fix: "
                "use a private directory such as /run/edge (systemd RuntimeDirectory=edge)")
    if st.st_uid not in owner_uids():
        return (f"daemon.control_socket: directory {directory} belongs to another user — fix: "
                "use a directory owned by the user edge runs as, such as /run/edge")
    return None


def _certificate_cn(path: Path) -> str | None:
    """The CN of a PEM certificate, "" when it has none; None when unreadable (the TLS layer
    reports a certificate it cannot load)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def environment_problems(cfg: GatewayConfig) -> list[str]:
    """Owners, the socket's directory, the client key given twice, hub.id against the CN."""
    problems: list[str] = []
    vault_dir = cfg.vault.path.parent
    try:
        owner = vault_dir.stat().st_uid
    except OSError:
        owner = None
    if owner is not None and owner not in owner_uids():
        problems.append(
            f"vault.path: directory {vault_dir} belongs to another user — fix: chown it to "
            f"the user edge runs as and chmod 700 {vault_dir}"
        )
    p = socket_dir_problem(cfg.daemon.control_socket.parent)
    if p:
        problems.append(p)
    u = cfg.uplink
    if u.client_key is not None and u.client_key_credential is not None:
        problems.append(
            "uplink.client_key_credential: set together with uplink.client_key — fix: keep "
            "one (the credential on a hub, the file elsewhere) and remove the other"
        )
    cn = _certificate_cn(u.client_cert)
    if cn is not None and cn != cfg.hub.id:
        problems.append(
            "hub.id: differs from the CN of uplink.client_cert (the broker knows the hub by "
            "its CN) — fix: set hub.id to the certificate's CN, or issue a certificate for "
            "this hub id (edge pki csr)"
        )
    return problems


def installed_problems(cfg: GatewayConfig) -> list[str]:
    """What the config names but the machine lacks: the vault's directory, the vault key
    file. (The daemon would create an empty vault in a mistyped directory.)"""
    problems: list[str] = []
    vault_dir = cfg.vault.path.parent
    if not vault_dir.is_dir():
        problems.append(
            f"vault.path: directory {vault_dir} does not exist — fix: create it for the user "
            f"edge runs as (install -d -m 700 -o edge {vault_dir}; systemd's "
            "StateDirectory=edge does this), or correct the path"
        )
    key_file = cfg.vault.key_file
    if cfg.vault.key_provider == "file" and key_file is not None and not os.path.lexists(
        key_file
    ):
        problems.append(
            f"vault.key_file: file {key_file} does not exist — fix: create the key with "
            "`edge keys init`, or correct the path"
        )
    return problems
