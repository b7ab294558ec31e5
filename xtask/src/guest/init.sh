#!/bin/busybox sh
# corral VM, stage 1: PID 1 in the initramfs (built by `cargo xtask vm-setup`).
#
# Mounts the host root (9p, read-only) under a tmpfs overlay at /newroot, the
# per-run control directory at /run/corral-vm/ctl, the repository read-write at
# its host path, the API file systems and cgroup2, then switch_roots into
#   plain mode:   busybox sh /run/corral-vm/wrapper.sh plain  (PID 1)
#   systemd mode: the host's /lib/systemd/systemd --unit=corral.target
# Any failure reboots at once: the host then reports "VM failed to boot".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

log() {
	read -r up _ </proc/uptime
	echo "corral-init [$up] $*" >/dev/console
}
fail() {
	echo "corral-init: FAILED: $*" >/dev/console
	reboot -f
	sleep 5
	exit 1
}

while read -r m; do
	insmod "/modules/$m" || fail "insmod $m"
done </modules/load
log "modules loaded"

P9=trans=virtio,version=9p2000.L,msize=512000
R=/newroot
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fail "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs /rw"
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R ||
	fail "mount overlay"

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $R/run || fail "tmpfs /run"
# /tmp before the repository: a checkout under /tmp must stay visible.
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $R/tmp || fail "/tmp"
mkdir -p $R/run/corral-vm/ctl
mount -t 9p -o "$P9,cache=none" ctl $R/run/corral-vm/ctl || fail "mount ctl"
# CORRAL_MODE, CORRAL_REPO, CORRAL_HOSTNAME, CORRAL_KVER, CORRAL_MODULES,
# CORRAL_TEST_USER, CORRAL_TEST_UID
. $R/run/corral-vm/ctl/config.sh || fail "config.sh"
mkdir -p "$R$CORRAL_REPO"
mount -t 9p -o "$P9,cache=mmap" repo "$R$CORRAL_REPO" || fail "mount repo $CORRAL_REPO"

log "9p and overlay mounted"
# The guest kernel's modules (the host's /lib/modules is for the host kernel).
if [ -d "/lower$CORRAL_MODULES" ]; then
	mkdir -p "$R/lib/modules/$CORRAL_KVER"
	mount --bind "/lower$CORRAL_MODULES" "$R/lib/modules/$CORRAL_KVER"
fi
mount -t proc -o nosuid,nodev,noexec proc $R/proc || fail "proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs $R/sys || fail "sysfs"
mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate,memory_recursiveprot cgroup2 $R/sys/fs/cgroup ||
	fail "cgroup2"
mount -t devtmpfs -o nosuid devtmpfs $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=0666 devpts $R/dev/pts || fail "devpts"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $R/dev/shm || fail "/dev/shm"
# What systemd would otherwise mount by running mount(8) per unit (~2 s of
# CPU each under TCG).
mkdir -p $R/dev/hugepages $R/dev/mqueue
mount -t hugetlbfs -o nosuid,nodev hugetlbfs $R/dev/hugepages
mount -t mqueue -o nosuid,nodev,noexec mqueue $R/dev/mqueue
mount -t debugfs -o nosuid,nodev,noexec debugfs $R/sys/kernel/debug
mount -t tracefs -o nosuid,nodev,noexec tracefs $R/sys/kernel/tracing
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr

# The serial ports that carry the command's stdout and stderr to the host.
OUT= ERR= n=0
while [ -z "$OUT" ] || [ -z "$ERR" ]; do
	for d in /sys/class/virtio-ports/*; do
		case "$(cat "$d/name" 2>/dev/null)" in
		corral.stdout) OUT=/dev/${d##*/} ;;
		corral.stderr) ERR=/dev/${d##*/} ;;
		esac
	done
	n=$((n + 1))
	[ $n -gt 500 ] && fail "virtio ports not found"
	[ -z "$OUT" ] || [ -z "$ERR" ] && usleep 10000
done
printf 'OUT=%s\nERR=%s\n' "$OUT" "$ERR" >$R/run/corral-vm/ports
log "ports $OUT $ERR"

cp /bin/busybox /wrapper.sh $R/run/corral-vm/ || fail "copy busybox"
hostname "$CORRAL_HOSTNAME"
echo "$CORRAL_HOSTNAME" >$R/etc/hostname
ip link set lo up
# Not a container: systemd would otherwise ignore systemd.unit= and more.
rm -f $R/.dockerenv $R/run/.containerenv

# Unprivileged test user with its home on the /run tmpfs.
if ! grep -q "^$CORRAL_TEST_USER:" $R/etc/passwd; then
	echo "$CORRAL_TEST_USER:x:$CORRAL_TEST_UID:$CORRAL_TEST_UID:corral VM test user:/run/$CORRAL_TEST_USER:/bin/sh" >>$R/etc/passwd
	echo "$CORRAL_TEST_USER:x:$CORRAL_TEST_UID:" >>$R/etc/group
	[ -f $R/etc/shadow ] && echo "$CORRAL_TEST_USER:*:19000:0:99999:7:::" >>$R/etc/shadow
fi
mkdir -p -m 0700 "$R/run/$CORRAL_TEST_USER"
chown "$CORRAL_TEST_UID:$CORRAL_TEST_UID" "$R/run/$CORRAL_TEST_USER"

log "switching root ($CORRAL_MODE)"
if [ "$CORRAL_MODE" != systemd ]; then
	exec switch_root $R /run/corral-vm/busybox sh /run/corral-vm/wrapper.sh plain
	fail "switch_root"
fi

# systemd mode: boot into corral.target = basic.target + bus + user manager.
[ -x $R/lib/systemd/systemd ] || fail "/lib/systemd/systemd not found on the host"
S=$R/etc/systemd/system
mkdir -p $S
# Mask every generator (system, user, environment): each is a process start
# from 9p under TCG, and they would only add units we do not want.
for kind in system-generators user-generators system-environment-generators \
	user-environment-generators; do
	mkdir -p "$R/etc/systemd/$kind"
	for g in $R/lib/systemd/$kind/* $R/usr/lib/systemd/$kind/* \
		$R/usr/local/lib/systemd/$kind/*; do
		[ -e "$g" ] && ln -sf /dev/null "$R/etc/systemd/$kind/${g##*/}"
	done
done
: >$R/etc/fstab
# journald: volatile, no kernel log import (it is all in dmesg anyway).
mkdir -p $R/etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nAudit=no\n' >$R/etc/systemd/journald.conf.d/corral.conf
# A trimmed sysinit.target: units that make no sense in a throw-away VM
# without network or disks are masked (with them, reaching basic.target over
# 9p under TCG took ~25 s more), and so are all timers (apt-daily & co).
for u in systemd-timesyncd.service systemd-pstore.service systemd-update-utmp.service \
	systemd-journal-flush.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
	proc-sys-fs-binfmt_misc.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
	kmod-static-nodes.service systemd-random-seed.service systemd-sysusers.service \
	systemd-firstboot.service systemd-machine-id-commit.service systemd-repart.service \
	systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-modules-load.service \
	modprobe@drm.service modprobe@dm_mod.service modprobe@efi_pstore.service \
	modprobe@loop.service modprobe@configfs.service modprobe@fuse.service \
	systemd-journald-audit.socket; do
	ln -sf /dev/null "$S/$u"
done
for t in $R/etc/systemd/system/timers.target.wants/* $R/usr/lib/systemd/system/timers.target.wants/*; do
	[ -e "$t" ] || [ -L "$t" ] && ln -sf /dev/null "$S/${t##*/}"
done
# The bus, logind and the test user's manager start without waiting for
# sysinit.target (systemd-user-runtime-dir asks the bus-activated logind for
# the runtime dir size).
for u in dbus.socket dbus.service user@.service user-runtime-dir@.service \
	systemd-logind.service; do
	mkdir -p "$S/$u.d"
	printf '[Unit]\nDefaultDependencies=no\n' >"$S/$u.d/corral.conf"
done
# A shorter unit search path for the test user's manager too (see
# SYSTEMD_UNIT_PATH below; its home is on tmpfs).
H=/run/$CORRAL_TEST_USER X=/run/user/$CORRAL_TEST_UID/systemd
mkdir -p "$S/user@$CORRAL_TEST_UID.service.d"
cat >"$S/user@$CORRAL_TEST_UID.service.d/corral-env.conf" <<EOF
[Service]
Environment=SYSTEMD_UNIT_PATH=$H/.config/systemd/user.control:$X/user.control:$X/transient:$X/generator.early:$H/.config/systemd/user:/etc/systemd/user:$X/user:/run/systemd/user:$X/generator:$H/.local/share/systemd/user:/usr/lib/systemd/user:$X/generator.late
EOF
cat >$S/corral.target <<EOF
[Unit]
Description=corral VM test boot
Wants=basic.target dbus.socket dbus.service systemd-logind.service user@$CORRAL_TEST_UID.service corral-kick.service
After=basic.target dbus.socket dbus.service user@$CORRAL_TEST_UID.service
EOF
# Started only once the boot transaction is over, so that CMD sees
# "systemctl is-system-running" = running rather than "starting" (the boot
# counts as finished as soon as this Type=exec job completes, i.e. before
# systemctl connects).
cat >$S/corral-kick.service <<EOF
[Unit]
Description=Start the corral test command after boot
DefaultDependencies=no
After=corral.target
[Service]
Type=exec
ExecStart=/bin/systemctl start --no-block corral-test.service
EOF
cat >$S/corral-test.service <<EOF
[Unit]
Description=corral VM test command
DefaultDependencies=no
After=corral.target
SuccessAction=reboot-immediate
FailureAction=reboot-immediate
[Service]
Type=oneshot
Delegate=yes
TimeoutStartSec=infinity
StandardInput=null
StandardOutput=file:$OUT
StandardError=file:$ERR
ExecStart=/run/corral-vm/busybox sh /run/corral-vm/wrapper.sh systemd
EOF
# Fewer unit directories on 9p: every unit and drop-in lookup probes each one,
# and a failed 9p lookup costs ~1 ms under TCG (no negative dentry cache).
if [ -L $R/lib ]; then U=/usr/lib/systemd/system; else U=/lib/systemd/system:/usr/lib/systemd/system; fi
export SYSTEMD_UNIT_PATH=/etc/systemd/system.control:/run/systemd/system.control:/run/systemd/transient:/run/systemd/generator.early:/etc/systemd/system:/run/systemd/system:/run/systemd/generator:$U:/run/systemd/generator.late
exec switch_root $R /lib/systemd/systemd --unit=corral.target
fail "switch_root to systemd"
