#!/bin/sh
# Installs the Debian packages eav needs, if any is missing.
#   scripts/deps.sh [run|check|valgrind|bench]
set -eu

# libevent-dev brings libevent_openssl (libevent-openssl-2.1-7); the tests
# make their throwaway CA and certificates with the openssl program.
pkgs="gcc make pkg-config libpq-dev libevent-dev libevent-openssl-2.1-7
libssl-dev check libsystemd-dev libjansson-dev libinih-dev postgresql-15
postgresql-client-15"
case "${1:-run}" in
check) pkgs="$pkgs systemd openssl" ;;
valgrind) pkgs="$pkgs systemd valgrind openssl" ;;
bench) pkgs="$pkgs jq" ;;
esac

missing=
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
	    grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
if [ "$(id -u)" = 0 ]; then
	apt="apt-get"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	apt="sudo apt-get"
else
	echo "deps: missing Debian packages:$missing" >&2
	echo "deps: run: sudo apt-get install$missing" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
$apt install -y --no-install-recommends $missing ||
	{ $apt update && $apt install -y --no-install-recommends $missing; }
