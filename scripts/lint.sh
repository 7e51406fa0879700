#!/bin/sh
# Static gates CI runs before the tests:
#  - KNF basics (scripts/style.awk): 80 columns, tabs, no trailing blanks;
#  - no SQL built from strings: PQexec only ever gets a literal, and no
#    snprintf/asprintf output is sent as a query;
#  - shell scripts pass shellcheck when it is installed;
#  - cppcheck finds no error when it is installed;
#  - no merge conflict markers left in tracked files.
set -eu
cd "$(dirname "$0")/.."
fail=0

bad=$(grep -nE 'PQexec\(' -- */*.c tests/chaos/*.c | grep -vE 'PQexec\([^,]+, *"' || true)
if [ -n "$bad" ]; then
	echo "lint: PQexec with a non-literal query:"
	echo "$bad"
	fail=1
fi
bad=$(grep -nE '(snprintf|asprintf)\([^;]*(SELECT|INSERT|UPDATE|DELETE) ' \
    -- common/*.c supervisor/*.c worker/*.c producer/*.c ctl/*.c inject/*.c \
    tests/chaos/*.c || true)
if [ -n "$bad" ]; then
	echo "lint: a query built with printf:"
	echo "$bad"
	fail=1
fi
if git rev-parse --git-dir >/dev/null 2>&1; then
	bad=$(git grep -nE '^(<{7}|>{7})( |$)|^={7}$' -- . || true)
	if [ -n "$bad" ]; then
		echo "lint: merge conflict markers:"
		echo "$bad"
		fail=1
	fi
fi
awk -f scripts/style.awk common/*.[ch] common/*.def supervisor/*.[ch] \
    worker/*.[ch] producer/*.[ch] ctl/*.[ch] inject/*.[ch] inject/*.def \
    tests/*.[ch] tests/chaos/*.[ch] tests/far/*.c || fail=1
if command -v shellcheck >/dev/null; then
	shellcheck -S warning -s sh scripts/*.sh tests/*.sh || fail=1
	shellcheck -S warning tests/chaos/*.sh || fail=1
fi
if command -v cppcheck >/dev/null; then
	cppcheck --quiet --error-exitcode=1 --enable=warning \
	    --suppress=missingIncludeSystem -I common -I inject \
	    --include="/usr/include/$(gcc -print-multiarch)/sys/queue.h" \
	    common supervisor worker producer ctl inject tests/chaos tests/far ||
	    fail=1
fi
[ "$fail" = 0 ] && echo "lint: ok"
exit "$fail"
