#!/usr/bin/env bash
# Boots a Debian 12 container with its own systemd (debootstrap + systemd-nspawn), installs
# the .deb there and runs the real units: keystone@web.socket activating the web role,
# keystone@worker and keystone@beat reaching READY=1 under the full sandbox, the watchdog,
# a clean stop (exit 0), no restart loop on a configuration error (exit 78), what the sandbox
# allows (child processes, Unix and TCP sockets: what the worker needs for sacctmgr/munge)
# and denies, then remove and purge. The container has a private network with its own Redis.
#
#   packaging/check-units-nspawn.sh [PACKAGE.deb]
#
# Slower than check-packages.sh (debootstrap downloads ~60 MB; about 2 minutes) and needs
# root with the rights to run systemd-nspawn; installs debootstrap and systemd-container
# with apt when missing. Set KEEP_ROOTFS=DIR to reuse a root file system between runs.
# Ends with `units: N passed, M failed`.
set -uo pipefail

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
deb=${1:-$(ls -t "$target_dir"/packages/keystone_*.deb 2>/dev/null | head -n 1)}

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
summary() { printf 'units: %d passed, %d failed\n' "$passed" "$failed"; }

[ -f "$deb" ] || { echo "no .deb found (run packaging/build-packages.sh first)"; summary; exit 1; }
[ "$(id -u)" = 0 ] || { echo "must run as root"; summary; exit 1; }
for tool in debootstrap:debootstrap systemd-nspawn:systemd-container; do
    command -v "${tool%%:*}" >/dev/null 2>&1 && continue
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null 2>&1 ||
        { echo "cannot install ${tool#*:}"; summary; exit 1; }
done

rootfs=${KEEP_ROOTFS:-$(mktemp -d /var/tmp/keystone-nspawn.XXXXXX)}
chmod 0755 "$rootfs" # it becomes the container's /, which every user must traverse
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        in_ct systemctl poweroff >/dev/null 2>&1 || kill -TERM "$nspawn_pid"
        for _ in $(seq 1 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$nspawn_pid" 2>/dev/null
    fi
    nspawn_pid=
    [ -n "${KEEP_ROOTFS:-}" ] || rm -rf "$rootfs"
}
trap cleanup EXIT

if [ ! -x "$rootfs/usr/lib/systemd/systemd" ]; then
    echo "debootstrap bookworm into $rootfs ..."
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,procps,redis-server \
        bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.debootstrap.log" 2>&1 ||
        { tail -5 "$rootfs.debootstrap.log"; bad "debootstrap failed"; summary; exit 1; }
    rm -f "$rootfs.debootstrap.log"
fi
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$rootfs/etc/hosts"
cp "$deb" "$rootfs/root/keystone.deb"

systemd-nspawn -D "$rootfs" -b --register=no --keep-unit --private-network \
    --console=passive >"$rootfs.nspawn.log" 2>&1 &
nspawn_pid=$!
ct_pid=
for _ in $(seq 1 100); do
    ct_pid=$(pgrep -P "$nspawn_pid" -x systemd | head -n 1)
    [ -n "$ct_pid" ] && break
    sleep 0.2
done
[ -n "$ct_pid" ] || { cat "$rootfs.nspawn.log"; bad "the container did not boot"; summary; exit 1; }
rm -f "$rootfs.nspawn.log"
in_ct() { nsenter -t "$ct_pid" -a "$@"; }
for _ in $(seq 1 100); do
    state=$(in_ct systemctl is-system-running 2>/dev/null)
    case $state in running | degraded) break ;; esac
    sleep 0.2
done
case $state in
    running | degraded) ok "container booted with systemd (system state: $state)" ;;
    *) bad "container did not finish booting (system state: $state)"; summary; exit 1 ;;
esac

if in_ct dpkg -i /root/keystone.deb >/dev/null 2>&1; then ok "dpkg -i in the container"; else bad "dpkg -i"; fi
in_ct runuser -u keystone -- keystone migrate >/dev/null 2>&1 && ok "keystone migrate (as keystone)" || bad "keystone migrate"
in_ct sh -c 'printf "REDIS_HOST=127.0.0.1\nLOG_APP_LEVEL=INFO\n" >>/etc/keystone/keystone.env'
if in_ct systemctl enable --now keystone@web.socket keystone@worker.service keystone@beat.service >/dev/null 2>&1; then
    ok "systemctl enable --now keystone@web.socket keystone@worker.service keystone@beat.service"
else
    bad "enable --now failed: $(in_ct systemctl --no-pager status 'keystone@*' 2>&1 | tail -5)"
fi
show() { in_ct systemctl show "$1" -p "$2" --value; }
for unit in keystone@worker.service keystone@beat.service; do
    [ "$(show "$unit" ActiveState)" = active ] && ok "$unit is active (Type=notify: READY=1 received)" ||
        bad "$unit is $(show "$unit" ActiveState)"
done
[ "$(show keystone@web.socket ActiveState)" = active ] && ok "keystone@web.socket is listening" ||
    bad "keystone@web.socket is $(show keystone@web.socket ActiveState)"
sock=$(in_ct stat -c '%U:%G %a' /run/keystone/keystone.sock 2>/dev/null)
[ "$sock" = "keystone:keystone 660" ] && ok "/run/keystone/keystone.sock is $sock" || bad "socket is '$sock'"
body=$(in_ct curl -sf --max-time 20 --unix-socket /run/keystone/keystone.sock http://localhost/version/)
[ "$body" = "$(in_ct keystone version)" ] && ok "GET /version/ over the socket activates keystone@web: '$body'" ||
    bad "GET /version/ answered '$body'"
[ "$(show keystone@web.service ActiveState)" = active ] && ok "keystone@web.service runs after activation" ||
    bad "keystone@web.service is $(show keystone@web.service ActiveState)"
[ "$(show keystone@web.service User)" = keystone ] && ok "runs as User=keystone" || bad "wrong user"
[ "$(show keystone@web.service WatchdogUSec)" != 0 ] || bad "no watchdog configured"

# What the sandbox allows and denies, checked by a oneshot copy of the unit.
in_ct sh -c 'sed -e "s/^Type=notify/Type=oneshot/" -e "/^NotifyAccess/d" -e "/^WatchdogSec/d" \
    -e "/^Restart/d" -e "s#^ExecStart=.*#ExecStart=/bin/sh /usr/local/bin/keystone-sandbox-probe#" \
    /usr/lib/systemd/system/keystone@.service >/etc/systemd/system/keystone-probe@.service'
cat >"$rootfs/usr/local/bin/keystone-sandbox-probe" <<'EOF'
r() { if sh -c "$2" >/dev/null 2>&1; then echo "yes $1"; else echo "no $1"; fi; }
r child "/bin/true"
r unix-socket "curl -sf --unix-socket /run/keystone/keystone.sock http://localhost/version/"
r tcp "curl -s -o /dev/null --max-time 3 telnet://127.0.0.1:6379 </dev/null; [ \$? -ne 7 ]"
r read-etc "cat /etc/hostname"
r write-state "touch /var/lib/keystone/.probe && rm /var/lib/keystone/.probe"
r write-tmp "touch /tmp/probe"
r write-etc "touch /etc/keystone/probe"
r write-usr "touch /usr/probe"
r read-home "ls /root"
r other-procs "cat /proc/1/environ"
EOF
in_ct systemctl daemon-reload
in_ct systemctl start keystone-probe@x.service
probe=$(in_ct journalctl -u keystone-probe@x.service -o cat --no-pager | grep -E '^(yes|no) ')
expect() { # expect yes|no NAME WHAT
    grep -qx "$1 $2" <<<"$probe" && ok "sandbox: $3" || bad "sandbox: $3 (probe: $(grep " $2\$" <<<"$probe"))"
}
expect yes child "the worker can run child processes (sacctmgr, sshare)"
expect yes unix-socket "connect to Unix sockets under /run (munge)"
expect yes tcp "TCP connections (slurmdbd, PostgreSQL, Redis)"
expect yes read-etc "read /etc (slurm.conf)"
expect yes write-state "write /var/lib/keystone"
expect yes write-tmp "write its private /tmp"
expect no write-etc "cannot write /etc"
expect no write-usr "cannot write /usr"
expect no read-home "cannot read home directories"
expect no other-procs "cannot read other users' processes"

sleep 65
for unit in keystone@worker.service keystone@beat.service keystone@web.service; do
    [ "$(show "$unit" ActiveState)/$(show "$unit" NRestarts)" = active/0 ] &&
        ok "$unit still up after 65 s with WatchdogSec=$(show "$unit" WatchdogUSec): watchdog pings arrive" ||
        bad "$unit: $(show "$unit" ActiveState), restarts $(show "$unit" NRestarts)"
done
started=$(date +%s)
in_ct systemctl stop keystone@web.socket keystone@web.service keystone@worker.service keystone@beat.service
took=$(($(date +%s) - started))
for unit in keystone@web.service keystone@worker.service keystone@beat.service; do
    [ "$(show "$unit" Result)/$(show "$unit" ExecMainStatus)" = success/0 ] &&
        ok "$unit stopped on SIGTERM with exit 0 (all stopped in ${took}s)" ||
        bad "$unit: $(show "$unit" Result), exit $(show "$unit" ExecMainStatus)"
done

in_ct sh -c 'echo LOG_APP_LEVEL=bogus >>/etc/keystone/keystone.env'
in_ct systemctl start keystone@worker.service >/dev/null 2>&1
sleep 7
[ "$(show keystone@worker.service ExecMainStatus)/$(show keystone@worker.service NRestarts)" = 78/0 ] &&
    ok "a configuration error exits 78 and is not restarted in a loop" ||
    bad "config error: exit $(show keystone@worker.service ExecMainStatus), restarts $(show keystone@worker.service NRestarts)"
in_ct sed -i '/bogus/d' /etc/keystone/keystone.env
in_ct systemctl reset-failed 'keystone@*' >/dev/null 2>&1

in_ct systemctl start keystone@worker.service keystone@web.socket >/dev/null 2>&1
in_ct dpkg -r keystone >/dev/null 2>&1 && ok "dpkg -r keystone" || bad "dpkg -r keystone"
[ "$(show keystone@worker.service ActiveState)" != active ] && [ "$(show keystone@web.socket ActiveState)" != active ] &&
    ok "removal stops the running units" || bad "units still running after removal"
in_ct dpkg -P keystone >/dev/null 2>&1 && ok "dpkg -P keystone" || bad "dpkg -P keystone"
in_ct sh -c '! ls /etc/systemd/system/*.wants/ | grep -q keystone' && ok "purge removes the enable links" ||
    bad "enable links left after purge"

cleanup
trap - EXIT
summary
[ "$failed" = 0 ]
