#!/bin/sh
# Runs the Check suites against a private PostgreSQL cluster started here
# in a temporary directory (as user postgres when run as root), with a
# template database migrated by eavctl.
#   tests/run.sh [build-dir]        (default: build)
# EAV_VALGRIND=1 runs the runner under valgrind (with the eav processes it
# starts).  CK_RUN_SUITE / CK_RUN_CASE pick a subset; EAV_TEST_KEEP=1
# keeps the temporary directory (eavd logs) for a post-mortem.  Check writes each
# test's result to $EAV_CHECK_LOG (default: <build-dir>/check-results.xml),
# which scripts/check-fm.sh reads.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/${1:-build}
. "$root/scripts/lib.sh"

tmp=$(mktemp -d /tmp/eavtest.XXXXXX)
chmod 755 "$tmp"
pg_own "$tmp"
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 ||
	    true
	if [ -n "${EAV_TEST_KEEP:-}" ]; then
		echo "tests/run.sh: kept $tmp (logs in scratch/)" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_pg mkdir "$tmp/pg" "$tmp/scratch"
pg_init "$tmp/pg" "$tmp" <<CONF
max_connections = 300
shared_buffers = 128MB
# The functional suites do not test disk durability (make bench does).
fsync = off
full_page_writes = off
log_min_messages = warning
CONF
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w -t 60 start >/dev/null
"$PGBIN/createdb" -h "$tmp" -U eav eavtest_template
"$build/bin/eavctl" -d "host=$tmp user=eav dbname=eavtest_template" migrate \
    >/dev/null

chmod 777 "$tmp/scratch"
export EAV_TEST_HOST="$tmp" EAV_TEST_PGDATA="$tmp/pg" EAV_TEST_BIN="$build/bin"
export EAV_TEST_ROOT="$root" EAV_TEST_TMP="$tmp/scratch"
[ "$(id -u)" = 0 ] && export EAV_TEST_AS_PG=1
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allow_user_segv_handler=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
unset EAV_DSN EAV_INJECT NOTIFY_SOCKET
# A log left by an earlier run must not pass for this one's.
export CK_XML_LOG_FILE_NAME="${EAV_CHECK_LOG:-$build/check-results.xml}"
rm -f "$CK_XML_LOG_FILE_NAME"

if [ -n "${EAV_VALGRIND:-}" ]; then
	valgrind --quiet --trace-children=yes --child-silent-after-fork=yes \
	    --leak-check=full --errors-for-leak-kinds=definite \
	    --error-exitcode=99 "$build/bin/check_eav"
else
	"$build/bin/check_eav"
fi
