#!/usr/bin/env bash
# Checks the packages built by packaging/build-packages.sh (spec/operations.md §5.2–5.3):
# file lists and config-file markings of the .deb and the .rpm, `systemd-analyze verify` on
# the units, then installs the .deb on THIS machine (root, a throwaway machine such as CI),
# checks what the maintainer scripts did, serves /version/ with the installed binary under
# systemd-socket-activate as user keystone, reinstalls (upgrade path), removes and purges.
#
#   packaging/check-packages.sh [PACKAGE.deb PACKAGE.rpm]
#
# Without arguments the newest packages in <target dir>/packages/ are used (CARGO_TARGET_DIR
# honoured). Prints one line per check and ends with `packages: N passed, M failed`; exits
# non-zero when anything failed. Leaves the machine as it found it (package purged; the
# keystone user removed again when this script's install created it).
set -uo pipefail

cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
note() { printf '      %s\n' "$*"; }
summary() { printf 'packages: %d passed, %d failed\n' "$passed" "$failed"; }
# A failure that makes the remaining checks meaningless.
fatal() { bad "$*"; cleanup; summary; exit 1; }
# check "description" command...: one check from a command's exit status.
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}

work=$(mktemp -d /tmp/keystone-check.XXXXXX)
chmod 0755 "$work"
server_pid=
installed_here=0
user_existed=0
getent passwd keystone >/dev/null && user_existed=1

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    server_pid=
    if [ "$installed_here" = 1 ] && dpkg-query -W -f='${Status}' keystone 2>/dev/null | grep -qv 'not-installed'; then
        dpkg --purge keystone >/dev/null 2>&1
    fi
    installed_here=0
    if [ "$user_existed" = 0 ] && getent passwd keystone >/dev/null; then
        userdel keystone >/dev/null 2>&1
        getent group keystone >/dev/null && groupdel keystone >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap 'cleanup' EXIT
trap 'cleanup; summary; exit 130' INT TERM

# ---- packages and tools ---------------------------------------------------------------
deb=${1:-}
rpm=${2:-}
[ -n "$deb" ] || deb=$(ls -t "$target_dir"/packages/keystone_*.deb 2>/dev/null | head -n 1)
[ -n "$rpm" ] || rpm=$(ls -t "$target_dir"/packages/keystone-*.rpm 2>/dev/null | head -n 1)
[ -f "$deb" ] || fatal "no .deb found (run packaging/build-packages.sh first)"
[ -f "$rpm" ] || fatal "no .rpm found (run packaging/build-packages.sh first)"
[ "$(id -u)" = 0 ] || fatal "must run as root: it installs the .deb on this machine"

apt_updated=0
need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
        fatal "cannot install $2 (needed for $1)"
}
need rpm rpm
need curl curl
need systemd-analyze systemd
need systemd-socket-activate systemd
need setpriv util-linux

printf 'deb: %s (%s bytes)\n' "$deb" "$(stat -c %s "$deb")"
printf 'rpm: %s (%s bytes)\n' "$rpm" "$(stat -c %s "$rpm")"
deb_version=$(dpkg-deb -f "$deb" Version)
app_version=${deb_version%-*}

# ---- .deb contents ----------------------------------------------------------------------
dpkg-deb -c "$deb" >"$work/deb-files" 2>&1 || fatal "dpkg-deb -c cannot read $deb"
echo '--- dpkg-deb -c'
awk '{printf "%s %s %9s %s\n", $1, $2, $3, $6}' "$work/deb-files"
# deb_file MODE PATH: the path is in the package with that mode, owned by root.
deb_file() {
    if grep -Eq -e "^$1 (root/root|0/0) .* \./${2#/}\$" "$work/deb-files"; then
        ok "deb contains $2 ($1)"
    else
        bad "deb lacks $2 with mode $1"
    fi
}
deb_file -rwxr-xr-x /usr/bin/keystone
deb_file -rw-r--r-- /usr/lib/systemd/system/keystone@.service
deb_file -rw-r--r-- /usr/lib/systemd/system/keystone@.socket
deb_file -rw-r--r-- /usr/lib/sysusers.d/keystone.conf
deb_file -rw-r--r-- /usr/lib/tmpfiles.d/keystone.conf
deb_file -rw-r----- /etc/keystone/keystone.toml
deb_file -rw-r----- /etc/keystone/keystone.env
deb_file -rw-r--r-- /usr/share/bash-completion/completions/keystone
deb_file -rw-r--r-- /usr/share/zsh/vendor-completions/_keystone
deb_file -rw-r--r-- /usr/share/fish/vendor_completions.d/keystone.fish
deb_file -rw-r--r-- /usr/share/man/man1/keystone.1.gz
deb_file -rw-r--r-- /usr/share/man/man1/keystone-serve.1.gz
deb_file -rw-r--r-- /usr/share/man/man1/keystone-migrate.1.gz
deb_file -rw-r--r-- /usr/share/doc/keystone/examples/nginx.conf
deb_file -rw-r--r-- /usr/share/doc/keystone/deployment.md

dpkg-deb -I "$deb" conffiles >"$work/deb-conffiles" 2>&1
echo '--- dpkg-deb -I conffiles'
cat "$work/deb-conffiles"
if [ "$(sort "$work/deb-conffiles")" = "$(printf '/etc/keystone/keystone.env\n/etc/keystone/keystone.toml')" ]; then
    ok "deb conffiles are exactly keystone.toml and keystone.env"
else
    bad "deb conffiles differ from /etc/keystone/keystone.{toml,env}"
fi
for script in postinst prerm postrm; do
    dpkg-deb -I "$deb" "$script" >"$work/deb-$script" 2>/dev/null || true
done
grep -q 'systemd-sysusers' "$work/deb-postinst" && grep -q 'systemd-tmpfiles --create' "$work/deb-postinst" &&
    grep -q 'daemon-reload' "$work/deb-postinst" &&
    ok "deb postinst: sysusers, tmpfiles --create, daemon-reload" ||
    bad "deb postinst misses sysusers, tmpfiles --create or daemon-reload"
# Messages may name commands; executed lines must never enable, start or restart a unit.
if cat "$work"/deb-postinst "$work"/deb-prerm "$work"/deb-postrm | grep -v '^[[:space:]]*\(#\|echo\)' |
    grep -Eq 'systemctl[^|;&]*[[:space:]](enable|start|restart|reload-or-restart|try-restart)[[:space:]]|deb-systemd-invoke'; then
    bad "deb maintainer scripts enable, start or restart units"
else
    ok "deb maintainer scripts never enable, start or restart units"
fi

# ---- .rpm contents ----------------------------------------------------------------------
rpmq() { rpm -qp --nosignature --nodigest "$@" "$rpm" 2>/dev/null; }
rpmq --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' >"$work/rpm-files"
echo '--- rpm -qlp (mode, owner, group, path)'
cat "$work/rpm-files"
rpmq -l >"$work/rpm-list"
rpm_file() { # rpm_file "MODE USER GROUP" PATH
    if grep -qxF -e "$1 $2" "$work/rpm-files"; then ok "rpm contains $2 ($1)"; else bad "rpm lacks $2 as $1"; fi
}
[ -s "$work/rpm-list" ] && ok "rpm -qlp lists $(wc -l <"$work/rpm-list") paths" || bad "rpm -qlp lists nothing"
rpm_file "-rwxr-xr-x root root" /usr/bin/keystone
rpm_file "-rw-r--r-- root root" /usr/lib/systemd/system/keystone@.service
rpm_file "-rw-r--r-- root root" /usr/lib/systemd/system/keystone@.socket
rpm_file "-rw-r--r-- root root" /usr/lib/sysusers.d/keystone.conf
rpm_file "-rw-r--r-- root root" /usr/lib/tmpfiles.d/keystone.conf
rpm_file "-rw-r----- root keystone" /etc/keystone/keystone.toml
rpm_file "-rw-r----- root keystone" /etc/keystone/keystone.env
rpm_file "-rw-r--r-- root root" /usr/share/bash-completion/completions/keystone
rpm_file "-rw-r--r-- root root" /usr/share/zsh/site-functions/_keystone
rpm_file "-rw-r--r-- root root" /usr/share/fish/vendor_completions.d/keystone.fish
rpm_file "-rw-r--r-- root root" /usr/share/man/man1/keystone.1.gz
rpm_file "-rw-r--r-- root root" /usr/share/man/man1/keystone-serve.1.gz
rpm_file "-rw-r--r-- root root" /usr/share/doc/keystone/examples/nginx.conf
echo '--- rpm -qcp'
rpmq -c | tee "$work/rpm-config"
if [ "$(sort "$work/rpm-config")" = "$(printf '/etc/keystone/keystone.env\n/etc/keystone/keystone.toml')" ]; then
    ok "rpm config files are exactly keystone.toml and keystone.env"
else
    bad "rpm config files differ from /etc/keystone/keystone.{toml,env}"
fi
rpmq --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' >"$work/rpm-flags"
if grep -q '^cn* /etc/keystone/keystone.toml$' "$work/rpm-flags" && grep -q '^cn* /etc/keystone/keystone.env$' "$work/rpm-flags"; then
    ok "rpm config files are %config(noreplace)"
else
    bad "rpm config files are not %config(noreplace): $(grep /etc/keystone/keystone "$work/rpm-flags" | tr '\n' ' ')"
fi
rpmq --scripts >"$work/rpm-scripts"
grep -q 'systemd-sysusers' "$work/rpm-scripts" && grep -q 'systemd-tmpfiles --create' "$work/rpm-scripts" &&
    grep -q 'daemon-reload' "$work/rpm-scripts" &&
    ok "rpm scriptlets: sysusers, tmpfiles --create, daemon-reload" ||
    bad "rpm scriptlets miss sysusers, tmpfiles --create or daemon-reload"
grep -q 'install -d -m 0755 /etc/keystone/templates' "$work/rpm-scripts" &&
    ok "rpm %post creates /etc/keystone/templates" || bad "rpm scriptlets do not create /etc/keystone/templates"
if grep -v '^[[:space:]]*\(#\|echo\)' "$work/rpm-scripts" |
    grep -Eq 'systemctl[^|;&]*[[:space:]](enable|start|restart|reload-or-restart|try-restart)[[:space:]]'; then
    bad "rpm scriptlets enable, start or restart units"
else
    ok "rpm scriptlets never enable, start or restart units"
fi

# ---- units, before installing: the packaged files, ExecStart pointed at the packaged binary
mkdir -p "$work/deb-root" "$work/units"
dpkg-deb -x "$deb" "$work/deb-root"
sed "s#^ExecStart=/usr/bin/keystone#ExecStart=$work/deb-root/usr/bin/keystone#" \
    "$work/deb-root/usr/lib/systemd/system/keystone@.service" >"$work/units/keystone@.service"
cp "$work/deb-root/usr/lib/systemd/system/keystone@.socket" "$work/units/"
for unit in keystone@web.service keystone@worker.service keystone@beat.service keystone@web.socket; do
    if (cd "$work/units" && systemd-analyze verify --man=no "./$unit") >"$work/verify.log" 2>&1; then
        ok "systemd-analyze verify $unit (packaged unit)"
    else
        bad "systemd-analyze verify $unit: $(tr '\n' ' ' <"$work/verify.log")"
    fi
done
unit_has() { # unit_has FILE LINE: the unit contains exactly this line
    grep -qxF "$2" "$work/deb-root/usr/lib/systemd/system/$1" && ok "$1: $2" || bad "$1 lacks $2"
}
for line in Type=notify NotifyAccess=main User=keystone Group=keystone \
    EnvironmentFile=-/etc/keystone/keystone.env 'ExecStart=/usr/bin/keystone serve --role %i' \
    StateDirectory=keystone StateDirectoryMode=0750 ConfigurationDirectory=keystone \
    WorkingDirectory=/var/lib/keystone Restart=on-failure ProtectSystem=strict \
    ReadWritePaths=/var/lib/keystone CapabilityBoundingSet= SystemCallFilter=@system-service \
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' WantedBy=multi-user.target; do
    unit_has keystone@.service "$line"
done
for line in ListenStream=/run/keystone/keystone.sock SocketUser=keystone SocketGroup=keystone \
    SocketMode=0660 Accept=no WantedBy=sockets.target; do
    unit_has keystone@.socket "$line"
done
stop_timeout=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s*$/\1/p' "$work/deb-root/usr/lib/systemd/system/keystone@.service")
[ "${stop_timeout:-0}" -ge 30 ] && ok "TimeoutStopSec=${stop_timeout}s (>= 30 s, above shutdown.grace_seconds 25)" ||
    bad "TimeoutStopSec must be at least 30 s (got '${stop_timeout:-unset}')"
! grep -q '^ExecReload=' "$work/deb-root/usr/lib/systemd/system/keystone@.service" &&
    ok "no ExecReload (reload is not supported)" || bad "ExecReload present but reload is not supported"

# ---- install --------------------------------------------------------------------------
if dpkg-query -W -f='${Status}' keystone 2>/dev/null | grep -q 'install ok'; then
    fatal "package keystone is already installed here; remove it before running this check"
fi
installed_here=1
if dpkg -i "$deb" >"$work/dpkg-i.log" 2>&1; then
    ok "dpkg -i $(basename "$deb")"
else
    cat "$work/dpkg-i.log"
    fatal "dpkg -i failed"
fi
sed 's/^/      | /' "$work/dpkg-i.log"
if getent passwd keystone >"$work/passwd"; then
    if [ "$user_existed" = 1 ]; then
        ok "user keystone exists (it existed before this run; sysusers left it alone)"
    else
        ok "postinst created user keystone"
    fi
    IFS=: read -r _ _ _ _ _ home shell <"$work/passwd"
    [ "$home" = /var/lib/keystone ] && ok "keystone's home is /var/lib/keystone" || bad "keystone's home is $home"
    case $shell in */nologin | */false) ok "keystone has no login shell ($shell)" ;; *) bad "keystone's shell is $shell" ;; esac
else
    fatal "postinst did not create user keystone"
fi
check "group keystone exists" getent group keystone
stat_is() { # stat_is PATH "OWNER:GROUP MODE"
    local got
    got=$(stat -c '%U:%G %a' "$1" 2>/dev/null)
    [ "$got" = "$2" ] && ok "$1 is $2" || bad "$1 is '${got:-missing}', expected $2"
}
stat_is /var/lib/keystone "keystone:keystone 750"
stat_is /var/lib/keystone/media "keystone:keystone 770"
stat_is /etc/keystone/keystone.toml "root:keystone 640"
stat_is /etc/keystone/keystone.env "root:keystone 640"
stat_is /etc/keystone/templates "root:root 755"
stat_is /usr/bin/keystone "root:root 755"
dpkg-query -W -f='${Conffiles}\n' keystone >"$work/conffiles"
grep -q '^ /etc/keystone/keystone.toml [0-9a-f]*$' "$work/conffiles" &&
    ok "dpkg records /etc/keystone/keystone.toml as a conffile" || bad "/etc/keystone/keystone.toml is not a conffile"
grep -q '^ /etc/keystone/keystone.env [0-9a-f]*$' "$work/conffiles" &&
    ok "dpkg records /etc/keystone/keystone.env as a conffile" || bad "/etc/keystone/keystone.env is not a conffile"
got_version=$(/usr/bin/keystone version 2>&1)
[ "$got_version" = "$app_version" ] && ok "keystone version prints $got_version (package $deb_version)" ||
    bad "keystone version prints '$got_version', package is $deb_version"

# Installed units, now with the real binary and man page in place.
if command -v man >/dev/null 2>&1; then man_check=--man=yes; else man_check=--man=no; fi
if systemd-analyze verify $man_check keystone@web.service keystone@worker.service keystone@beat.service \
    keystone@web.socket >"$work/verify.log" 2>&1; then
    ok "systemd-analyze verify $man_check on the installed units"
else
    bad "systemd-analyze verify on the installed units: $(tr '\n' ' ' <"$work/verify.log")"
fi
if zcat /usr/share/man/man1/keystone.1.gz | grep -q '^\.TH'; then
    ok "man page keystone(1) is a roff page"
else
    bad "man page keystone(1) is not a roff page"
fi
# keystone(1) names a page per subcommand, keystone-serve(1) and so on: each must be there.
missing=
for page in $(zcat /usr/share/man/man1/keystone.1.gz | grep -o 'keystone\\-[a-z\\-]*(1)' | sed 's/\\-/-/g; s/(1)$//'); do
    [ -f "/usr/share/man/man1/$page.1.gz" ] || missing="$missing $page"
done
[ -z "$missing" ] && ok "every page keystone(1) refers to is installed" || bad "keystone(1) refers to missing pages:$missing"
if command -v man >/dev/null 2>&1; then
    MANPAGER=cat MANWIDTH=80 man keystone 2>/dev/null | grep -q 'keystone-serve(1)' && ok "man keystone renders and lists keystone-serve(1)" ||
        bad "man keystone does not render"
    MANPAGER=cat MANWIDTH=80 man keystone-serve 2>/dev/null | grep -q -e '--role' && ok "man keystone-serve renders and documents --role" ||
        bad "man keystone-serve does not render"
fi
check "bash completion parses (bash -n)" bash -n /usr/share/bash-completion/completions/keystone
grep -q 'complete -F' /usr/share/bash-completion/completions/keystone &&
    ok "bash completion registers for keystone" || bad "bash completion does not register"
grep -q '^#compdef keystone' /usr/share/zsh/vendor-completions/_keystone &&
    ok "zsh completion starts with #compdef keystone" || bad "zsh completion lacks #compdef"
grep -q '^complete -c keystone' /usr/share/fish/vendor_completions.d/keystone.fish &&
    ok "fish completion completes keystone" || bad "fish completion does not complete keystone"

# The shipped configuration must be valid as installed (read by user keystone via its group).
as_keystone() { setpriv --reuid=keystone --regid=keystone --init-groups -- "$@"; }
if (cd / && as_keystone /usr/bin/keystone config check) >"$work/config-check.log" 2>&1; then
    ok "installed /etc/keystone/keystone.toml passes keystone config check (as keystone)"
else
    bad "keystone config check on the installed config: $(tr '\n' ' ' <"$work/config-check.log")"
fi
if (set -a; . /etc/keystone/keystone.env) >/dev/null 2>&1; then
    ok "installed /etc/keystone/keystone.env is valid shell/env syntax"
else
    bad "installed /etc/keystone/keystone.env does not parse"
fi

# ---- serve under socket activation as user keystone -----------------------------------
# Installed config plus a temporary SQLite state dir owned by keystone.
state=$work/state
install -d -o keystone -g keystone -m 0750 "$state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000)))
if (cd / && as_keystone env KEYSTONE_SERVER__STATE_DIR="$state" /usr/bin/keystone migrate) >"$work/migrate.log" 2>&1; then
    ok "keystone migrate (installed config, SQLite in $state)"
else
    cat "$work/migrate.log"
    bad "keystone migrate failed"
fi
(cd / && exec systemd-socket-activate -l "127.0.0.1:$port" -E KEYSTONE_SERVER__STATE_DIR="$state" \
    -E PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --reuid=keystone --regid=keystone --init-groups -- \
    /usr/bin/keystone serve --role web) >"$work/serve.log" 2>&1 &
server_pid=$!
body=
for _ in $(seq 1 50); do
    body=$(curl -sf --max-time 10 "http://127.0.0.1:$port/version/" 2>/dev/null) && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
done
if [ -n "$body" ] && [ "$body" = "$(/usr/bin/keystone version)" ]; then
    ok "GET /version/ through systemd-socket-activate on 127.0.0.1:$port answers '$body'"
else
    bad "GET /version/ answered '${body}', expected '$(/usr/bin/keystone version)'"
    sed 's/^/      | /' "$work/serve.log"
fi
serve_user=$(ps -o user= -p "$server_pid" 2>/dev/null | tr -d ' ')
[ "$serve_user" = keystone ] && ok "the server runs as user keystone" || bad "the server runs as '${serve_user:-?}'"
stat_is "$state/secret_key" "keystone:keystone 600"
if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid"
    code=$?
    server_pid=
    [ "$code" = 0 ] && ok "SIGTERM: the server drained and exited 0" || bad "SIGTERM: the server exited $code"
else
    wait "$server_pid"
    bad "the server exited early with status $?"
    server_pid=
fi

# ---- upgrade path: reinstall over a modified conffile -----------------------------------
echo '# local change kept across upgrades' >>/etc/keystone/keystone.toml
if dpkg -i --force-confold "$deb" >"$work/dpkg-up.log" 2>&1; then
    ok "dpkg -i again (upgrade path)"
else
    sed 's/^/      | /' "$work/dpkg-up.log"
    bad "reinstall failed"
fi
grep -q 'run `keystone migrate`, then `systemctl restart keystone@worker keystone@beat keystone@web`' "$work/dpkg-up.log" &&
    ok "upgrade prints: run \`keystone migrate\`, then \`systemctl restart keystone@worker keystone@beat keystone@web\`" ||
    bad "upgrade does not print the migrate/restart instructions"
grep -q '^# local change kept across upgrades$' /etc/keystone/keystone.toml &&
    ok "modified keystone.toml kept on upgrade" || bad "modified keystone.toml was replaced on upgrade"
stat_is /etc/keystone/keystone.toml "root:keystone 640"

# ---- remove, then purge -------------------------------------------------------------------
if dpkg -r keystone >"$work/dpkg-r.log" 2>&1; then ok "dpkg -r keystone"; else bad "dpkg -r keystone"; fi
[ ! -e /usr/bin/keystone ] && ok "remove deletes /usr/bin/keystone" || bad "/usr/bin/keystone left after remove"
[ -f /etc/keystone/keystone.toml ] && [ -d /var/lib/keystone ] &&
    ok "remove keeps /etc/keystone and /var/lib/keystone" || bad "remove deleted configuration or state"
if dpkg -P keystone >"$work/dpkg-p.log" 2>&1; then ok "dpkg -P keystone"; else bad "dpkg -P keystone"; fi
installed_here=0
[ ! -e /etc/keystone ] && [ ! -e /var/lib/keystone ] &&
    ok "purge deletes /etc/keystone and /var/lib/keystone" || bad "purge left /etc/keystone or /var/lib/keystone"
dpkg-statoverride --list | grep -q /etc/keystone/ &&
    bad "purge left dpkg-statoverride entries" || ok "purge removes the dpkg-statoverride entries"

cleanup
trap - EXIT
summary
[ "$failed" = 0 ]
