#!/usr/bin/env bash
# Tests the corral Python client against this repository's corral binary.
#
#   clients/python/run-tests.sh [PYTEST ARGS...]
#
# Environment:
#   CORRAL_PY_VENV  the virtualenv to create or reuse (default: clients/python/.venv;
#                   /var/tmp/corral-py-venv-* for a checkout under /tmp, which the
#                   analyses' private /tmp would hide)
#   PYTHON          the interpreter that creates it (default: python3; Python >= 3.9)
#   CORRAL_BIN      the corral binary to test against (default: <repo>/target/debug/corral,
#                   built with `cargo build -p corral-cli` first)
#
# schemathesis (pinned below) is installed into "$CORRAL_PY_VENV-schemathesis" when the
# interpreter is Python >= 3.11, and tests/test_openapi.py runs it against a live
# `corral serve`.
# The client's wheel is built once (maturin, installed into the virtualenv from PyPI):
# its size and platform tag are checked, and it is installed alone into a fresh
# virtualenv that runs a real analysis and a real notebook through the bundled binary.
#
# The tests that create cgroups need root and a cgroup hierarchy corral can use; where
# that is missing they are skipped, and pytest's summary says why (-rs).
# tests/test_ui.py drives the service's live page in a headless chromium through
# chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run installs them;
# CORRAL_TEST_CHROMIUM / CORRAL_TEST_CHROMEDRIVER name other binaries) and keeps its
# screenshots in target/ui-screenshots/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# Run by root, corral's analyses see a private /tmp: a checkout under /tmp (a CI clone)
# keeps its virtualenv, whose interpreter the analyses run, outside it.
default_venv="$here/.venv"
case "$(readlink -f "$here")" in
    /tmp/*) default_venv="/var/tmp/corral-py-venv-$(id -u)-$(printf '%s' "$here" | cksum | cut -d' ' -f1)" ;;
esac
venv="${CORRAL_PY_VENV:-$default_venv}"
# Run by root, corral runs the tests' analyses as a dynamic uid, which must be able to
# execute the interpreter: the system's, not one under /root (pyenv's, 0700).
default_python=python3
if [ "$(id -u)" = 0 ] && [ -x /usr/bin/python3 ]; then
    default_python=/usr/bin/python3
fi
python="${PYTHON:-$default_python}"
# A virtualenv made by another interpreter (an older checkout's) is made again.
if [ -f "$venv/pyvenv.cfg" ]; then
    want="$(dirname "$(readlink -f "$(command -v "$python")")")"
    have="$(sed -n 's/^home = //p' "$venv/pyvenv.cfg")"
    if [ "$(readlink -f "$have")" != "$want" ]; then
        echo "run-tests.sh: $venv was made by $have, not $want: making it again" >&2
        rm -rf "$venv"
    fi
fi

if [ -z "${CORRAL_BIN:-}" ]; then
    CORRAL_BIN="$repo/target/debug/corral"
    if command -v cargo >/dev/null; then
        echo "run-tests.sh: cargo build -p corral-cli" >&2
        (cd "$repo" && cargo build --quiet -p corral-cli)
    elif [ ! -x "$CORRAL_BIN" ]; then
        echo "run-tests.sh: no $CORRAL_BIN and no cargo to build it; set CORRAL_BIN" >&2
        exit 1
    fi
fi
export CORRAL_BIN
unset CORRAL_SERVER

if [ ! -x "$venv/bin/python" ]; then
    echo "run-tests.sh: creating the virtualenv $venv" >&2
    "$python" -m venv "$venv" || {
        echo "run-tests.sh: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install -r "$here/requirements-test.txt"
# schemathesis checks the service's /openapi.json against the live service
# (tests/test_openapi.py). It needs Python >= 3.11 and brings its own pytest plugin, so
# it lives in a virtualenv of its own beside this one.
schemathesis_version=4.32.5
if "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    st_venv="$venv-schemathesis"
    if [ ! -x "$st_venv/bin/schemathesis" ] \
        || ! "$st_venv/bin/schemathesis" --version | grep -q "$schemathesis_version"; then
        echo "run-tests.sh: installing schemathesis $schemathesis_version into $st_venv" >&2
        rm -rf "$st_venv"
        "$python" -m venv "$st_venv"
        "$st_venv/bin/python" -m pip --disable-pip-version-check --quiet \
            install "schemathesis==$schemathesis_version"
    fi
    export CORRAL_SCHEMATHESIS="$st_venv/bin/schemathesis"
else
    echo "run-tests.sh: $python is older than 3.11: schemathesis (test_openapi) cannot run" >&2
fi

# The wheel, built once: this package and the `corral` binary (cargo's `wheel` profile:
# release, stripped; target/wheel is reused from one run to the next).
wheels="$repo/target/wheels/run-tests"
rm -rf "$wheels"
echo "run-tests.sh: maturin build (the wheel with the corral binary)" >&2
(cd "$here" && "$venv/bin/maturin" build --quiet --out "$wheels") >&2
wheel="$(ls "$wheels"/corral_client-*.whl)"
# Its size, its platform tag against the glibc its binary needs, and no debug info.
"$venv/bin/python" - "$wheel" <<'PY'
import re, struct, sys, zipfile
wheel = sys.argv[1]
tag = wheel.rsplit("-", 1)[1][: -len(".whl")]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".data/scripts/corral")]
    assert names, f"no corral binary in {wheel}"
    binary = z.read(names[0])
glibc = max(tuple(map(int, m)) for m in re.findall(rb"GLIBC_(\d+)\.(\d+)", binary))
m = re.match(r"manylinux_(\d+)_(\d+)_x86_64", tag)
assert m, f"the wheel's tag {tag} is not a manylinux tag"
assert glibc <= (int(m[1]), int(m[2])), f"the binary needs glibc {glibc}, the tag says {tag}"
# The ELF section names (64-bit little-endian): a stripped binary has no symbol table
# and no debug sections.
shoff, = struct.unpack_from("<Q", binary, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", binary, 0x3A)
def section(i):
    return struct.unpack_from("<IIQQQQ", binary, shoff + i * shentsize)
strtab = section(shstrndx)[4]
names = [binary[strtab + section(i)[0]:].split(b"\0", 1)[0].decode() for i in range(shnum)]
extra = [n for n in names if n == ".symtab" or n.startswith(".debug")]
assert not extra, f"the shipped binary is not stripped: {extra}"
print(f"run-tests.sh: {wheel.rsplit('/', 1)[1]}: {len(open(wheel, 'rb').read()) / 2**20:.1f} MiB "
      f"(binary {len(binary) / 2**20:.1f} MiB, needs glibc >= {glibc[0]}.{glibc[1]})", file=sys.stderr)
PY
# A real (non-editable) install, so the tests import what `pip install` would give. This
# environment tests the client against $CORRAL_BIN (and fakes of it, in the unit tests):
# the bundled binary, which the client would find first, is removed here; the fresh
# environment below tests it.
"${pip[@]}" install --force-reinstall --no-deps "$wheel"
rm -f "$venv/bin/corral"

# A fresh environment with only the wheel (and its notebook extra): no CORRAL_BIN, no
# corral on PATH; a real analysis and a real notebook run through the bundled binary.
fresh="$venv-wheel"
rm -rf "$fresh"
"$python" -m venv "$fresh"
echo "run-tests.sh: the wheel alone in a fresh virtualenv ($fresh)" >&2
"$fresh/bin/python" -m pip --disable-pip-version-check --quiet install "$wheel[notebook]"
scratch="$(mktemp -d /var/tmp/corral-wheel-check.XXXXXX)"
env -u CORRAL_BIN -u CORRAL_SERVER PATH=/usr/bin:/bin \
    "$fresh/bin/python" "$here/tests/wheel_check.py" "$scratch" >&2
rm -rf "$scratch" "$fresh"

cd "$here"
echo "run-tests.sh: mypy --strict (package and tests)" >&2
"$venv/bin/python" -m mypy
echo "run-tests.sh: pytest with CORRAL_BIN=$CORRAL_BIN" >&2
# The src/ layout keeps the checkout off sys.path: the tests import the installed copy.
exec "$venv/bin/python" -m pytest -rs -p no:cacheprovider "$@"
