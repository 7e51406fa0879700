#!/bin/sh
# `make run`: eavd in the foreground with a demo load, on the private
# cluster under ./var, or on the database EAV_DSN names.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
conf=$root/var/eav.conf
mkdir -p "$root/var"

if [ -z "${EAV_DSN:-}" ]; then
	"$root/scripts/cluster.sh" start
	EAV_DSN=$("$root/scripts/cluster.sh" dsn)
	export EAV_DSN
fi
if [ ! -f "$conf" ]; then
	cat >"$conf" <<CONF
# Written by make run; edit and send eavd SIGHUP, or delete to regenerate.
# Every option is described in eav.conf.example.
[database]
dsn = $EAV_DSN

[supervisor]
workers = 4

[producer]
demo = on
demo_rate = 20
CONF
fi

cat <<MSG

eavd is starting with a demo load (noop, sleep, ledger.transfer, demo.notify).
In another terminal:

  psql "$EAV_DSN"
  psql "$EAV_DSN" -c 'table eav.proj_active_tasks'
  EAV_DSN="$EAV_DSN" $root/build/bin/eavctl status

Ctrl-C stops eavd; 'make stop' stops the private cluster.

MSG
exec "$root/build/bin/eavd" -f "$conf"
