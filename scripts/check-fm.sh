#!/bin/sh
# Fails when the failure-mode catalogue, the tests and the postmortems
# disagree (the rules are in docs/03-failure-modes.md, "Conventions"):
#  - every FM row is well formed: 9 cells, a unique id, no empty cell, a
#    detection that is not "read the logs", status `covered` (with tests)
#    or `planned (issue N)` (without);
#  - every test a covered FM names (suite:test_name) is a START_TEST of
#    tests/check_<suite>.c, passed in the given Check log(s), and carries
#    that FM's tag in the comment right above it;
#  - every FM tag on a test names a covered FM that lists the test;
#  - every point of inject/points.def is in the catalogue;
#  - every postmortem has the template's headings, in order, and names
#    only FMs that exist.
#   scripts/check-fm.sh [check-log.xml ...]
# The default log is the one `make check` leaves: build/asan/check-results.xml
# (tests/run.sh writes <build-dir>/check-results.xml, or $EAV_CHECK_LOG).
# Several logs (e.g. one per suite) are read as one run.
set -eu

n=$#
while [ "$n" -gt 0 ]; do
	case $1 in
	/*) f=$1 ;;
	*) f=$PWD/$1 ;;
	esac
	shift
	set -- "$@" "$f"
	n=$((n - 1))
done
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- "$PWD/build/asan/check-results.xml"

doc=docs/03-failure-modes.md
template=postmortems/000-template.md
tmp=$(mktemp -d /tmp/eavfm.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
problems=$tmp/problems
: >"$problems"

# The catalogue: one line "id status [suite:test ...]" per FM row.
awk -v out="$tmp/fm" '
function trim(s) {
	sub(/^[ \t]+/, "", s)
	sub(/[ \t]+$/, "", s)
	return s
}
BEGIN {
	split("FM|Failure|Invariant|Detection|System response|" \
	    "Operator signal|Recovery|Test|Status", col, "|")
	printf "" >out
}
/^\| *FM-/ {
	line = $0
	gsub(/\\\|/, "", line)		# an escaped | inside a cell
	n = split(line, c, "|")
	id = trim(c[2])
	if (n != 11) {
		printf "%s: row %s has %d cells, not 9\n", FILENAME, id, n - 2
		next
	}
	for (i = 2; i <= 10; i++)
		c[i] = trim(c[i])
	if (id !~ /^FM-[0-9][0-9][0-9]$/)
		printf "%s: \"%s\" is not an id of the form FM-NNN\n",
		    FILENAME, id
	if (id in seen)
		printf "%s: %s appears twice\n", FILENAME, id
	seen[id] = 1
	for (i = 3; i <= 10; i++)
		if (c[i] == "")
			printf "%s: %s has an empty %s\n", FILENAME, id,
			    col[i - 1]
	d = tolower(c[5])
	if (d ~ /(check|read|grep|look|inspect|search|watch)[a-z]* (at |in )?(the )?(logs?|journal)/)
		printf "%s: %s: reading logs is not a detection: %s\n",
		    FILENAME, id, c[5]
	if (c[10] == "covered") {
		tests = ""
		s = c[9]
		while (match(s, /[a-z][a-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*/)) {
			tests = tests " " substr(s, RSTART, RLENGTH)
			s = substr(s, RSTART + RLENGTH)
		}
		if (tests == "")
			printf "%s: %s is covered but names no test " \
			    "(suite:test_name)\n", FILENAME, id
		print id, "covered" tests >out
	} else if (c[10] ~ /^planned \(issue [0-9]+\)$/) {
		if (c[9] != "—")
			printf "%s: %s is planned but names a test (%s); " \
			    "mark it covered, or make its test —\n",
			    FILENAME, id, c[9]
		print id, "planned" >out
	} else
		printf "%s: %s: status \"%s\" is neither covered nor " \
		    "planned (issue N)\n", FILENAME, id, c[10]
}
' "$doc" >>"$problems"
[ -s "$tmp/fm" ] || echo "$doc: no FM rows found" >>"$problems"

# The tests: "suite name [FM-NNN ...]" per START_TEST, with the FM ids in
# the comment right above it; and "suite title" per suite_create.
: >"$tmp/suites"
for f in tests/check_*.c; do
	s=${f#tests/check_}
	s=${s%.c}
	[ "$s" = main ] || echo "$s" >>"$tmp/suites"
done
awk -v titles="$tmp/titles" '
FNR == 1 {
	suite = FILENAME
	sub(/^.*check_/, "", suite)
	sub(/\.c$/, "", suite)
	block = ""
	incomment = 0
}
incomment || /^[ \t]*\/\*/ {
	block = block " " $0
	incomment = $0 !~ /\*\/[ \t]*$/
	next
}
/^START_TEST\(/ {
	name = $0
	sub(/^START_TEST\([ \t]*/, "", name)
	sub(/[ \t]*\).*$/, "", name)
	tags = ""
	while (match(block, /FM-[0-9][0-9]*/)) {
		tags = tags " " substr(block, RSTART, RLENGTH)
		block = substr(block, RSTART + RLENGTH)
	}
	print suite, name tags
}
/suite_create\("/ {
	t = $0
	sub(/^.*suite_create\("/, "", t)
	sub(/".*$/, "", t)
	print suite, t >titles
}
{ block = "" }
' tests/check_*.c >"$tmp/tests"
[ -f "$tmp/titles" ] || : >"$tmp/titles"

# The last run: "suite-title test result" per test (and loop iteration).
: >"$tmp/results"
havelog=0
for log in "$@"; do
	if [ ! -r "$log" ]; then
		echo "$log: no test log; run make check (or tests/run.sh)" \
		    "first" >>"$problems"
		continue
	fi
	havelog=1
	awk '
	/<title>/ {
		t = $0
		sub(/^.*<title>/, "", t)
		sub(/<\/title>.*$/, "", t)
	}
	/<test result="/ {
		r = $0
		sub(/^.*<test result="/, "", r)
		sub(/".*$/, "", r)
	}
	/<id>/ {
		id = $0
		sub(/^.*<id>/, "", id)
		sub(/<\/id>.*$/, "", id)
		print t, id, r
	}
	/<\/testsuites>/ { done = 1 }
	END {
		if (!done)
			print "-", "-", "incomplete"
	}
	' "$log" >"$tmp/one"
	if grep -q '^- - incomplete$' "$tmp/one"; then
		echo "$log: not a complete Check log (the run did not finish)" \
		    >>"$problems"
	fi
	grep -v '^- - incomplete$' "$tmp/one" >>"$tmp/results" || true
done

# Catalogue against tests and results.
awk -v suites="$tmp/suites" -v titles="$tmp/titles" -v tests="$tmp/tests" \
    -v results="$tmp/results" -v fm="$tmp/fm" -v doc="$doc" \
    -v havelog="$havelog" '
FILENAME == suites { file[$1] = 1; next }
FILENAME == titles { title[$1] = $2; next }
FILENAME == tests {
	k = $1 ":" $2
	defined[k] = 1
	for (i = 3; i <= NF; i++) {
		tagged[k] = tagged[k] " " $i
		tag[k, $i] = 1
	}
	next
}
FILENAME == results {
	k = $1 ":" $2
	if ($3 != "success")
		result[k] = $3
	else if (!(k in result))
		result[k] = "success"
	next
}
FILENAME == fm {
	status[$1] = $2
	for (i = 3; i <= NF; i++)
		covered_test($1, $i)
}
function covered_test(id, t,	s, name, rk) {
	lists[id, t] = 1
	s = t
	sub(/:.*$/, "", s)
	name = t
	sub(/^[^:]*:/, "", name)
	if (!(s in file)) {
		printf "%s: %s names %s, but there is no tests/check_%s.c\n",
		    doc, id, t, s
		return
	}
	if (!(t in defined)) {
		printf "%s: %s names %s, but tests/check_%s.c has no " \
		    "START_TEST(%s)\n", doc, id, t, s, name
		return
	}
	rk = ((s in title) ? title[s] : s) ":" name
	if (!havelog)
		;			# reported once, above
	else if (!(rk in result))
		printf "%s: %s names %s, which is not in the test log " \
		    "(not run)\n", doc, id, t
	else if (result[rk] != "success")
		printf "%s: %s names %s, which did not pass in the last " \
		    "run (%s)\n", doc, id, t, result[rk]
	if (!((t, id) in tag))
		printf "tests/check_%s.c: %s is named by %s but lacks the tag " \
		    "/* %s */ above its START_TEST\n", s, name, id, id
}
END {
	for (k in tagged) {
		n = split(tagged[k], ids, " ")
		s = k
		sub(/:.*$/, "", s)
		for (i = 1; i <= n; i++) {
			if (!(ids[i] in status))
				printf "tests/check_%s.c: %s names %s, which %s " \
				    "does not have\n", s, k, ids[i], doc
			else if (status[ids[i]] != "covered")
				printf "tests/check_%s.c: %s names %s, which " \
				    "%s marks planned\n", s, k, ids[i], doc
			else if (!((ids[i], k) in lists))
				printf "%s: %s does not list %s, which names " \
				    "it\n", doc, ids[i], k
		}
	}
}
' "$tmp/suites" "$tmp/titles" "$tmp/tests" "$tmp/results" "$tmp/fm" \
    >>"$problems"

# Every injection point is in the catalogue.
for p in $(grep -o '"[a-z_]*\.[a-z_]*"' inject/points.def | tr -d '"'); do
	grep -qF "$p" "$doc" ||
	    echo "$doc: injection point $p (inject/points.def) is not" \
		"described" >>"$problems"
done

# Postmortems: the template's headings, in order, and known FMs only.
if [ ! -r "$template" ]; then
	echo "$template: missing" >>"$problems"
else
	for pm in postmortems/*.md; do
		[ "$pm" = "$template" ] && continue
		awk -v pm="$pm" -v tpl="$template" '
		FILENAME == tpl && /^## / { want[++n] = $0; next }
		FILENAME == pm && /^## / { have[++m] = $0 }
		END {
			pos = 0
			for (i = 1; i <= n; i++) {
				for (k = pos + 1; k <= m; k++)
					if (have[k] == want[i])
						break
				if (k <= m)
					pos = k
				else
					printf "%s: heading \"%s\" of %s is " \
					    "missing or out of order\n", pm,
					    want[i], tpl
			}
		}
		' "$template" "$pm" >>"$problems"
		grep -o 'FM-[0-9][0-9]*' "$pm" | sort -u | while read -r id; do
			grep -q "^$id " "$tmp/fm" ||
			    echo "$pm: names $id, which $doc does not have" \
				>>"$problems"
		done
	done
fi

if [ -s "$problems" ]; then
	sed 's/^/check-fm: /' "$problems" >&2
	echo "check-fm: $(wc -l <"$problems") problem(s)" >&2
	exit 1
fi
echo "check-fm: ok: $(wc -l <"$tmp/fm") failure modes" \
    "($(grep -c ' covered' "$tmp/fm") covered)," \
    "$(awk 'NF > 2' "$tmp/tests" | wc -l) tagged tests," \
    "$(find postmortems -name '*.md' ! -name 000-template.md | wc -l)" \
    "postmortem(s)"
