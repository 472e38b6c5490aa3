# Keystone rpm %post: directories and systemd reload. Never enables, starts or restarts a
# unit: the database schema must be migrated first. $1 is 1 on install, 2 or more on upgrade.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/keystone.conf || :
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/keystone.conf || :
else
    install -d -o keystone -g keystone -m 0750 /var/lib/keystone
    install -d -o keystone -g keystone -m 0770 /var/lib/keystone/media
fi
# Custom notification templates (may stay empty).
[ -d /etc/keystone/templates ] || install -d -m 0755 /etc/keystone/templates
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" -ge 2 ]; then
    echo "keystone: upgraded. Units were not restarted. Next:"
    echo "  run \`keystone migrate\`, then \`systemctl restart keystone@worker keystone@beat keystone@web\`"
else
    echo "keystone: installed; nothing was started. Configure /etc/keystone/keystone.toml"
    echo "  (see /usr/share/doc/keystone/deployment.md), run \`keystone migrate\`, then"
    echo "  \`systemctl enable --now keystone@web.socket keystone@worker.service keystone@beat.service\`"
fi
exit 0
