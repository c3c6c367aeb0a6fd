#!/bin/busybox sh
# The guest init of pidvirt-vm (xtask/src/vm/init.sh): initramfs.rs fills in the placeholders.
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fatal() {
    echo "pidvirt-vm: FATAL: $*"
    poweroff -f
    sleep 1000
}
hostname @HOSTNAME@
# The loopback interface: the metrics tests scrape the daemon on 127.0.0.1 (-net none gives no
# other interface, and none is up by itself).
ifconfig lo 127.0.0.1 up || fatal "bringing up lo failed"
echo "pidvirt-vm: kernel release $(uname -r)"
for m in @MODULES@; do
    insmod "/lib/modules/$m" || fatal "insmod $m failed"
done
O9P=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host /share /newroot
mount -t 9p -o "ro,cache=loose,$O9P" hostroot /host || fatal "mounting the host root (9p hostroot) failed"
mount -t 9p -o "$O9P" vmrun /share || fatal "mounting the run directory (9p vmrun) failed"
NONCE=$(cat /share/nonce) || fatal "reading the run nonce failed"
mount -t tmpfs -o mode=0755 newroot /newroot || fatal "mounting the tmpfs root failed"
R=/newroot
for e in /host/* /host/.[!.]* /host/..?*; do
    n=${e#/host/}
    case "$n" in
        proc|sys|dev|run|tmp|vm-results) continue ;;
    esac
    if [ -L "$e" ]; then
        ln -s "$(readlink "$e")" "$R/$n" || fatal "symlink /$n failed"
    elif [ -d "$e" ]; then
        mkdir "$R/$n" && mount -o bind "$e" "$R/$n" || fatal "bind mount of /$n failed"
    elif [ -e "$e" ]; then
        touch "$R/$n" && mount -o bind "$e" "$R/$n" || fatal "bind mount of /$n failed"
    fi
done
mkdir -p $R/proc $R/sys $R/dev $R/run $R/tmp $R/vm-results
mount -t proc proc $R/proc || fatal "mounting proc failed"
mount -t sysfs sysfs $R/sys || fatal "mounting sysfs failed"
mount -t devtmpfs devtmpfs $R/dev || fatal "mounting devtmpfs failed"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts || fatal "mounting devpts failed"
mount -t tmpfs -o mode=1777 shm $R/dev/shm || fatal "mounting /dev/shm failed"
mount -t securityfs securityfs $R/sys/kernel/security || fatal "mounting securityfs failed"
mount -t bpf bpf $R/sys/fs/bpf || fatal "mounting bpffs failed"
mount -t tracefs tracefs $R/sys/kernel/tracing || fatal "mounting tracefs failed"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fatal "mounting cgroup2 failed"
if [ -d $R/sys/kernel/debug ]; then
    mount -t debugfs debugfs $R/sys/kernel/debug || fatal "mounting debugfs failed"
fi
mount -t tmpfs -o mode=0755 run $R/run || fatal "mounting /run failed"
mount -t tmpfs -o mode=1777 tmp $R/tmp || fatal "mounting /tmp failed"
if [ -d $R/var/tmp ]; then
    mount -t tmpfs -o mode=1777 vartmp $R/var/tmp || fatal "mounting /var/tmp failed"
fi
while read -r p; do
    [ -n "$p" ] || continue
    mkdir -p "$R$p" && mount -o bind "/host$p" "$R$p" || fatal "showing the host's $p in the guest failed"
done < /share/expose
mount -o bind /share/results $R/vm-results || fatal "mounting /vm-results failed"
mkdir -p $R/run/pidvirt-vm
cp /bin/busybox /share/cmd.sh $R/run/pidvirt-vm/ || fatal "copying the command script failed"
mount -o remount,ro $R || fatal "remounting the root read-only failed"
echo "pidvirt-vm:$NONCE:start"
# The command's root is the new tree moved over / (as switch_root does), in a mount namespace of
# its own so this script keeps the initramfs: a plain chroot leaves the root of the namespace
# elsewhere, which CRIU refuses ("The root task has another root than mntns").
unshare -m sh -c "cd $R && mount --move . / && exec chroot . /run/pidvirt-vm/busybox env -i /run/pidvirt-vm/busybox sh /run/pidvirt-vm/cmd.sh" </dev/null
RC=$?
# The status file is what the host reads; the marker is for humans (and a fallback: kernel
# messages may be interleaved with it on the serial console).
echo "$RC" > /share/exit-status
sync
echo "pidvirt-vm:$NONCE:exit=$RC"
umount $R/vm-results
umount /share
poweroff -f
sleep 1000
