# Keystone rpm %postun: reload systemd. Modified config files are kept as .rpmsave and
# /var/lib/keystone (database, uploads) stays, as rpm packages leave state behind.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
exit 0
