#!/bin/sh
# Create the system users and groups tambo's workers run as, for a source
# install (the Debian package does the same in its postinst). Idempotent.
#
#   tambo-smtpd    network front end (chrooted, no files)
#   tambo-auth     users databases and private keys
#   tambo-queue    the queue
#   tambo-deliver  delivery agents
#   tambo-hook     hooks and pipe aliases (no queue, no keys)
#   tambo (group)  may use the control socket (mailq, tambo queue ...)
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "create-users.sh: run as root" >&2
    exit 1
fi
nologin=/usr/sbin/nologin
[ -x "$nologin" ] || nologin=/bin/false
getent group tambo >/dev/null || groupadd --system tambo
for u in tambo-smtpd tambo-auth tambo-queue tambo-deliver tambo-hook; do
    if ! getent passwd "$u" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell "$nologin" --comment "tambo mail server ($u)" "$u"
    fi
done
echo "tambo users present: tambo-smtpd tambo-auth tambo-queue tambo-deliver tambo-hook (group tambo)"
