# Shell helpers shared by scripts/cluster.sh and tests/run.sh.
# PostgreSQL refuses to run as root, so as root its commands run as the
# 'postgres' user that Debian's package creates.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# Runs a command as the PostgreSQL server's user.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# Gives a directory to the PostgreSQL server's user.
pg_own() {
	if [ "$(id -u)" = 0 ]; then
		chown postgres: "$@"
	fi
}

# True if the PostgreSQL server's user can enter the directory.
pg_can_reach() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- test -x "$1"
	else
		test -x "$1"
	fi
}

# Creates a cluster in $1 with its socket in $2 (no TCP), for user 'eav'.
# Extra postgresql.conf lines come on stdin.
pg_init() {
	as_pg "$PGBIN/initdb" -D "$1" -U eav --auth=trust --encoding=UTF8 \
	    --locale=C.UTF-8 >"$1.initdb.log" 2>&1 || {
		cat "$1.initdb.log" >&2
		return 1
	}
	{
		echo
		echo "# --- eav ---"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$2'"
		echo "port = 5432"
		cat
	} | as_pg tee -a "$1/postgresql.conf" >/dev/null
}
