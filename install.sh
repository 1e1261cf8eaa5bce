#!/usr/bin/env bash
# canbridge installer for a Raspberry Pi (Raspberry Pi OS / Debian) with a two-channel CAN HAT.
#
# Run it from a clone of the repository:  sudo ./install.sh      (./install.sh --help)
# It never downloads canbridge itself and never embeds a credential. Every step is idempotent:
# a second run changes nothing, and a run after `git pull` upgrades in place, keeping your
# configuration (/etc/canbridge) and state (/var/lib/canbridge).
set -Eeuo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SRC_DIR

readonly OPT_DIR=/opt/canbridge
readonly VENV=$OPT_DIR/venv
readonly ETC_DIR=/etc/canbridge
readonly PIPELINE=$ETC_DIR/pipeline.toml
readonly STATE_DIR=/var/lib/canbridge
readonly LOG_DIR=/var/log/canbridge
readonly UNIT_DIR=/etc/systemd/system
readonly SERVICE=canbridge.service
readonly LINK_UNIT=canbridge-can@.service
readonly MOSQUITTO_DROPIN=/etc/mosquitto/conf.d/canbridge.conf
readonly MOSQUITTO_PASSWD=/etc/mosquitto/canbridge.passwd
readonly MOSQUITTO_ACL=/etc/mosquitto/canbridge.acl
readonly MOSQUITTO_CERT=/etc/mosquitto/certs/canbridge.crt
readonly MOSQUITTO_KEY=/etc/mosquitto/certs/canbridge.key
readonly MQTT_PASSWORD=$ETC_DIR/mqtt-password
readonly MQTT_USER=canbridge
readonly HA_PASSWORD=$ETC_DIR/homeassistant-mqtt-password
readonly HA_USER=homeassistant
readonly SERVICE_USER=canbridge
readonly COMMAND_LINK=/usr/local/bin/canbridge

# The CAN links: name, bit rate, what is on the other end; --can-link adds more (a USB CAN
# adapter for a second inverter).
LINKS=(
    "can0 250000 the battery (Discover LYNK II)"
    "can1 500000 the inverter (Pylontech)"
)

# Two-channel MCP2518FD CAN HAT (Waveshare 2-CH CAN FD HAT and alike).
readonly OVERLAYS=(
    "dtparam=spi=on"
    "dtoverlay=spi1-3cs"
    "dtoverlay=mcp251xfd,spi0-0,interrupt=25"
    "dtoverlay=mcp251xfd,spi1-0,interrupt=24"
)

usage() {
    cat <<EOF
Usage: sudo ./install.sh [OPTIONS]

Installs canbridge from this clone ($SRC_DIR) as a systemd service:
CAN HAT overlays, Debian packages, CAN links at boot (can0 250 kbit/s battery, can1
500 kbit/s inverter), a '$SERVICE_USER' system user, a venv in $VENV, the pipeline
$PIPELINE (from examples/pipeline.toml, only when absent), the service, and a local
MQTT broker. Run it again after 'git pull' to upgrade; your configuration is kept.

Options:
  --yes                    ask no questions
  --dry-run                print every action, change nothing (no root needed)
  --root DIR               install into DIR as a fake root (for tests): no apt-get, useradd,
                           chown, systemctl or service (re)start
  --skip-venv              do not create the venv or install the package into it
  --mqtt-lan               let other machines (Home Assistant) reach the broker: never
                           without a password; Home Assistant gets its own user
                           '$HA_USER' (password generated and printed once), which may
                           only read unless the pipeline enables MQTT controls
  --mqtt-tls               like --mqtt-lan, but other machines connect with TLS on port
                           8883 (a self-signed certificate made here, kept on reruns)
  --mqtt-password-file FILE
                           the MQTT password for user '$MQTT_USER' (first line of FILE);
                           implies --mqtt-lan
  --mqtt-local             back to a broker reachable from this machine only (the default,
                           unless an earlier run used --mqtt-lan)
  --web-lan                let other machines open the web page (port 8080; read-only:
                           battery state, no controls)
  --can-link NAME:BITRATE  also bring up this CAN link at boot (e.g. can2:500000 for a
                           USB CAN adapter feeding a second inverter); may be repeated
  --no-broker              do not install or configure mosquitto
  --uninstall              remove the service, units, venv and broker settings; keeps
                           $ETC_DIR and $STATE_DIR
  --help                   this text
EOF
}

YES=0
DRY_RUN=0
ROOT=""
SKIP_VENV=0
MQTT_MODE=""
PASSWORD_FILE=""
BROKER=1
WEB_LAN=0
UNINSTALL=0

# What the run did so far, for the later steps and the summary.
STEP="start"
CHANGES=0
FILE_CHANGED=0
UNITS_CHANGED=0
RESTART_NEEDED=0
BROKER_CHANGED=0
CONFIG_FRESH=0
REBOOT_NEEDED=0
GENERATED_HA_PASSWORD=""
NOTES=()

say() { printf '%s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
step() {
    STEP=$1
    printf '\n==> %s\n' "$1"
}
change() {
    CHANGES=$((CHANGES + 1))
    info "$*"
}

on_error() {
    local rc=$1 command=$2
    printf '\ninstall.sh: step "%s" failed (exit status %s) at: %s\n' "$STEP" "$rc" "$command" >&2
    printf 'Nothing after that step was done. Fix the cause and run install.sh again: every step is safe to repeat.\n' >&2
    if [[ $STEP == service ]]; then
        printf 'The service log says why it did not start: journalctl -u %s -n 50\n' "$SERVICE" >&2
    fi
    exit "$rc"
}
# -E: the trap also fires in functions and in $(...), so a command that may fail there
# needs its `|| true`.
trap 'on_error $? "$BASH_COMMAND"' ERR

WORK=$(mktemp -d)
readonly WORK
trap 'rm -rf "$WORK"' EXIT

# The path of system path $1 in the (possibly fake) root.
p() { printf '%s%s' "$ROOT" "$1"; }

# A command as it would be typed: arguments with spaces in quotes.
shown() {
    local arg out=()
    for arg in "$@"; do
        [[ $arg == *[[:space:]]* ]] && arg="'$arg'"
        out+=("$arg")
    done
    printf '%s' "${out[*]}"
}

# Run a command that changes files, or only print it under --dry-run.
run() {
    if ((DRY_RUN)); then
        change "would run: $(shown "$@")"
        return 0
    fi
    change "+ $(shown "$@")"
    "$@"
}

# Run a command that acts on the real system (apt-get, useradd, systemctl): never under --root.
system() {
    if [[ -n $ROOT ]]; then
        info "skipped under --root: $(shown "$@")"
        return 0
    fi
    run "$@"
}

owner_is() {
    [[ -n $ROOT ]] || [[ $(stat -c %U:%G "$1") == "$2" ]]
}

set_owner() {
    [[ -n $ROOT ]] || chown "$2" "$1"
}

# install_file SRC DEST MODE OWNER: give system path DEST the content of file SRC, its mode
# and owner, unless it has them already. Sets FILE_CHANGED.
install_file() {
    local src=$1 dest=$2 mode=$3 owner=$4
    local target
    target=$(p "$dest")
    FILE_CHANGED=0
    if [[ -f $target ]] && cmp -s "$src" "$target" &&
        [[ $(stat -c %a "$target") == "${mode#0}" ]] && owner_is "$target" "$owner"; then
        info "unchanged $dest"
        return 0
    fi
    FILE_CHANGED=1
    if ((DRY_RUN)); then
        if [[ -e $target ]]; then
            change "would update $dest"
        else
            change "would create $dest (mode $mode, owner $owner)"
        fi
        return 0
    fi
    mkdir -p "$(dirname "$target")"
    # Written beside the target and renamed, so nobody ever reads a half-written file.
    install -m "$mode" "$src" "$target.canbridge-new"
    set_owner "$target.canbridge-new" "$owner"
    mv -f "$target.canbridge-new" "$target"
    change "wrote $dest"
}

# install_file_once: like install_file, but an existing DEST is the user's and stays as it is.
install_file_once() {
    FILE_CHANGED=0
    if [[ -e $(p "$2") ]]; then
        info "kept $2 (yours: never overwritten)"
        return 0
    fi
    install_file "$@"
}

# ensure_dir DIR MODE OWNER
ensure_dir() {
    local dir=$1 mode=$2 owner=$3
    local target
    target=$(p "$dir")
    if [[ -d $target ]] && [[ $(stat -c %a "$target") == "${mode#0}" ]] &&
        owner_is "$target" "$owner"; then
        return 0
    fi
    if ((DRY_RUN)); then
        change "would $([[ -d $target ]] && echo set || echo create) $dir (mode $mode, owner $owner)"
        return 0
    fi
    install -d -m "$mode" "$target"
    set_owner "$target" "$owner"
    change "directory $dir (mode $mode, owner $owner)"
}

remove_path() {
    local target
    target=$(p "$1")
    if [[ ! -e $target && ! -L $target ]]; then
        info "already absent: $1"
        return 0
    fi
    if ((DRY_RUN)); then
        change "would remove $1"
        return 0
    fi
    rm -rf -- "$target"
    change "removed $1"
}

service_active() {
    [[ -z $ROOT ]] && systemctl is-active --quiet "$1" 2>/dev/null
}

# Enable units that are not enabled yet (enabling twice is a no-op, but says nothing true).
enable_units() {
    local unit
    for unit in "$@"; do
        if [[ -z $ROOT ]] && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            info "already enabled: $unit"
        else
            system systemctl enable "$unit"
        fi
    done
}

parse_args() {
    while (($#)); do
        case $1 in
        --yes) YES=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --root)
            (($# >= 2)) || die "--root needs a directory"
            [[ -d $2 ]] || die "--root $2: no such directory"
            ROOT=$(cd "$2" && pwd)
            [[ $ROOT != / ]] || ROOT=""
            shift
            ;;
        --skip-venv) SKIP_VENV=1 ;;
        --mqtt-lan) MQTT_MODE=lan ;;
        --mqtt-tls) MQTT_MODE=lan-tls ;;
        --mqtt-local) MQTT_MODE=local ;;
        --mqtt-password-file)
            (($# >= 2)) || die "--mqtt-password-file needs a file"
            PASSWORD_FILE=$2
            shift
            ;;
        --can-link)
            (($# >= 2)) || die "--can-link needs NAME:BITRATE"
            [[ $2 =~ ^(can[0-9]+):([0-9]+)$ ]] || die "--can-link $2: expected NAME:BITRATE, like can2:500000"
            LINKS+=("${BASH_REMATCH[1]} ${BASH_REMATCH[2]} another inverter or adapter (--can-link)")
            shift
            ;;
        --no-broker) BROKER=0 ;;
        --web-lan) WEB_LAN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --help | -h)
            usage
            exit 0
            ;;
        *)
            usage >&2
            printf '\ninstall.sh: unknown option: %s\n' "$1" >&2
            exit 2
            ;;
        esac
        shift
    done
    if ((!BROKER)) && [[ -n $MQTT_MODE || -n $PASSWORD_FILE ]]; then
        die "--no-broker cannot be combined with --mqtt-lan, --mqtt-tls, --mqtt-local or --mqtt-password-file"
    fi
    if [[ -n $PASSWORD_FILE ]]; then
        [[ $MQTT_MODE != local ]] ||
            die "--mqtt-password-file is for the LAN listener (--mqtt-lan); the local one needs none"
        [[ -n $MQTT_MODE ]] || MQTT_MODE=lan
    fi
}

preflight() {
    step "checks"
    [[ -f $(p /etc/debian_version) ]] ||
        die "this installer is for Debian / Raspberry Pi OS: $(p /etc/debian_version) is missing"
    [[ -f $SRC_DIR/pyproject.toml && -f $SRC_DIR/canbridge/__init__.py ]] ||
        die "run install.sh from a clone of the canbridge repository ($SRC_DIR is not one)"
    if [[ -z $ROOT ]] && ((!DRY_RUN)) && ((EUID != 0)); then
        die "installing needs root: sudo $0 $* (or --dry-run to see what it would do)"
    fi
    ((DRY_RUN)) && info "dry run: nothing is changed, every action is printed"
    [[ -n $ROOT ]] && info "fake root $ROOT: no packages, users, ownership or systemctl"
    local what="install or upgrade canbridge"
    ((UNINSTALL)) && what="uninstall canbridge (keeping $ETC_DIR and $STATE_DIR)"
    if ((!YES && !DRY_RUN)); then
        [[ -t 0 ]] || die "no terminal to ask on: run with --yes to $what without questions"
        local answer
        read -r -p "This will $what on this machine. Go on? [y/N] " answer
        [[ $answer == [yY]* ]] || die "stopped: nothing was changed"
    fi
    return 0
}

overlays() {
    step "CAN HAT overlays"
    local config="" candidate
    # Raspberry Pi OS Bookworm moved config.txt to /boot/firmware (a stub stays in /boot).
    for candidate in /boot/firmware/config.txt /boot/config.txt; do
        if [[ -f $(p "$candidate") ]]; then
            config=$candidate
            break
        fi
    done
    if [[ -z $config ]]; then
        info "no /boot/firmware/config.txt or /boot/config.txt: not a Raspberry Pi? skipped"
        return 0
    fi
    local target lines missing=() line
    target=$(p "$config")
    lines=$(sed 's/^[[:space:]]*//; s/[[:space:]]*$//' "$target")
    for line in "${OVERLAYS[@]}"; do
        # Present means an uncommented line of its own (Pi OS ships "#dtparam=spi=on").
        grep -qxF -- "$line" <<<"$lines" || missing+=("$line")
    done
    if ((${#missing[@]} == 0)); then
        info "unchanged $config (the CAN HAT overlays are there)"
        return 0
    fi
    REBOOT_NEEDED=1
    if ((DRY_RUN)); then
        change "would add to $config (after a backup): ${missing[*]}"
        return 0
    fi
    local backup
    backup="$config.canbridge-$(date +%Y%m%d-%H%M%S).bak"
    cp -p "$target" "$(p "$backup")"
    # [all]: lines appended after a [pi4] or [cm4] section would apply to that model only.
    {
        printf '\n[all]\n# Two-channel MCP2518FD CAN HAT for canbridge (added by install.sh)\n'
        printf '%s\n' "${missing[@]}"
    } >>"$target"
    change "added to $config: ${missing[*]} (backup: $backup)"
}

packages() {
    step "Debian packages"
    local wanted=(can-utils python3-venv) missing=() package
    ((BROKER)) && wanted+=(mosquitto mosquitto-clients)
    [[ $MQTT_MODE == lan-tls ]] && wanted+=(openssl)
    if [[ -n $ROOT ]]; then
        info "skipped under --root: would make sure these are installed: ${wanted[*]}"
        return 0
    fi
    for package in "${wanted[@]}"; do
        if [[ $(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true) != installed ]]; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        info "installed already: ${wanted[*]}"
        return 0
    fi
    system apt-get update
    system env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}"
}

can_links() {
    step "CAN links"
    install_file "$SRC_DIR/systemd/$LINK_UNIT" "$UNIT_DIR/$LINK_UNIT" 0644 root:root
    UNITS_CHANGED=$FILE_CHANGED
    local link name bitrate role
    for link in "${LINKS[@]}"; do
        read -r name bitrate role <<<"$link"
        cat >"$WORK/$name.env" <<EOF
# Bit rate of CAN link $name ($role), read by canbridge-can@$name.service
# at boot. Yours to edit: install.sh never overwrites this file.
BITRATE=$bitrate
EOF
        install_file_once "$WORK/$name.env" "$ETC_DIR/$name.env" 0644 root:root
    done
}

user_and_venv() {
    step "user, directories and venv"
    if [[ -n $ROOT ]]; then
        info "skipped under --root: useradd $SERVICE_USER (and every chown)"
    elif id -u "$SERVICE_USER" >/dev/null 2>&1; then
        info "user $SERVICE_USER exists"
    else
        system useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "canbridge battery bridge" "$SERVICE_USER"
    fi
    ensure_dir "$ETC_DIR" 0755 root:root
    ensure_dir "$STATE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$LOG_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"  # battery history: the service group only
    ensure_dir "$OPT_DIR" 0755 root:root

    [[ -f $SRC_DIR/examples/pipeline.toml ]] || die "$SRC_DIR/examples/pipeline.toml is missing"
    install_file_once "$SRC_DIR/examples/pipeline.toml" "$PIPELINE" 0644 root:root
    CONFIG_FRESH=$FILE_CHANGED

    command_link
    if ((SKIP_VENV)); then
        info "skipped (--skip-venv): the venv $VENV and the package in it"
        return 0
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "canbridge needs Python 3.11 or newer (Raspberry Pi OS Bookworm); this is $(python3 -V)"
    if [[ ! -x $(p "$VENV/bin/python") ]]; then
        run python3 -m venv "$(p "$VENV")"
    fi
    # The package is reinstalled only when its sources changed since the last run.
    (cd "$SRC_DIR" && find pyproject.toml README.md canbridge dbc plugins -type f \
        ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) >"$WORK/source.sha256"
    local fingerprint=$OPT_DIR/source.sha256
    if [[ -x $(p "$VENV/bin/canbridge") ]] && cmp -s "$WORK/source.sha256" "$(p "$fingerprint")"; then
        info "unchanged: canbridge in $VENV (same sources as installed)"
        return 0
    fi
    # Built from a copy: pip would leave root-owned build files in the user's clone.
    info "installing canbridge from a copy of $SRC_DIR"
    if ((!DRY_RUN)); then
        mkdir "$WORK/src"
        tar -C "$SRC_DIR" --exclude=./.git --exclude=./.venv --exclude=./build \
            --exclude='*.egg-info' -cf - . | tar -C "$WORK/src" -xf -
    fi
    run "$(p "$VENV/bin/pip")" install --quiet --upgrade "$WORK/src"
    install_file "$WORK/source.sha256" "$fingerprint" 0644 root:root
    RESTART_NEEDED=1
}

# `canbridge status` and friends on everybody's PATH, unless something else has that name.
command_link() {
    local link
    link=$(p "$COMMAND_LINK")
    if [[ -L $link && $(readlink "$link") == "$VENV/bin/canbridge" ]]; then
        info "unchanged $COMMAND_LINK"
    elif [[ -e $link || -L $link ]]; then
        info "left alone: $COMMAND_LINK is not ours; use $VENV/bin/canbridge"
    elif ((DRY_RUN)); then
        change "would link $COMMAND_LINK to $VENV/bin/canbridge"
    else
        mkdir -p "$(dirname "$link")"
        ln -s "$VENV/bin/canbridge" "$link"
        change "linked $COMMAND_LINK to $VENV/bin/canbridge"
    fi
}

# The MQTT password: from --mqtt-password-file, kept from an earlier run, or generated.
mqtt_password() {
    local password=""
    if [[ -n $PASSWORD_FILE ]]; then
        [[ -r $PASSWORD_FILE ]] || die "--mqtt-password-file $PASSWORD_FILE: cannot read it"
        IFS= read -r password <"$PASSWORD_FILE" || true
        [[ -n ${password// /} ]] || die "--mqtt-password-file $PASSWORD_FILE: the first line is empty"
    elif [[ -f $(p "$MQTT_PASSWORD") ]]; then
        IFS= read -r password <"$(p "$MQTT_PASSWORD")" || true
    fi
    [[ -n $password ]] || password=$(new_password)
    printf '%s\n' "$password" >"$WORK/mqtt-password"
}

new_password() {
    head -c 18 /dev/urandom | base64 | tr '+/' '-_'
}

# Home Assistant's own password: kept from an earlier run, else generated (and shown once).
ha_password() {
    local password=""
    if [[ -f $(p "$HA_PASSWORD") ]]; then
        IFS= read -r password <"$(p "$HA_PASSWORD")" || true
    fi
    if [[ -z $password ]]; then
        password=$(new_password)
        GENERATED_HA_PASSWORD=$password
    fi
    printf '%s\n' "$password" >"$WORK/ha-mqtt-password"
}

# pipeline_value KEY DEFAULT: the first `KEY = "value"` (or `KEY = true`) in the pipeline.
pipeline_value() {
    local value
    value=$(sed -n -E "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"?([^\"#[:space:]]*).*/\1/p" \
        "$(p "$PIPELINE")" 2>/dev/null | head -n 1)
    printf '%s\n' "${value:-$2}"
}

# Who may do what: canbridge everything; Home Assistant reads, announces itself, and writes
# the set topics only while the pipeline accepts commands (the mqtt sink's control = true).
broker_acl() {
    {
        printf '%s\n' "# Written by canbridge's install.sh (a rerun rewrites it)." \
            "user $MQTT_USER" "topic readwrite #" "" "user $HA_USER" "topic read #" \
            "topic write $(pipeline_value discovery_prefix homeassistant)/status"
        if [[ $(pipeline_value control false) == true ]]; then
            printf '%s\n' "topic write $(pipeline_value topic_prefix canbridge)/+/set/#"
        fi
    } >"$WORK/broker.acl"
}

# The TLS listener's certificate: made once (kept on reruns, so Home Assistant goes on
# trusting it), self-signed, naming this machine the ways Home Assistant may reach it.
broker_certificate() {
    local cert key host names ip
    cert=$(p "$MOSQUITTO_CERT")
    key=$(p "$MOSQUITTO_KEY")
    if [[ -f $cert && -f $key ]]; then
        info "unchanged $MOSQUITTO_CERT"
        return 0
    fi
    if ((DRY_RUN)); then
        change "would make a self-signed certificate $MOSQUITTO_CERT (key $MOSQUITTO_KEY)"
        return 0
    fi
    command -v openssl >/dev/null || die "openssl is missing (package openssl)"
    host=$(hostname)
    names="DNS:$host,DNS:$host.local,DNS:localhost,IP:127.0.0.1"
    for ip in $(hostname -I 2>/dev/null || true); do
        names+=",IP:$ip"
    done
    mkdir -p "$(dirname "$cert")"
    (
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -days 3650 -subj "/CN=$host" -addext "subjectAltName=$names" \
            -keyout "$key" -out "$cert" 2>/dev/null
    ) || die "openssl could not make the certificate $MOSQUITTO_CERT"
    chmod 0644 "$cert"
    chmod 0640 "$key"
    set_owner "$key" root:mosquitto
    BROKER_CHANGED=1
    change "made a self-signed certificate $MOSQUITTO_CERT (10 years; $names)"
}

broker() {
    step "MQTT broker"
    if ((!BROKER)); then
        info "skipped (--no-broker): the mqtt sink needs a broker of yours"
        return 0
    fi
    local dropin mode=$MQTT_MODE
    dropin=$(p "$MOSQUITTO_DROPIN")
    if [[ -z $mode ]]; then
        mode=local
        if [[ -f $dropin ]] && grep -qx '# mode: lan' "$dropin"; then
            mode=lan
            info "keeping the LAN listener of an earlier --mqtt-lan (--mqtt-local removes it)"
        elif [[ -f $dropin ]] && grep -qx '# mode: lan-tls' "$dropin"; then
            mode=lan-tls
            info "keeping the TLS listener of an earlier --mqtt-tls (--mqtt-local removes it)"
        fi
    fi
    local header="# MQTT broker settings for canbridge, written by its install.sh (a rerun rewrites them)."
    if [[ $mode == local ]]; then
        cat >"$WORK/broker.conf" <<EOF
$header
# mode: local
# This machine only; install.sh --mqtt-lan opens it to Home Assistant on another machine.
listener 1883 127.0.0.1
allow_anonymous true
EOF
    elif [[ $mode == lan ]]; then
        cat >"$WORK/broker.conf" <<EOF
$header
# mode: lan
# Every interface, for Home Assistant on another machine: never without a password.
listener 1883
allow_anonymous false
password_file $MOSQUITTO_PASSWD
acl_file $MOSQUITTO_ACL
EOF
    else
        cat >"$WORK/broker.conf" <<EOF
$header
# mode: lan-tls
# canbridge on this machine; Home Assistant on another over TLS, never without a password.
allow_anonymous false
password_file $MOSQUITTO_PASSWD
acl_file $MOSQUITTO_ACL
listener 1883 127.0.0.1
listener 8883
certfile $MOSQUITTO_CERT
keyfile $MOSQUITTO_KEY
EOF
        broker_certificate
    fi
    if [[ $mode != local ]]; then
        mqtt_password
        install_file "$WORK/mqtt-password" "$MQTT_PASSWORD" 0640 "root:$SERVICE_USER"
        # canbridge reads its password file when it starts.
        ((FILE_CHANGED)) && RESTART_NEEDED=1
        if ((FILE_CHANGED)) || ! has_mosquitto_user "$MQTT_USER"; then
            set_mosquitto_password "$MQTT_USER" "$WORK/mqtt-password"
            BROKER_CHANGED=1
        else
            info "unchanged $MQTT_USER in $MOSQUITTO_PASSWD"
        fi
        ha_password
        install_file "$WORK/ha-mqtt-password" "$HA_PASSWORD" 0600 root:root
        if ((FILE_CHANGED)) || ! has_mosquitto_user "$HA_USER"; then
            set_mosquitto_password "$HA_USER" "$WORK/ha-mqtt-password"
            BROKER_CHANGED=1
        else
            info "unchanged $HA_USER in $MOSQUITTO_PASSWD"
        fi
        pipeline_credentials
        broker_acl
        install_file "$WORK/broker.acl" "$MOSQUITTO_ACL" 0644 root:root
        ((FILE_CHANGED)) && BROKER_CHANGED=1
    fi
    install_file "$WORK/broker.conf" "$MOSQUITTO_DROPIN" 0644 root:root
    ((FILE_CHANGED)) && BROKER_CHANGED=1
    if ((BROKER_CHANGED)); then
        system systemctl restart mosquitto.service
    fi
    return 0
}

has_mosquitto_user() {
    [[ -f $(p "$MOSQUITTO_PASSWD") ]] && grep -q "^$1:" "$(p "$MOSQUITTO_PASSWD")"
}

# set_mosquitto_password USER FILE: USER's hashed password (FILE's first line) for mosquitto;
# the password reaches mosquitto_passwd on stdin, never on a command line.
set_mosquitto_password() {
    local user=$1 source=$2 file create=()
    file=$(p "$MOSQUITTO_PASSWD")
    [[ -f $file ]] || create=(-c)
    if ((DRY_RUN)); then
        change "would run: mosquitto_passwd ${create[*]} $MOSQUITTO_PASSWD $user"
        return 0
    fi
    command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd is missing (package mosquitto)"
    mkdir -p "$(dirname "$file")"
    local password
    IFS= read -r password <"$source"
    (
        umask 077
        printf '%s\n%s\n' "$password" "$password" |
            mosquitto_passwd "${create[@]}" "$file" "$user" >/dev/null
    )
    chmod 0600 "$file"
    if [[ -z $ROOT ]] && id -u mosquitto >/dev/null 2>&1; then
        chown mosquitto:mosquitto "$file"
    fi
    change "set the password of MQTT user $user in $MOSQUITTO_PASSWD"
}

# The mqtt sink needs the credentials too: set them in a pipeline installed by this run,
# otherwise tell the user.
pipeline_credentials() {
    local settings="username = \"$MQTT_USER\"
password_file = \"$MQTT_PASSWORD\""
    # A fresh pipeline is a copy of the example: the settings go after `type = "mqtt"`,
    # replacing commented-out ones.
    if ((CONFIG_FRESH)) && awk -v settings="$settings" '
            /^[[:space:]]*\[/ { in_sink = ($0 ~ /^[[:space:]]*\[sinks\./); mqtt = 0 }
            mqtt && /^[[:space:]]*#[[:space:]]*(username|password_file)[[:space:]]*=/ { next }
            { print }
            in_sink && /^[[:space:]]*type[[:space:]]*=[[:space:]]*"mqtt"/ {
                print settings; n++; mqtt = 1
            }
            END { exit (n == 0) }
        ' "$SRC_DIR/examples/pipeline.toml" >"$WORK/pipeline.toml"; then
        if ((DRY_RUN)); then
            change "would set username and password_file in the mqtt sink of $PIPELINE"
        else
            cat "$WORK/pipeline.toml" >"$(p "$PIPELINE")"
            change "set username and password_file in the mqtt sink of $PIPELINE"
        fi
        return 0
    fi
    if grep -q "^[[:space:]]*password_file[[:space:]]*=[[:space:]]*\"$MQTT_PASSWORD\"" \
        "$(p "$PIPELINE")" 2>/dev/null; then
        info "$PIPELINE uses $MQTT_PASSWORD already"
        return 0
    fi
    NOTES+=("The broker now needs a password. Add these two lines to the mqtt sink
  ([sinks.<name>] with type = \"mqtt\") in $PIPELINE:
    $(printf '%s' "$settings" | sed '2s/^/    /')")
}

service() {
    step "service"
    install_file "$SRC_DIR/systemd/$SERVICE" "$UNIT_DIR/$SERVICE" 0644 root:root
    ((FILE_CHANGED)) && UNITS_CHANGED=1
    ((UNITS_CHANGED)) && system systemctl daemon-reload
    local units=("$SERVICE") link
    for link in "${LINKS[@]}"; do
        units+=("canbridge-can@${link%% *}.service")
    done
    enable_units "${units[@]}"
    if ((REBOOT_NEEDED)); then
        info "not started now: the CAN HAT needs a reboot first (canbridge starts after it)"
    elif ((UNITS_CHANGED || RESTART_NEEDED)) || ! service_active "$SERVICE"; then
        system systemctl restart "$SERVICE"
    else
        info "$SERVICE is running, nothing to restart"
    fi
    return 0
}

check_links() {
    [[ -z $ROOT ]] && ((!REBOOT_NEEDED)) || return 0
    local link
    for link in "${LINKS[@]}"; do
        ip link show "${link%% *}" >/dev/null 2>&1 ||
            NOTES+=("CAN link ${link%% *} does not exist: is the CAN HAT fitted? dmesg | grep -i mcp251")
    done
}

summary() {
    step "done"
    if ((CHANGES == 0)); then
        info "no changes: everything was installed already"
    elif ((DRY_RUN)); then
        info "dry run: $CHANGES action(s) would be taken; nothing was changed"
    else
        info "$CHANGES change(s)"
    fi
    if [[ -n $GENERATED_HA_PASSWORD ]] && ((!DRY_RUN)); then
        local port=1883 tls=""
        if grep -qx '# mode: lan-tls' "$(p "$MOSQUITTO_DROPIN")" 2>/dev/null; then
            port=8883
            tls=", TLS with $MOSQUITTO_CERT as the CA certificate"
        fi
        say ""
        say "MQTT user '$HA_USER' for Home Assistant, generated password (shown only this once, kept in $HA_PASSWORD):"
        say "    $GENERATED_HA_PASSWORD"
        say "Home Assistant: MQTT integration, broker $(hostname -I 2>/dev/null | awk '{print $1}' || true), port $port$tls, this user and password."
    fi
    local note
    for note in "${NOTES[@]}"; do
        say ""
        say "$note"
    done
    if ((REBOOT_NEEDED)); then
        say ""
        say "REBOOT NEEDED: the CAN HAT overlays were added to config.txt. Reboot (sudo reboot),"
        say "then run ./install.sh again: it checks everything and starts canbridge if it is not running."
    fi
    if ((!DRY_RUN)) && [[ -z $ROOT ]]; then
        say ""
        say "Configuration: $PIPELINE   Health: canbridge status   Log: journalctl -u canbridge -f"
    fi
}

uninstall() {
    step "stop the service"
    local units=("$SERVICE") link
    for link in "${LINKS[@]}"; do
        units+=("canbridge-can@${link%% *}.service")
    done
    if [[ -e $(p "$UNIT_DIR/$SERVICE") || -e $(p "$UNIT_DIR/$LINK_UNIT") ]]; then
        system systemctl disable --now "${units[@]}"
    else
        info "no canbridge units installed"
    fi
    step "remove files"
    remove_path "$UNIT_DIR/$SERVICE"
    remove_path "$UNIT_DIR/$LINK_UNIT"
    remove_path "$OPT_DIR"
    if [[ $(readlink "$(p "$COMMAND_LINK")" || true) == "$VENV/bin/canbridge" ]]; then
        remove_path "$COMMAND_LINK"
    fi
    system systemctl daemon-reload
    if [[ -e $(p "$MOSQUITTO_DROPIN") ]]; then
        remove_path "$MOSQUITTO_DROPIN"
        remove_path "$MOSQUITTO_PASSWD"
        remove_path "$MOSQUITTO_ACL"
        remove_path "$MOSQUITTO_CERT"
        remove_path "$MOSQUITTO_KEY"
        system systemctl try-restart mosquitto.service
    fi
    step "done"
    say "canbridge is uninstalled. Kept: $ETC_DIR (your pipeline, CAN bit rates, MQTT"
    say "password), $STATE_DIR (state) and $LOG_DIR (logs); also the user '$SERVICE_USER',"
    say "the Debian packages and the CAN HAT lines in config.txt. Remove them by hand if you"
    say "want them gone; a new install.sh run picks up the kept configuration."
}

# The web sink of the pipeline listens on this machine only; --web-lan opens it to the LAN
# by rewriting the example's listen line (a line the owner changed is left to them).
web_page() {
    ((WEB_LAN)) || return 0
    step "web page"
    local file local_line='listen = "127.0.0.1:8080"' lan_line='listen = "0.0.0.0:8080"'
    file=$(p "$PIPELINE")
    if grep -q "^$lan_line" "$file" 2>/dev/null; then
        info "the web page is open to the LAN already"
    elif grep -q "^$local_line" "$file" 2>/dev/null; then
        if ((DRY_RUN)); then
            change "would let the web page of $PIPELINE listen on the LAN (port 8080)"
        else
            sed -i "s|^$local_line|$lan_line|" "$file"
            change "the web page of $PIPELINE listens on the LAN (port 8080)"
        fi
    else
        NOTES+=("--web-lan: set listen = \"0.0.0.0:8080\" in the web sink of $PIPELINE yourself (its listen line is not the example's).")
    fi
}

main() {
    parse_args "$@"
    preflight "$@"
    if ((UNINSTALL)); then
        uninstall
        return 0
    fi
    overlays
    packages
    can_links
    user_and_venv
    broker
    web_page
    service
    check_links
    summary
}

main "$@"
