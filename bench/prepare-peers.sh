#!/bin/sh
# Installs the peers corral-bench compares against and prints their versions:
#   cgexec/cgcreate/cgdelete  Debian's cgroup-tools (apt)
#   runexec                   BenchExec from PyPI, in a venv under target/bench/venv
#   timeout                   coreutils (already there)
#   systemd-run               only used inside `cargo xtask vm --systemd` (the host's
#                             PID 1 is not systemd); it comes with the systemd package.
# Needs root (apt-get). Idempotent. Run from the repository root.
set -eu
cd "$(dirname "$0")/.."
PY=/usr/bin/python3           # not a pyenv shim: the VM starts it too
VENV=target/bench/venv

if ! command -v cgexec >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends cgroup-tools ||
        { apt-get update && apt-get install -y --no-install-recommends cgroup-tools; }
fi

# BenchExec on cgroup v2 outside a delegated scope wants pystemd to make its own
# systemd scope; Debian packages it, and the venv sees it through system site-packages.
if command -v systemctl >/dev/null 2>&1 && ! "$PY" -c 'import pystemd' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends python3-pystemd ||
        { apt-get update && apt-get install -y --no-install-recommends python3-pystemd; } ||
        echo "prepare-peers: python3-pystemd unavailable: runexec will not run on cgroup v2 with systemd" >&2
fi
if [ -f "$VENV/pyvenv.cfg" ] && grep -q 'include-system-site-packages = false' "$VENV/pyvenv.cfg"; then
    rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/runexec" ]; then
    if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends python3-venv ||
            { apt-get update && apt-get install -y --no-install-recommends python3-venv; }
    fi
    mkdir -p target/bench
    "$PY" -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check benchexec
fi

echo "peer versions:"
printf '  cgroup-tools  %s\n' "$(dpkg-query -W -f '${Version}' cgroup-tools 2>/dev/null || echo missing)"
printf '  benchexec     %s\n' "$("$VENV/bin/runexec" --version 2>/dev/null || echo missing)"
printf '  coreutils     %s\n' "$(timeout --version | head -1)"
printf '  systemd       %s\n' "$(systemd-run --version 2>/dev/null | head -1 || echo missing)"
printf '  python        %s\n' "$("$PY" --version)"
printf '  pystemd       %s\n' "$("$VENV/bin/python" -c 'import pystemd, importlib.metadata as m; print(m.version("pystemd"))' 2>/dev/null || echo missing)"
