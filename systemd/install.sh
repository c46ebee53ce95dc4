#!/usr/bin/env bash
# Install edge as a systemd service (used by `make install`). Idempotent: run it again after an
# upgrade. It never overwrites an existing config, key or credential.
#
# Steps (each can be done by hand in the same order):
#   1. the Python environment: /opt/edge/venv with this project installed
#   2. sysusers.d + tmpfiles.d snippets -> the `edge` user (in `bluetooth`), /etc/edge, /var/lib/edge
#   3. the unit -> /etc/systemd/system/edge.service
#   4. the config -> /etc/edge/gateway.toml (from config/gateway.example.toml, only if missing)
#   5. the vault key -> /etc/edge/credstore/vault-key.cred, made with `systemd-creds encrypt`
#      from 32 random bytes that never touch the disk unencrypted (only if missing)
#   6. the TLS client key -> /etc/edge/credstore/client-key.cred, encrypted from the PEM given
#      with --client-key FILE (only if missing)
#   7. systemctl daemon-reload, enable (start it yourself once the config is complete:
#      `edge check-config && edge uplink probe && systemctl start edge`)
#
# Options / environment:
#   --client-key FILE   the hub's PEM private key to turn into the client-key credential
#   DESTDIR=DIR         stage into DIR instead of / (packaging, tests): no users, no venv,
#                       no systemctl; the vault key is written as a 0400 plain file in
#                       $DESTDIR/etc/edge/credstore/vault-key (encrypt it on the target)
#   EDGE_PREFIX=DIR     where the venv goes (default /opt/edge)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
dest="${DESTDIR:-}"
prefix="${EDGE_PREFIX:-/opt/edge}"
client_key=""

while [ $# -gt 0 ]; do
  case "$1" in
    --client-key) client_key="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

staging=0
[ -n "$dest" ] && staging=1
if [ "$staging" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo make install), or set DESTDIR to stage" >&2
  exit 1
fi

say() { printf '  %s\n' "$*"; }
umask 077

# 1. the Python environment
if [ "$staging" = 0 ]; then
  if [ ! -x "$prefix/venv/bin/python" ]; then
    python3 -m venv "$prefix/venv"
  fi
  "$prefix/venv/bin/python" -m pip install -q --upgrade "$repo"
  chmod -R go+rX "$prefix"
  install -m 0644 "$repo/README.md" "$prefix/README.md"
  say "venv: $prefix/venv (edge $("$prefix/venv/bin/edge" --help >/dev/null && echo installed))"
fi

# 2. users and directories
install -d -m 0755 "$dest/etc/sysusers.d" "$dest/etc/tmpfiles.d" "$dest/etc/systemd/system"
install -m 0644 "$here/sysusers.d/edge.conf" "$dest/etc/sysusers.d/edge.conf"
install -m 0644 "$here/tmpfiles.d/edge.conf" "$dest/etc/tmpfiles.d/edge.conf"
if [ "$staging" = 0 ]; then
  systemd-sysusers /etc/sysusers.d/edge.conf
  systemd-tmpfiles --create /etc/tmpfiles.d/edge.conf
else
  install -d -m 0750 "$dest/etc/edge"
  install -d -m 0700 "$dest/etc/edge/credstore" "$dest/var/lib/edge"
fi
say "user edge (group bluetooth), /etc/edge, /var/lib/edge"

# 3. the unit (ours: replaced on upgrade)
install -m 0644 "$here/edge.service" "$dest/etc/systemd/system/edge.service"
say "unit: /etc/systemd/system/edge.service"

# 4. the config: never overwritten
cfg="$dest/etc/edge/gateway.toml"
if [ -e "$cfg" ]; then
  say "config: $cfg exists, left as it is"
else
  example="$repo/config/gateway.example.toml"
  if [ ! -f "$example" ]; then
    echo "install.sh: $example is missing" >&2; exit 1
  fi
  install -m 0640 "$example" "$cfg"
  [ "$staging" = 0 ] && chgrp edge "$cfg"
  say "config: $cfg created from the example — edit [hub], [uplink] and [e2e], then: edge check-config"
fi

# 5. the vault key: never overwritten
cred_dir="$dest/etc/edge/credstore"
if [ "$staging" = 1 ]; then
  if [ -e "$cred_dir/vault-key" ] || [ -e "$cred_dir/vault-key.cred" ]; then
    say "vault key: exists, left as it is"
  else
    (umask 377; openssl rand -hex 32 > "$cred_dir/vault-key")
    say "vault key: $cred_dir/vault-key (plain, 0400: encrypt it on the target)"
  fi
elif [ -e "$cred_dir/vault-key.cred" ]; then
  say "vault key: $cred_dir/vault-key.cred exists, left as it is"
else
  openssl rand -hex 32 | systemd-creds encrypt --name=vault-key - "$cred_dir/vault-key.cred"
  chmod 0600 "$cred_dir/vault-key.cred"
  say "vault key: $cred_dir/vault-key.cred (encrypted with the host key / TPM)"
fi

# 6. the TLS client key: never overwritten
if [ -e "$cred_dir/client-key.cred" ]; then
  say "client key: $cred_dir/client-key.cred exists, left as it is"
elif [ -n "$client_key" ]; then
  if [ "$staging" = 1 ]; then
    install -m 0400 "$client_key" "$cred_dir/client-key"
  else
    systemd-creds encrypt --name=client-key "$client_key" "$cred_dir/client-key.cred"
    chmod 0600 "$cred_dir/client-key.cred"
  fi
  say "client key: stored as a credential; you may now delete $client_key"
else
  say "client key: not given — rerun with --client-key /path/to/hub.key"
fi

# 7. systemd
if [ "$staging" = 0 ]; then
  systemctl daemon-reload
  systemctl enable edge.service >/dev/null
  say "enabled edge.service; allow the broker's address with: systemctl edit edge"
  say "  [Service]"
  say "  IPAddressAllow=<broker address>"
  say "then: edge check-config && systemctl start edge && edge status"
fi
echo "edge installed${dest:+ into $dest}"
