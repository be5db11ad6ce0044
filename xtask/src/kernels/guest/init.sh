#!/bin/sh
# /init of the kernel matrix's QEMU guests (xtask/src/kernels/initramfs.rs builds the image).
#
# The kernel runs this as PID 1 from the initramfs: it mounts what a host of the agent's kind
# has (proc, sysfs, devtmpfs, a tmpfs /tmp, cgroup2 at /sys/fs/cgroup; tracefs is left to the
# agent, which mounts it when it needs it, as on a host where nobody did), brings up lo, runs
# the checks (/matrix/matrix.sh, the same script the host row runs) and powers the machine
# off, which ends QEMU. Whatever happens, it never returns: PID 1 exiting is a kernel panic,
# which QEMU (-no-reboot, panic=-1) would end too, but with a less readable log.

export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel could not open a console before devtmpfs was there (the image has no /dev nodes).
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "init: cannot mount cgroup2 on /sys/fs/cgroup"
ip link set lo up || echo "init: cannot bring lo up"
hostname scouter-matrix

AGENT=/usr/local/bin/scouter-agent \
PYTHON=/usr/bin/python3.11 \
BUSYBOX=/bin/busybox \
MATRIX_DIR=/matrix \
WORK=/tmp \
PORT=8000 \
READY_SECS=@READY_SECS@ \
    sh /matrix/matrix.sh

sync
poweroff -f
# poweroff needs ACPI; a reboot ends QEMU too (-no-reboot).
sleep 2
reboot -f
