# Keystone rpm %preun: on removal ($1 = 0; not on upgrade) stop the units, whose binary is going away.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop keystone@web.socket 'keystone@*.service' >/dev/null 2>&1 || :
fi
exit 0
