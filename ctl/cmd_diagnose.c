/*
 * eavctl diagnose [--json] [--verify]: the governance diagnostic of
 * sql/0019_diagnose.sql, as text grouped by category or as the JSON
 * document PostgreSQL renders (eav.diagnose_json).  The checks live in
 * SQL so that psql users get the same report.  --verify first walks the
 * audit chain here, in C, with cmd_audit.c's code, and hands its verdict
 * to the report: the database cannot vouch for its own chain.
 *
 * Exit 0 when no finding is critical, 3 when one is (an open critical
 * alarm, a broken chain), 2 bad usage, 1 the database failed.  Warnings
 * are governance gaps to close, not violated invariants: they exit 0, and
 * a monitor reads them from --json ("worst", "counts").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ctl.h"
#include "exitcode.h"

/* Columns of DB_DIAGNOSE. */
enum { D_CATEGORY, D_CHECK, D_SEVERITY, D_FINDING, D_EVIDENCE, D_FIX };

static const char *const severities[] = { "ok", "info", "warning",
    "critical" };
#define NSEVERITIES	(sizeof(severities) / sizeof(severities[0]))

static int	diag_verdict(struct ctl *, char **);
static size_t	diag_rank(const char *);
static void	diag_print_row(const PGresult *, int);
static int	diag_text(struct ctl *, const char *);
static int	diag_json(struct ctl *, const char *);

/*
 * --verify: the chain's verdict as the JSON eav.diagnose takes; *out is
 * the caller's to free.  0, or an exit code.
 */
static int
diag_verdict(struct ctl *ctl, char **out)
{
	struct audit_verdict	 v;
	json_t			*j;
	int			 r;

	if ((r = audit_chain_verify(ctl, &v)) > 0)
		return r;
	if (r == 0)
		j = json_pack("{s:b, s:I, s:I}", "verified", 1, "seq",
		    (json_int_t)v.seq, "id", (json_int_t)v.id);
	else
		j = json_pack("{s:b, s:I, s:I, s:I, s:s}", "verified", 0,
		    "seq", (json_int_t)v.seq, "bad_seq", (json_int_t)v.bad_seq,
		    "bad_id", (json_int_t)v.bad_id, "why", v.why);
	*out = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (*out == NULL) {
		fprintf(stderr, "eavctl: cannot encode the audit verdict\n");
		return EAV_EXIT_FATAL;
	}
	return 0;
}

/* Index of a severity in severities[]; an unknown one counts as worst. */
static size_t
diag_rank(const char *severity)
{
	size_t	i;

	for (i = 0; i < NSEVERITIES; i++)
		if (strcmp(severity, severities[i]) == 0)
			return i;
	return NSEVERITIES - 1;
}

/* One finding: severity, check and finding; evidence and fix under it. */
static void
diag_print_row(const PGresult *res, int row)
{
	const char	*sev = PQgetvalue(res, row, D_SEVERITY);

	printf("  %-8s  %s: %s\n", sev, PQgetvalue(res, row, D_CHECK),
	    PQgetvalue(res, row, D_FINDING));
	printf("            evidence: %s\n", PQgetvalue(res, row, D_EVIDENCE));
	/* An ok finding needs no fix; its text would read as an order. */
	if (strcmp(sev, "ok") != 0)
		printf("            fix: %s\n", PQgetvalue(res, row, D_FIX));
}

/* The report as text, a heading per category; returns the exit code. */
static int
diag_text(struct ctl *ctl, const char *verdict)
{
	const char	*p[1] = { verdict };
	const char	*prev = "";
	PGresult	*res;
	size_t		 counts[NSEVERITIES] = { 0 }, worst = 0, rank;
	int		 i, r;

	if ((r = ctl_call(ctl, DB_DIAGNOSE, p, &res)) != 0)
		return r;
	for (i = 0; i < PQntuples(res); i++) {
		if (strcmp(prev, PQgetvalue(res, i, D_CATEGORY)) != 0) {
			prev = PQgetvalue(res, i, D_CATEGORY);
			printf("%s%s\n", i > 0 ? "\n" : "", prev);
		}
		diag_print_row(res, i);
		rank = diag_rank(PQgetvalue(res, i, D_SEVERITY));
		counts[rank]++;
		worst = rank > worst ? rank : worst;
	}
	printf("\ndiagnose: %zu ok, %zu info, %zu warning, %zu critical\n",
	    counts[0], counts[1], counts[2], counts[3]);
	PQclear(res);
	return worst == NSEVERITIES - 1 ? EAV_EXIT_VIOLATION : 0;
}

/* The report as PostgreSQL's JSON document; returns the exit code. */
static int
diag_json(struct ctl *ctl, const char *verdict)
{
	const char	*p[1] = { verdict };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_DIAGNOSE_JSON, p, &res)) != 0)
		return r;
	printf("%s\n", PQgetvalue(res, 0, 0));
	r = strcmp(PQgetvalue(res, 0, 1), "critical") == 0 ?
	    EAV_EXIT_VIOLATION : 0;
	PQclear(res);
	return r;
}

/* eavctl diagnose [--json] [--verify] */
int
cmd_diagnose(struct ctl *ctl, int argc, char **argv)
{
	char	*verdict = NULL;
	int	 i, json = 0, verify = 0, r;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0 && !json)
			json = 1;
		else if (strcmp(argv[i], "--verify") == 0 && !verify)
			verify = 1;
		else
			return ctl_usage("diagnose");
	}
	if (verify && (r = diag_verdict(ctl, &verdict)) != 0)
		return r;
	r = json ? diag_json(ctl, verdict) : diag_text(ctl, verdict);
	free(verdict);
	return r;
}
