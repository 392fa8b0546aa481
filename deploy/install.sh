#!/usr/bin/env bash
# Install edgepipe as a systemd service on a Jetson (JetPack 6) or a desktop/server Linux.
#
#   sudo deploy/install.sh --role capture          # the edge device with the camera
#   sudo deploy/install.sh --role monitor          # the server
#   sudo deploy/install.sh --role both             # both on one machine (a lab setup)
#   sudo deploy/install.sh --role relay            # the relay between many captures and monitors
#
# What it does (each step is skipped when already done, so running it again is safe):
#   1. a virtual environment in PREFIX/venv with edgepipe from this checkout
#      (Jetson: --system-site-packages, so JetPack's TensorRT and NVIDIA's PyTorch are used)
#   2. a system user "edgepipe" (no login, no home) that the services run as
#   3. /etc/edgepipe/{capture,monitor,relay}.toml from deploy/*.toml, never overwriting an edited file
#   4. CURVE keys in /etc/edgepipe/keys (secret keys root-only, handed to the service by systemd)
#   5. the unit files in /etc/systemd/system, then daemon-reload and enable (not start: edit the
#      config first, then `systemctl start edgepipe-capture`)
#
# Options:
#   --role capture|monitor|both|relay  which service(s) to install (default: capture)
#   --prefix DIR                  where the venv goes (default: /opt/edgepipe)
#   --venv DIR                    use this existing venv instead of creating PREFIX/venv (no pip)
#   --cpu-torch                   desktop monitor: install the CPU build of PyTorch first (much smaller)
#   --start                       also start the service(s) now
#   --dry-run                     print what would be done, change nothing
# Environment:
#   DESTDIR=/some/root            stage the files under that root (packaging, tests): no user,
#                                 no systemctl, no pip
set -euo pipefail

ROLE=capture
PREFIX=/opt/edgepipe
VENV=""
CPU_TORCH=0
START=0
DRY=0
DESTDIR="${DESTDIR:-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(dirname "$HERE")"

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }
run() {
    if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE="${2:?--role needs capture, monitor, both or relay}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
        --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
        --cpu-torch) CPU_TORCH=1; shift ;;
        --start) START=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$ROLE" in  # EXTRAS: what each role needs beyond the base install (setup.cfg)
    capture) ROLES=(capture); EXTRAS=edge ;;
    monitor) ROLES=(monitor); EXTRAS=server ;;
    both) ROLES=(capture monitor); EXTRAS=edge,server ;;
    relay) ROLES=(relay); EXTRAS=relay ;;  # the base install: pyzmq and prometheus-client only
    *) die "--role must be capture, monitor, both or relay, not '$ROLE'" ;;
esac

if [ -z "$DESTDIR" ] && [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or set DESTDIR to stage the files"
fi

JETSON=0
if [ -e /etc/nv_tegra_release ] || grep -qs "NVIDIA Jetson" /proc/device-tree/model; then
    JETSON=1
fi
say "platform: $([ "$JETSON" = 1 ] && echo "Jetson" || echo "desktop/server Linux"), role: $ROLE"

# --- 1. Python environment ------------------------------------------------------------------------
if [ -n "$VENV" ]; then
    [ -x "$VENV/bin/edgepipe" ] || die "$VENV/bin/edgepipe not found: is edgepipe installed in that venv?"
    say "using the existing venv $VENV"
else
    VENV="$PREFIX/venv"
    if [ -n "$DESTDIR" ]; then
        say "DESTDIR set: not creating $VENV (no pip in a staging root)"
    else
        command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || die "Python >= 3.10 needed, found $(python3 -V 2>&1) (JetPack 6 has 3.10; JetPack 5 is too old)"
        python3 -c 'import venv, ensurepip' 2>/dev/null || die "python3-venv missing (apt-get install python3-venv)"
        if [ ! -x "$VENV/bin/python" ]; then
            if [ "$JETSON" = 1 ]; then
                # see JetPack's TensorRT bindings (apt python3-libnvinfer) and NVIDIA's PyTorch wheel
                run python3 -m venv --system-site-packages "$VENV"
                python3 -c 'import torch' 2>/dev/null || echo "install.sh: warning: no PyTorch in the system" \
                    "Python; install NVIDIA's Jetson wheel first (deploy/jetson.md), or pip fetches a CPU-only one" >&2
            else
                run python3 -m venv "$VENV"
            fi
        fi
        run "$VENV/bin/python" -m pip install -q --upgrade pip
        if [ "$CPU_TORCH" = 1 ]; then
            run "$VENV/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
        fi
        run "$VENV/bin/python" -m pip install -q "${SRC}[${EXTRAS}]"
    fi
fi
EDGEPIPE="$VENV/bin/edgepipe"

# --- 2. service user ------------------------------------------------------------------------------
if [ -z "$DESTDIR" ]; then
    if ! getent group video >/dev/null; then
        run groupadd --system video  # the capture unit adds it (cameras, Jetson GPU nodes)
    fi
    if ! id edgepipe >/dev/null 2>&1; then
        run useradd --system --user-group --home-dir /var/lib/edgepipe --no-create-home \
            --shell /usr/sbin/nologin --comment "edgepipe services" edgepipe
    fi
fi

# --- 3. configuration -----------------------------------------------------------------------------
ETC="$DESTDIR/etc/edgepipe"
run install -d -m 0755 "$ETC" "$ETC/keys"
for role in "${ROLES[@]}"; do
    if [ -e "$ETC/$role.toml" ]; then
        if ! cmp -s "$HERE/$role.toml" "$ETC/$role.toml"; then
            run install -m 0644 "$HERE/$role.toml" "$ETC/$role.toml.new"
            say "kept your $ETC/$role.toml; the shipped example is $role.toml.new"
        fi
    else
        run install -m 0644 "$HERE/$role.toml" "$ETC/$role.toml"
    fi
done

# --- 4. CURVE keys --------------------------------------------------------------------------------
# Secret keys: root-only files; LoadCredential= gives the service its private copy.
for role in "${ROLES[@]}"; do
    if [ ! -e "$ETC/keys/$role.key_secret" ]; then
        if [ "$DRY" = 1 ]; then
            echo "+ $EDGEPIPE keys generate $role --dir $ETC/keys"
        else
            [ -x "$EDGEPIPE" ] || die "$EDGEPIPE not found: cannot generate keys"
            "$EDGEPIPE" keys generate "$role" --dir "$ETC/keys" >/dev/null
        fi
    fi
done
if [[ " ${ROLES[*]} " == *" relay "* ]]; then
    run install -d -m 0755 "$ETC/keys/cameras" "$ETC/keys/monitors"  # the relay's two allow-lists
fi
if [[ " ${ROLES[*]} " == *" capture "* ]]; then
    run install -d -m 0755 "$ETC/keys/allowed"
    if [[ " ${ROLES[*]} " == *" monitor "* ]] && [ ! -e "$ETC/keys/allowed/monitor.key" ]; then
        run install -m 0644 "$ETC/keys/monitor.key" "$ETC/keys/allowed/monitor.key"  # same machine: trust it
    fi
fi

# --- 5. units -------------------------------------------------------------------------------------
UNITS="$DESTDIR/etc/systemd/system"
run install -d -m 0755 "$UNITS"
for role in "${ROLES[@]}"; do
    unit="edgepipe-$role.service"
    if [ "$DRY" = 1 ]; then
        echo "+ install $HERE/$unit -> $UNITS/$unit (ExecStart from $EDGEPIPE)"
    else
        sed "s|/opt/edgepipe/venv/bin/edgepipe|$EDGEPIPE|" "$HERE/$unit" > "$UNITS/$unit.tmp"
        chmod 0644 "$UNITS/$unit.tmp"
        mv "$UNITS/$unit.tmp" "$UNITS/$unit"
    fi
done
run install -d -m 0755 "$DESTDIR/usr/share/doc/edgepipe"
run install -m 0644 "$SRC/docs/deploy.md" "$DESTDIR/usr/share/doc/edgepipe/deploy.md"
if [[ " ${ROLES[*]} " == *" relay "* ]]; then
    run install -m 0644 "$SRC/docs/relay.md" "$DESTDIR/usr/share/doc/edgepipe/relay.md"
fi

if [ -z "$DESTDIR" ]; then
    if command -v systemd-analyze >/dev/null && [ "$DRY" = 0 ]; then
        for role in "${ROLES[@]}"; do
            systemd-analyze verify "$UNITS/edgepipe-$role.service" || die "systemd-analyze verify failed"
        done
    fi
    run systemctl daemon-reload
    for role in "${ROLES[@]}"; do
        run systemctl enable "edgepipe-$role.service"
        if [ "$START" = 1 ]; then
            run systemctl restart "edgepipe-$role.service"
        fi
    done
fi

# --- what is left to the operator -----------------------------------------------------------------
echo
for role in "${ROLES[@]}"; do
    echo "edgepipe-$role: edit $ETC/$role.toml, then: sudo systemctl start edgepipe-$role"
done
if [[ " ${ROLES[*]} " == *" capture "* ]]; then
    echo "capture: copy each monitor's public key (its /etc/edgepipe/keys/monitor.key) into $ETC/keys/allowed/"
fi
if [[ " ${ROLES[*]} " == *" monitor "* ]]; then
    echo "monitor: copy the capture's public key (its /etc/edgepipe/keys/capture.key) to $ETC/keys/capture.key"
fi
if [[ " ${ROLES[*]} " == *" relay "* ]]; then
    echo "relay: copy each capture's public key into $ETC/keys/cameras/ and each monitor's into $ETC/keys/monitors/;"
    echo "       give captures and monitors this relay's public key ($ETC/keys/relay.key) (docs/relay.md)"
fi
echo "logs: journalctl -u edgepipe-capture -f   status: systemctl status edgepipe-capture"
