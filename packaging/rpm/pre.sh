# Keystone rpm %pre: the keystone group must exist before rpm lays down the config files it
# owns (root:keystone 0640). The sysusers file is not installed yet, so its line is inlined.
if command -v systemd-sysusers >/dev/null 2>&1; then
    echo 'u keystone - "Keystone HPC allocation API" /var/lib/keystone -' |
        systemd-sysusers --replace=/usr/lib/sysusers.d/keystone.conf - || :
else
    getent group keystone >/dev/null || groupadd --system keystone
    getent passwd keystone >/dev/null || useradd --system --gid keystone \
        --home-dir /var/lib/keystone --no-create-home --shell /sbin/nologin \
        --comment "Keystone HPC allocation API" keystone
fi
exit 0
