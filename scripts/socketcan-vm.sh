#!/usr/bin/env bash
# Runs the tests that need the kernel's SocketCAN (tests/test_socketcan.py) in a small
# virtual machine, for machines whose kernel has no CAN or where making vcan links is not
# allowed (containers, CI). The guest is Debian's own kernel with its vcan module and two
# emulated CAN controllers wired to each other, booted by QEMU with no network; it sees this
# machine's files read-only and runs the project's .venv from there. Extra arguments go to
# pytest; after --run, they are a command to run in the repository instead (benchmarks write
# to /run/tmp/bench there). Needs x86_64 and apt.
#
#     bash scripts/socketcan-vm.sh -q
#     bash scripts/socketcan-vm.sh --run .venv/bin/python benchmarks/live_socketcan.py
#
# The kernel is fetched once (apt-get download) into ~/.cache/canbridge/socketcan-vm.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [ "$(uname -m)" != x86_64 ]; then
    echo "socketcan-vm: needs an x86_64 machine (this is $(uname -m))" >&2
    exit 2
fi
[ -x .venv/bin/python ] || { echo "socketcan-vm: no .venv here: run scripts/test.sh" >&2; exit 2; }

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/canbridge/socketcan-vm
if [ ! -f "$cache/vmlinuz" ]; then
    kernel_package() {
        apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'
    }
    package=$(kernel_package)
    [ -n "$package" ] || { "${sudo[@]}" apt-get update -qq; package=$(kernel_package); }
    echo "socketcan-vm: fetching Debian's $package (once)"
    rm -rf "$cache" && mkdir -p "$cache/deb"
    (cd "$cache/deb" &&
     apt-get download -q -o APT::Sandbox::User="$(id -un)" "$package" >/dev/null)
    dpkg-deb -x "$cache"/deb/*.deb "$cache/kernel"
    rm -rf "$cache/deb"
    cp "$cache"/kernel/boot/vmlinuz-* "$cache/vmlinuz"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/initrd/bin" "$out/initrd/modules" "$out/share"
# Module load order: each after the ones it depends on (their .ko "depends=" fields).
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs"
modules+=" fscache 9pnet 9pnet_virtio 9p can can-raw can-dev vcan sja1000 kvaser_pci"
for module in $modules; do
    file=$(find "$cache/kernel/lib/modules" -name "$module.ko*" | head -n 1)
    [ -n "$file" ] || { echo "socketcan-vm: the kernel has no $module module" >&2; exit 2; }
    case $file in
        *.xz) xz -dc "$file" > "$out/initrd/modules/$module.ko" ;;
        *.zst) zstd -qdc "$file" > "$out/initrd/modules/$module.ko" ;;
        *) cp "$file" "$out/initrd/modules/$module.ko" ;;
    esac
done
cp /bin/busybox "$out/initrd/bin/busybox"
# The guest's first program: load the modules, mount this machine's files read-only (with
# tmpfs only at /run: the repository may live under /tmp), run guest.sh, power off.
cat > "$out/initrd/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
for module in $modules; do insmod /modules/\$module.ko; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro host /host
mount -t proc proc /host/proc && mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev && mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/run && mkdir /host/run/out /host/run/tmp
mount -t 9p -o trans=virtio,version=9p2000.L out /host/run/out
chroot /host /bin/bash /run/out/guest.sh > /host/run/out/output 2>&1
echo \$? > /host/run/out/rc
sync
poweroff -f
EOF
chmod +x "$out/initrd/init"
(cd "$out/initrd" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$out/initrd.gz"
{
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "export HOME=/run/tmp TMPDIR=/run/tmp PYTHONDONTWRITEBYTECODE=1"
    echo "export CANBRIDGE_BENCH_DATA=/run/tmp/bench"
    echo "export CANBRIDGE_TEST_CAN_CABLE='can0 can1'"
    echo "ip link set lo up"
    printf 'cd %q\n' "$repo"
    if [ "${1:-}" = --run ]; then
        shift
        printf 'exec'
    else
        printf 'exec .venv/bin/python -m pytest -p no:cacheprovider -m socketcan'
        printf ' tests/test_socketcan.py'
    fi
    printf ' %q' "$@"
    echo
} > "$out/share/guest.sh"

echo "socketcan-vm: booting Debian's kernel under QEMU"
# Software emulation (TCG): nested KVM is not there, or hangs, on the cloud machines tried.
# Two emulated Kvaser PCI cards (an SJA1000 each: the kernel's real CAN driver and `ip` output)
# on one emulated bus: can0 and can1, wired to each other.
timeout 1800 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G -nographic -no-reboot \
    -nic none -object can-bus,id=cable -device kvaser_pci,canbus=cable \
    -device kvaser_pci,canbus=cable -kernel "$cache/vmlinuz" -initrd "$out/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$out/share,mount_tag=out,security_model=none" > "$out/console" 2>&1 ||
    true
[ -f "$out/share/output" ] && cat "$out/share/output"
if [ ! -f "$out/share/rc" ]; then
    echo "socketcan-vm: the virtual machine did not finish; its console said:" >&2
    tail -n 30 "$out/console" >&2
    exit 1
fi
exit "$(cat "$out/share/rc")"
