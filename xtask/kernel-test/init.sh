#!/bin/sh
# /init of the kernel-matrix initramfs (`cargo xtask kernel-test`): mount what the agent needs,
# run the scenario, power off. Everything goes to the serial console, which the host parses.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname kernel-matrix
echo "KT KERNEL $(uname -r)"
NGINX_BIN=/bin/nginx CURL_BIN=/bin/curl TLS_CERT=/etc/kt/cert.pem TLS_KEY=/etc/kt/key.pem sh /scenario.sh
poweroff -f
