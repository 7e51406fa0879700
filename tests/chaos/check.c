/*
 * The checker.  After every fault is healed it waits, polling with a
 * 120 s deadline, until no step is pending or running (held ones stay),
 * then compares three accounts of the run: the client's history, the
 * nemesis log and the database (eav's own eav.check_invariants, the
 * audit, the far sides).  Figures come from the same sources: audit rows
 * carry clock_timestamp(), the nemesis logs CLOCK_REALTIME.
 *
 * The history is loaded into temporary tables h (one row per op) and w
 * (one per wave), so every check is one SQL statement; their data travels
 * as array parameters.
 */
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "soak.h"
#include "xalloc.h"

#define QUIET_DEADLINE_S 120

/* Wraps a query of one text column x into (violations, first samples). */
#define INV_SQL(inner)	"SELECT count(*), coalesce(array_to_string(" \
	"(array_agg(x ORDER BY x))[1:5], ' '), '') FROM (" inner ") v(x)"

struct hop {
	long		 id;
	long		 keyop;
	long		 retry_of;
	int		 wave;
	char		 phase[8];
	char		 status[8];
	long long	 task;
};

struct hist {
	struct hop	*ops;
	int		 nops;
	int		 cap;
	struct sbuf	 wphase, wwave, wrun;
	int		 nwaves;
	long		 n_ok, n_fail, n_info;
};

static FILE	*inv_fp;

static struct hop *hist_find(struct hist *, long);
static void	hist_line(struct hist *, json_t *);
static int	hist_read(struct soak *, struct hist *);
static int	hist_load(struct soak *, struct hist *);
static void	inv(struct soak *, const char *, const char *, const char *,
		    int, const char *, const char *, const char *);
static void	inv_db(struct soak *);
static void	inv_history(struct soak *);
static void	inv_ledger(struct soak *);
static int	pcts(const char *, double *, int);
static void	fig_kills(struct soak *);
static void	fig_reclaim(struct soak *);
static void	fig_supervisor(struct soak *);
static void	fig_pg(struct soak *);
static void	fig_counts(struct soak *, struct hist *);
static void	fig_deaths(struct soak *);
static int	leaked_procs(struct soak *, struct sbuf *);

static struct hop *
hist_find(struct hist *h, long id)
{
	int	lo = 0, hi = h->nops - 1, mid;

	/* Ids grow in invoke order: the history is sorted by id. */
	while (lo <= hi) {
		mid = (lo + hi) / 2;
		if (h->ops[mid].id == id)
			return &h->ops[mid];
		if (h->ops[mid].id < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;
}

static void
hist_line(struct hist *h, json_t *o)
{
	const char	*type = json_string_value(json_object_get(o, "type"));
	struct hop	*op;
	long		 id;

	if (type == NULL)
		return;
	id = (long)json_integer_value(json_object_get(o, "op"));
	if (strcmp(type, "wave") == 0) {
		sb_add(&h->wphase, "%s%s", h->nwaves ? "," : "{",
		    json_string_value(json_object_get(o, "phase")));
		sb_add(&h->wwave, "%s%d", h->nwaves ? "," : "{",
		    (int)json_integer_value(json_object_get(o, "wave")));
		sb_add(&h->wrun, "%s%.6f", h->nwaves++ ? "," : "{",
		    json_real_value(json_object_get(o, "run_at")));
	} else if (strcmp(type, "invoke") == 0) {
		if (h->nops == h->cap) {
			h->cap = h->cap * 2 + 1024;
			h->ops = xreallocarray(h->ops, (size_t)h->cap,
			    sizeof(*h->ops));
		}
		op = &h->ops[h->nops++];
		memset(op, 0, sizeof(*op));
		op->id = id;
		op->keyop = (long)json_integer_value(json_object_get(o,
		    "keyop"));
		op->retry_of = (long)json_integer_value(json_object_get(o,
		    "retry_of"));
		op->wave = (int)json_integer_value(json_object_get(o, "wave"));
		snprintf(op->phase, sizeof(op->phase), "%s",
		    json_string_value(json_object_get(o, "phase")));
		/* An invoke with no outcome is indeterminate. */
		snprintf(op->status, sizeof(op->status), "info");
	} else if ((op = hist_find(h, id)) != NULL) {
		snprintf(op->status, sizeof(op->status), "%s", type);
		if (strcmp(type, "ok") == 0)
			op->task = json_integer_value(json_object_get(o,
			    "task"));
	}
}

/* Reads history.jsonl; returns -1 if it is unreadable or corrupt. */
static int
hist_read(struct soak *s, struct hist *h)
{
	FILE		*fp;
	char		*line = NULL;
	size_t		 cap = 0;
	json_t		*o;
	json_error_t	 err;
	int		 i, bad = 0;

	if ((fp = fopen(s->history, "r")) == NULL) {
		log_warn("%s", s->history);
		return -1;
	}
	while (getline(&line, &cap, fp) != -1) {
		if ((o = json_loads(line, 0, &err)) == NULL) {
			bad++;
			continue;
		}
		hist_line(h, o);
		json_decref(o);
	}
	if (ferror(fp))
		bad++;
	free(line);
	fclose(fp);
	for (i = 0; i < h->nops; i++) {
		h->n_ok += strcmp(h->ops[i].status, "ok") == 0;
		h->n_fail += strcmp(h->ops[i].status, "fail") == 0;
		h->n_info += strcmp(h->ops[i].status, "info") == 0;
	}
	sb_add(&h->wphase, "}");
	sb_add(&h->wwave, "}");
	sb_add(&h->wrun, "}");
	return bad ? -1 : 0;
}

/* Loads the history into temporary tables h and w. */
static int
hist_load(struct soak *s, struct hist *h)
{
	struct sbuf	 a[7];
	struct hop	*op;
	int		 i, j, ok;

	memset(a, 0, sizeof(a));
	for (i = 0; i < h->nops; i++) {
		op = &h->ops[i];
		for (j = 0; j < 7; j++)
			sb_add(&a[j], "%s", i ? "," : "{");
		sb_add(&a[0], "%ld", op->id);
		sb_add(&a[1], "%s", op->phase);
		sb_add(&a[2], "%d", op->wave);
		sb_add(&a[3], "%ld", op->keyop);
		sb_add(&a[4], "%ld", op->retry_of);
		sb_add(&a[5], "%s", op->status);
		if (op->task > 0)
			sb_add(&a[6], "%lld", op->task);
		else
			sb_add(&a[6], "NULL");
	}
	for (j = 0; j < 7; j++)
		sb_add(&a[j], "%s", h->nops ? "}" : "{}");
	ok = obs_run(&s->obs, "CREATE TEMP TABLE h (op bigint PRIMARY KEY, "
	    "phase text, wave int, keyop bigint, retry_of bigint, status text, "
	    "task bigint)", 0) == 0 &&
	    obs_run(&s->obs, "CREATE TEMP TABLE w (phase text, wave int "
	    "PRIMARY KEY, run_at float8)", 0) == 0 &&
	    obs_run(&s->obs, "INSERT INTO h SELECT * FROM unnest($1::bigint[], "
	    "$2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::text[], "
	    "$7::bigint[])", 7, a[0].s, a[1].s, a[2].s, a[3].s, a[4].s,
	    a[5].s, a[6].s) == 0 &&
	    obs_run(&s->obs, "INSERT INTO w SELECT * FROM unnest($1::text[], "
	    "$2::int[], $3::float8[])", 3, h->wphase.s, h->wwave.s,
	    h->wrun.s) == 0 &&
	    obs_run(&s->obs, "ANALYZE h", 0) == 0 &&
	    obs_run(&s->obs, "ANALYZE w", 0) == 0;
	for (j = 0; j < 7; j++)
		sb_free(&a[j]);
	return ok ? 0 : -1;
}

/*
 * Runs one check whose SQL returns (violations, sample) and records it
 * in invariants.txt and the summary.  Up to three text parameters.
 */
static void
inv(struct soak *s, const char *name, const char *statement, const char *sql,
    int n, const char *p1, const char *p2, const char *p3)
{
	PGresult	*res;
	long long	 v = -1;
	const char	*sample = "";

	res = obs_q(&s->obs, sql, n, p1, p2, p3);
	if (res != NULL && PQntuples(res) == 1) {
		v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		sample = PQgetvalue(res, 0, 1);
	}
	fprintf(inv_fp, "%-12s %10lld  %-40s  %s\n", name, v,
	    *sample ? sample : "-", statement);
	if (v < 0)
		soak_result(s, 0, name, "%s: the check query failed",
		    statement);
	else
		soak_result(s, v == 0, name, "%s: %lld violation(s)%s%s",
		    statement, v, *sample ? ", e.g. " : "", sample);
	PQclear(res);
}

/* eav's own checker (sql/0004_failure_lab.sql), when it is there. */
static void
inv_db(struct soak *s)
{
	PGresult	*res;
	char		 name[64];
	int		 i;

	res = obs_q(&s->obs, "SELECT inv, statement, violations, sample FROM "
	    "eav.check_invariants(true)", 0);
	if (res == NULL) {
		fprintf(inv_fp, "db           check_invariants missing or "
		    "failed\n");
		soak_result(s, 0, "db check_invariants", "check_invariants "
		    "missing (or it failed): eav.check_invariants(true)");
		return;
	}
	for (i = 0; i < PQntuples(res); i++) {
		snprintf(name, sizeof(name), "db %s", PQgetvalue(res, i, 0));
		fprintf(inv_fp, "%-12s %10s  %-40s  %s\n", name,
		    PQgetvalue(res, i, 2), *PQgetvalue(res, i, 3) ?
		    PQgetvalue(res, i, 3) : "-", PQgetvalue(res, i, 1));
		soak_result(s, strcmp(PQgetvalue(res, i, 2), "0") == 0, name,
		    "%s: %s violation(s)%s%s", PQgetvalue(res, i, 1),
		    PQgetvalue(res, i, 2), *PQgetvalue(res, i, 3) ?
		    ", e.g. " : "", PQgetvalue(res, i, 3));
	}
	PQclear(res);
}

static void
inv_ledger(struct soak *s)
{
	struct sbuf	ids = { 0 }, bals = { 0 };
	char		sum[32];
	long long	total = 0;
	int		i;

	for (i = 0; i < s->naccounts; i++) {
		sb_add(&ids, "%s%s", i ? "," : "{", s->accounts[i]);
		sb_add(&bals, "%s%lld", i ? "," : "{", s->balances[i]);
		total += s->balances[i];
	}
	sb_add(&ids, "%s", i ? "}" : "{}");
	sb_add(&bals, "%s", i ? "}" : "{}");
	snprintf(sum, sizeof(sum), "%lld", total);
	inv(s, "hist INV-3", "ledger: one entry per key, only where a step "
	    "applied it, as invoked; balances conserve", INV_SQL(
	    "SELECT 'key:' || k FROM (SELECT coalesce(a.k, e.k) AS k, "
	    "coalesce(a.ok, false) AS ok, coalesce(e.n, 0) AS n FROM (SELECT "
	    "idempotency_key AS k, bool_or(state = 'succeeded') AS ok FROM "
	    "eav.steps WHERE tool = 'ledger.transfer' GROUP BY 1) a FULL "
	    "JOIN (SELECT idempotency_key AS k, count(*) AS n FROM "
	    "eav.ledger_entries GROUP BY 1) e ON e.k = a.k) x "
	    "WHERE n <> CASE WHEN ok THEN 1 ELSE 0 END "
	    "UNION ALL SELECT 'entry:' || e.id FROM eav.ledger_entries e "
	    "LEFT JOIN eav.steps s ON s.id = e.step_id WHERE s.id IS NULL OR "
	    "s.idempotency_key <> e.idempotency_key OR s.input->>'from' <> "
	    "e.from_account OR s.input->>'to' <> e.to_account OR "
	    "(s.input->>'amount')::bigint <> e.amount "
	    "UNION ALL SELECT 'account:' || a.id FROM eav.ledger_accounts a "
	    "JOIN unnest($1::text[], $2::bigint[]) o(id, bal) ON o.id = a.id "
	    "WHERE a.balance <> o.bal + coalesce((SELECT sum(amount) FROM "
	    "eav.ledger_entries WHERE to_account = a.id), 0) - coalesce(("
	    "SELECT sum(amount) FROM eav.ledger_entries WHERE from_account = "
	    "a.id), 0) "
	    "UNION ALL SELECT 'sum:' || sum(balance) FROM eav.ledger_accounts "
	    "HAVING sum(balance) <> $3::bigint"), 3, ids.s, bals.s, sum);
	sb_free(&ids);
	sb_free(&bals);
}

/* The checks of D.3 that the history and the audit make possible. */
static void
inv_history(struct soak *s)
{
	char	seed[24];

	snprintf(seed, sizeof(seed), "%llu", (unsigned long long)s->seed);
	inv(s, "hist INV-1", "every ok enqueue exists and is terminal or "
	    "held", INV_SQL("SELECT 'op:' || h.op FROM h LEFT JOIN eav.tasks "
	    "t ON t.id = h.task WHERE h.status = 'ok' AND (t.id IS NULL OR "
	    "t.kind <> 'soak:' || h.op OR (t.state = 'active' AND NOT EXISTS "
	    "(SELECT 1 FROM eav.steps s WHERE s.id BETWEEN eav.step_id(t.id, "
	    "1) AND eav.step_id(t.id, 127) AND s.state = 'held')))"),
	    0, NULL, NULL, NULL);
	inv(s, "hist INV-2", "no task or step the client never invoked; a "
	    "failed enqueue left none; one task per op; its keys as invoked",
	    INV_SQL("SELECT 'task:' || t.id FROM eav.tasks t LEFT JOIN h ON "
	    "t.kind = 'soak:' || h.op WHERE h.op IS NULL OR h.status = 'fail' "
	    "OR (h.status = 'ok' AND h.task <> t.id) "
	    "UNION ALL SELECT 'kind:' || kind FROM eav.tasks GROUP BY kind "
	    "HAVING count(*) > 1 "
	    "UNION ALL SELECT 'step:' || s.id FROM eav.steps s LEFT JOIN "
	    "eav.tasks t ON t.id = s.task_id LEFT JOIN h ON t.kind = 'soak:' "
	    "|| h.op WHERE h.op IS NULL OR s.idempotency_key <> "
	    "format('soak:%s:%s:%s', $1::text, h.keyop, s.ordinal)"),
	    1, seed, NULL, NULL);
	inv_ledger(s);
	inv(s, "hist INV-4", "a non-idempotent step runs at most once unless "
	    "an operator retries it", INV_SQL("SELECT 'step:' || a.step_id "
	    "FROM eav.audit_events a WHERE a.step_id IN (SELECT s.id FROM "
	    "eav.steps s JOIN eav.tools t ON t.name = s.tool WHERE NOT "
	    "t.idempotent) AND a.type IN ('step.claimed', 'step.released', "
	    "'step.resolved') GROUP BY a.step_id HAVING count(*) FILTER "
	    "(WHERE a.type = 'step.claimed') - count(*) FILTER (WHERE a.type "
	    "= 'step.released') > 1 + count(*) FILTER (WHERE a.type = "
	    "'step.resolved' AND a.payload->>'action' = 'retry')"),
	    0, NULL, NULL, NULL);
	inv(s, "hist INV-5", "each claimed attempt closed exactly once; one "
	    "unknown outcome per (step, epoch), with one audit row",
	    INV_SQL("SELECT 'attempt:' || step_id || '/' || e FROM (SELECT "
	    "step_id, (payload->>'epoch')::bigint AS e, type, outcome FROM "
	    "eav.audit_events WHERE step_id IS NOT NULL AND payload ? 'epoch' "
	    "AND type IN ('step.claimed', 'step.succeeded', 'step.failed', "
	    "'step.released', 'step.retry_scheduled', 'step.cancelled', "
	    "'tool_call.unknown')) a GROUP BY step_id, e HAVING count(*) "
	    "FILTER (WHERE type = 'step.claimed') <> 1 OR count(*) FILTER "
	    "(WHERE type IN ('step.succeeded', 'step.failed', "
	    "'step.released', 'step.cancelled', 'tool_call.unknown') OR "
	    "(type = 'step.retry_scheduled' AND outcome <> 'unknown')) <> 1 "
	    "UNION ALL SELECT 'unknown:' || coalesce(u.step_id, a.step_id) "
	    "|| '/' || coalesce(u.claim_epoch, a.e) FROM eav.unknown_outcomes "
	    "u FULL JOIN (SELECT step_id, (payload->>'epoch')::bigint AS e, "
	    "count(*) AS n FROM eav.audit_events WHERE type = "
	    "'tool_call.unknown' GROUP BY 1, 2) a ON a.step_id = u.step_id "
	    "AND a.e = u.claim_epoch WHERE u.step_id IS NULL OR a.step_id IS "
	    "NULL OR a.n <> 1"), 0, NULL, NULL, NULL);
	inv(s, "hist INV-6", "fencing: every event of an attempt carries the "
	    "latest claimed epoch; refused completions were stale",
	    INV_SQL("SELECT 'audit:' || id FROM (SELECT a.id, a.type, "
	    "(a.payload->>'epoch')::bigint AS e, (a.payload->>"
	    "'current_epoch')::bigint AS ce, a.payload->>'state' AS st, "
	    "max((a.payload->>'epoch')::bigint) FILTER (WHERE a.type = "
	    "'step.claimed') OVER (PARTITION BY a.step_id ORDER BY a.id) AS "
	    "cur FROM eav.audit_events a WHERE a.step_id IS NOT NULL AND "
	    "a.payload ? 'epoch') x WHERE (type NOT IN ('step.claimed', "
	    "'fence.rejected') AND e IS DISTINCT FROM cur) OR (type = "
	    "'fence.rejected' AND (e > ce OR (e = ce AND st = 'running'))) "
	    "UNION ALL SELECT 'step:' || s.id FROM eav.steps s LEFT JOIN "
	    "(SELECT step_id, max((payload->>'epoch')::bigint) AS m FROM "
	    "eav.audit_events WHERE type = 'step.claimed' GROUP BY 1) c ON "
	    "c.step_id = s.id WHERE s.claim_epoch <> coalesce(c.m, 0)"),
	    0, NULL, NULL, NULL);
}

/* Parses "{a,b,c}" (a float8[] as text) into v; returns the count. */
static int
pcts(const char *text, double *v, int max)
{
	const char	*p = text;
	char		*end;
	int		 n = 0;

	while (*p != '\0' && n < max) {
		if (*p == '{' || *p == ',') {
			p++;
			continue;
		}
		v[n] = strtod(p, &end);
		if (end == p)
			break;
		n++;
		p = end;
	}
	return n;
}

/* kill -> unknown outcome committed (D.4: p50 <= 20 ms, p99 <= 250 ms). */
static void
fig_kills(struct soak *s)
{
	struct sbuf	 pid = { 0 }, inc = { 0 }, at = { 0 };
	PGresult	*res;
	double		 p[3] = { -1, -1, -1 };
	int		 i;

	for (i = 0; i < s->nkills; i++) {
		sb_add(&pid, "%s%d", i ? "," : "{", (int)s->kills[i].pid);
		sb_add(&inc, "%s%lld", i ? "," : "{", s->kills[i].incarnation);
		sb_add(&at, "%s%.6f", i ? "," : "{", s->kills[i].real);
	}
	sb_add(&pid, "%s", i ? "}" : "{}");
	sb_add(&inc, "%s", i ? "}" : "{}");
	sb_add(&at, "%s", i ? "}" : "{}");
	res = obs_q(&s->obs, "WITH k AS (SELECT * FROM unnest($1::int[], "
	    "$2::bigint[], $3::float8[]) AS k(pid, inc, t)), u AS (SELECT "
	    "(payload->>'owner_pid')::int AS pid, (payload->>"
	    "'owner_incarnation')::bigint AS inc, extract(epoch FROM at) AS t "
	    "FROM eav.audit_events WHERE type = 'tool_call.unknown' AND "
	    "payload->>'detected_by' = 'worker_exit'), l AS (SELECT (max(u.t) "
	    "- k.t) * 1000 AS ms FROM k JOIN u ON u.pid = k.pid AND u.inc = "
	    "k.inc AND u.t >= k.t AND u.t < k.t + 60 GROUP BY k.pid, k.inc, "
	    "k.t) SELECT count(*), coalesce(percentile_cont(ARRAY[0.5, 0.9, "
	    "0.99]) WITHIN GROUP (ORDER BY ms)::text, '{}'), "
	    "coalesce(max(ms), -1) FROM l", 3, pid.s, inc.s, at.s);
	if (res != NULL) {
		(void)pcts(PQgetvalue(res, 0, 1), p, 3);
		soak_figure(s, "kill -9 -> tool_call.unknown committed: %s of "
		    "%d kills left unknown outcomes; p50 %.1f ms, p90 %.1f ms, "
		    "p99 %.1f ms, max %.1f ms (D.4: p50 <= 20, p99 <= 250: "
		    "%s)", PQgetvalue(res, 0, 0), s->nkills, p[0], p[1], p[2],
		    strtod(PQgetvalue(res, 0, 2), NULL), p[0] <= 20 &&
		    p[2] <= 250 && p[0] >= 0 ? "met" : "MISSED");
		PQclear(res);
	} else
		soak_figure(s, "kill -> unknown: query failed");
	sb_free(&pid);
	sb_free(&inc);
	sb_free(&at);
}

/*
 * unknown outcome (idempotent) -> claimed again, raw and past its
 * back-off; D.4 is compared on the retries that no other fault (a
 * PostgreSQL or eavd outage, a pause) overlapped.
 */
static void
fig_reclaim(struct soak *s)
{
	struct sbuf	 f0 = { 0 }, f1 = { 0 };
	PGresult	*res;
	double		 raw[2] = { -1, -1 }, net[2] = { -1, -1 };
	double		 calm[2] = { -1, -1 };
	int		 i;

	for (i = 0; i < s->nfwin; i++) {
		sb_add(&f0, "%s%.6f", i ? "," : "{", s->fwin0[i]);
		sb_add(&f1, "%s%.6f", i ? "," : "{", s->fwin1[i]);
	}
	sb_add(&f0, "%s", i ? "}" : "{}");
	sb_add(&f1, "%s", i ? "}" : "{}");
	res = obs_q(&s->obs, "WITH u AS (SELECT step_id, (payload->>"
	    "'epoch')::bigint AS e, at FROM eav.audit_events WHERE type = "
	    "'tool_call.unknown' AND payload->>'decision' = 'retry'), r AS "
	    "(SELECT step_id, (payload->>'epoch')::bigint AS e, (payload->>"
	    "'run_at')::timestamptz AS run_at FROM eav.audit_events WHERE "
	    "type = 'step.retry_scheduled' AND outcome = 'unknown'), c AS "
	    "(SELECT step_id, (payload->>'epoch')::bigint AS e, at FROM "
	    "eav.audit_events WHERE type = 'step.claimed'), l AS (SELECT "
	    "extract(epoch FROM c.at - u.at) * 1000 AS raw, extract(epoch "
	    "FROM c.at - greatest(r.run_at, u.at)) * 1000 AS net, NOT EXISTS "
	    "(SELECT 1 FROM unnest($1::float8[], $2::float8[]) f(a, b) WHERE "
	    "extract(epoch FROM u.at) <= f.b AND extract(epoch FROM c.at) >= "
	    "f.a) AS calm FROM u JOIN r ON r.step_id = u.step_id AND r.e = "
	    "u.e JOIN c ON c.step_id = u.step_id AND c.e = u.e + 1) SELECT "
	    "count(*), coalesce(percentile_cont(ARRAY[0.5, 0.99]) WITHIN "
	    "GROUP (ORDER BY raw)::text, '{}'), coalesce(percentile_cont("
	    "ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY net)::text, '{}'), "
	    "count(*) FILTER (WHERE calm), coalesce(percentile_cont(ARRAY[0.5, "
	    "0.99]) WITHIN GROUP (ORDER BY net) FILTER (WHERE calm)::text, "
	    "'{}') FROM l", 2, f0.s, f1.s);
	sb_free(&f0);
	sb_free(&f1);
	if (res == NULL) {
		soak_figure(s, "unknown -> reclaimed: query failed");
		return;
	}
	(void)pcts(PQgetvalue(res, 0, 1), raw, 2);
	(void)pcts(PQgetvalue(res, 0, 2), net, 2);
	(void)pcts(PQgetvalue(res, 0, 4), calm, 2);
	soak_figure(s, "unknown -> claimed again, %s retries: p50 %.1f ms, "
	    "p99 %.1f ms; past the back-off (queue %s: 20 ms doubling to "
	    "500 ms, jittered, found by a 100 ms poll): p50 %.1f ms, p99 "
	    "%.1f ms", PQgetvalue(res, 0, 0), raw[0], raw[1], SOAK_QUEUE,
	    net[0], net[1]);
	soak_figure(s, "unknown -> claimed again past the back-off, %s "
	    "retries no other fault overlapped: p50 %.1f ms, p99 %.1f ms "
	    "(D.4: p99 <= 1 s: %s)", PQgetvalue(res, 0, 3), calm[0], calm[1],
	    calm[1] >= 0 && calm[1] <= 1000 ? "met" : "MISSED");
	PQclear(res);
}

/* eavd kill -9 -> the next incarnation's reconciliation (audit). */
static void
fig_supervisor(struct soak *s)
{
	char		t[32];
	long long	at;
	int		i;

	for (i = 0; i < s->nsup; i++) {
		snprintf(t, sizeof(t), "%.6f", s->sup_kill_real[i]);
		if (obs_ll(&s->obs, &at, "SELECT round((extract(epoch FROM at) "
		    "- $1::float8) * 1000) FROM eav.audit_events WHERE type = "
		    "'node.reconciled' AND at > to_timestamp($1::float8) ORDER "
		    "BY id LIMIT 1", 1, t) == -1)
			at = -1;
		soak_figure(s, "eavd kill -9 #%d -> next incarnation "
		    "reconciled %lld ms, all children up %.0f ms", i + 1, at,
		    s->sup_ready_ms[i]);
	}
}

/* PostgreSQL back -> claims again, and every worker with a session. */
static void
fig_pg(struct soak *s)
{
	struct sbuf	 b = { 0 }, c = { 0 };
	char		 t[32];
	long long	 at;
	int		 i, back = 1;

	for (i = 0; i < s->npg_up; i++) {
		sb_add(&b, "%s%.0f", i ? ", " : "", s->pg_up_ms[i]);
		back &= s->pg_up_ms[i] >= 0;
		snprintf(t, sizeof(t), "%.6f", s->pg_up_real[i]);
		if (obs_ll(&s->obs, &at, "SELECT round((extract(epoch FROM "
		    "min(at)) - $1::float8) * 1000) FROM eav.audit_events "
		    "WHERE type = 'step.claimed' AND at > "
		    "to_timestamp($1::float8)", 1, t) == -1)
			at = -1;
		sb_add(&c, "%s%lld", i ? ", " : "", at);
	}
	soak_figure(s, "PostgreSQL accepting again -> first step claimed: "
	    "%s ms", c.s ? c.s : "none");
	soak_figure(s, "PostgreSQL back -> every worker up with a session: "
	    "%s ms (D.4: <= 5000)", b.s ? b.s : "none");
	/* -1: a worker had no session 15 s after PostgreSQL came back. */
	soak_result(s, back, "workers reconnect after PostgreSQL outages",
	    "every worker slot had a session again within 15 s (ms: %s; "
	    "-1 = not: see workers_not_back in nemesis.jsonl)",
	    b.s ? b.s : "none");
	sb_free(&b);
	sb_free(&c);
}

/* Kills, interruptions, holds, fences, ops: the run in numbers. */
static void
fig_counts(struct soak *s, struct hist *h)
{
	PGresult	*res;
	long long	 present = -1;

	soak_figure(s, "kills: %d worker SIGKILLs (%d aimed, %d of them at a "
	    "worker owning a running step); faults: pg fast %d/%d, pg "
	    "immediate %d/%d, backend kill %d/%d, eavd kill %d/%d, SIGSTOP "
	    "%d/%d", s->nkills, s->aimed, s->aimed_hit,
	    s->faults_done[F_PG_FAST], s->faults_planned[F_PG_FAST],
	    s->faults_done[F_PG_IMMEDIATE], s->faults_planned[F_PG_IMMEDIATE],
	    s->faults_done[F_BACKEND], s->faults_planned[F_BACKEND],
	    s->faults_done[F_SUPERVISOR], s->faults_planned[F_SUPERVISOR],
	    s->faults_done[F_STOP], s->faults_planned[F_STOP]);
	(void)obs_ll(&s->obs, &present, "SELECT count(*) FROM h JOIN "
	    "eav.tasks t ON t.kind = 'soak:' || h.op WHERE h.status = 'info'",
	    0);
	soak_figure(s, "ops: %d invoked, %ld ok, %ld fail, %ld info (%lld of "
	    "them created their task)", h->nops, h->n_ok, h->n_fail,
	    h->n_info, present);
	res = obs_q(&s->obs, "SELECT (SELECT count(*) FROM "
	    "eav.unknown_outcomes), (SELECT count(DISTINCT step_id) FROM "
	    "eav.unknown_outcomes), (SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'tool_call.outcome_applied'), (SELECT count(*) FROM "
	    "eav.steps WHERE state = 'held' AND held_reason = "
	    "'unknown_outcome'), (SELECT count(*) FROM eav.steps WHERE state "
	    "= 'held' AND held_reason <> 'unknown_outcome'), (SELECT count(*) "
	    "FROM eav.audit_events WHERE type = 'fence.rejected'), (SELECT "
	    "count(*) FROM eav.audit_events WHERE type = "
	    "'tool_call.deduplicated'), (SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.released'), (SELECT "
	    "count(*) FROM eav.steps WHERE state = 'succeeded')", 0);
	if (res == NULL) {
		soak_result(s, 0, "interrupted steps", "query failed");
		return;
	}
	soak_figure(s, "interrupted attempts: %s unknown outcomes (%s steps) "
	    "+ %s recorded outcomes applied; held: %s non-idempotent, %s "
	    "other; fence.rejected %s, ledger dedups %s, releases %s; "
	    "steps succeeded %s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
	    PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4),
	    PQgetvalue(res, 0, 5), PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 7),
	    PQgetvalue(res, 0, 8));
	present = strtoll(PQgetvalue(res, 0, 0), NULL, 10) +
	    strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	soak_result(s, s->nkills >= s->p.min_kills, "kills", "%d worker "
	    "SIGKILLs (at least %d)", s->nkills, s->p.min_kills);
	soak_result(s, present >= s->p.min_interrupted, "interrupted steps",
	    "%lld attempts interrupted (at least %d)", present,
	    s->p.min_interrupted);
	soak_result(s, h->n_fail == 0, "no enqueue refused", "%ld ops failed "
	    "on a live connection", h->n_fail);
	PQclear(res);
}

/*
 * Deaths nobody caused: a worker that exits on its own during database
 * outages (P1: a backend crash must not count as worker crashes), or an
 * eavd that dies by itself.
 */
static void
fig_deaths(struct soak *s)
{
	struct sbuf	 pids = { 0 };
	PGresult	*res;
	int		 i, ok = 0, planned = 1;

	for (i = 0; i < s->nkills; i++)
		sb_add(&pids, "%s%d", i ? "," : "{", (int)s->kills[i].pid);
	sb_add(&pids, "%s", i ? "}" : "{}");
	res = obs_q(&s->obs, "SELECT count(*), coalesce(string_agg(payload->>"
	    "'pid' || ' ' || coalesce(payload->>'detail', ''), '; '), '') "
	    "FROM eav.audit_events WHERE type IN ('process.exited', "
	    "'process.failed') AND outcome = 'failure' AND NOT "
	    "((payload->>'pid')::int = ANY ($1::int[]))", 1, pids.s);
	if (res != NULL) {
		ok = strcmp(PQgetvalue(res, 0, 0), "0") == 0;
		soak_result(s, ok, "no unprompted child death", "%s child "
		    "exit(s) not caused by a nemesis%s%.300s",
		    PQgetvalue(res, 0, 0), ok ? "" : ": ",
		    PQgetvalue(res, 0, 1));
		PQclear(res);
	} else
		soak_result(s, 0, "no unprompted child death", "query failed");
	sb_free(&pids);
	soak_result(s, s->eavd_unexpected == 0, "no unprompted eavd death",
	    "%d", s->eavd_unexpected);
	for (i = 0; i < F_NKINDS; i++)
		planned &= s->faults_done[i] == s->faults_planned[i];
	soak_result(s, planned, "every planned fault ran", "see the kills "
	    "figure and nemesis.jsonl");
}

/* Waits for quiescence: no step pending or running, held ones aside. */
int
check_quiescence(struct soak *s)
{
	int64_t		 t0 = mono_ns();
	int64_t		 end = t0 + (int64_t)QUIET_DEADLINE_S * 1000000000;
	long long	 busy = -1;

	while (mono_ns() < end) {
		(void)eavd_poll(s);
		if (obs_ll(&s->obs, &busy, "SELECT count(*) FROM eav.steps "
		    "WHERE state IN ('pending', 'running')", 0) == 0 &&
		    busy == 0) {
			soak_result(s, 1, "quiescence", "no step pending or "
			    "running %.1f s after healing",
			    (double)(mono_ns() - t0) / 1e9);
			return 1;
		}
		pause_ms(100);
	}
	soak_result(s, 0, "quiescence", "%lld steps still pending or running "
	    "after %d s", busy, QUIET_DEADLINE_S);
	return 0;
}

/* Throughput: each burst's backlog drain rate, fault-free vs chaos. */
void
check_throughput(struct soak *s)
{
	PGresult	*res;
	double		 base = -1, chaos = -1, abase = -1, achaos = -1;
	int		 i;

	res = obs_q(&s->obs, "WITH r AS (SELECT w.phase, w.wave, count(*) AS "
	    "n, extract(epoch FROM max(st.finished_at)) - w.run_at AS secs "
	    "FROM w JOIN h ON h.wave = w.wave JOIN eav.tasks t ON t.kind = "
	    "'soak:' || h.op JOIN eav.steps st ON st.id IN "
	    "(eav.step_id(t.id, 1), eav.step_id(t.id, 2)) AND st.state = "
	    "'succeeded' GROUP BY w.phase, w.wave, w.run_at) SELECT phase, "
	    "count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY n / "
	    "greatest(secs, 0.001)), sum(n) / greatest(sum(secs), 0.001), "
	    "percentile_cont(0.5) WITHIN GROUP (ORDER BY secs), max(secs) "
	    "FROM r GROUP BY phase ORDER BY phase", 0);
	if (res == NULL) {
		soak_figure(s, "throughput: query failed");
		return;
	}
	for (i = 0; i < PQntuples(res); i++) {
		soak_figure(s, "throughput %s: %s bursts, median drain rate "
		    "%.0f steps/s (all bursts: %.0f steps/s), drain time "
		    "median %.2f s, max %.2f s", PQgetvalue(res, i, 0),
		    PQgetvalue(res, i, 1), strtod(PQgetvalue(res, i, 2), NULL),
		    strtod(PQgetvalue(res, i, 3), NULL),
		    strtod(PQgetvalue(res, i, 4), NULL),
		    strtod(PQgetvalue(res, i, 5), NULL));
		if (strcmp(PQgetvalue(res, i, 0), "base") == 0) {
			base = strtod(PQgetvalue(res, i, 2), NULL);
			abase = strtod(PQgetvalue(res, i, 3), NULL);
		} else {
			chaos = strtod(PQgetvalue(res, i, 2), NULL);
			achaos = strtod(PQgetvalue(res, i, 3), NULL);
		}
	}
	PQclear(res);
	if (base > 0 && chaos >= 0)
		soak_figure(s, "throughput under chaos / fault-free: %.0f %% "
		    "(median burst), %.0f %% (all bursts) (D.4: >= 50 %%: %s)",
		    100 * chaos / base, abase > 0 ? 100 * achaos / abase : -1,
		    chaos >= base / 2 ? "met" : "MISSED");
}

/*
 * SOAK_SABOTAGE=1 (development): plants one violation for several
 * checks after quiescence, to see the checker catch them: a task nobody
 * invoked (hist INV-2), money from nowhere (INV-3), a second unknown
 * outcome for a closed attempt (INV-5) and a completion with a stale
 * epoch (INV-6).
 */
static void
sabotage(struct soak *s)
{
	int	ok;

	ok = obs_run(&s->obs, "SELECT eav.task_enqueue($1, 'soak:0', "
	    "'[{\"tool\": \"noop\"}]')", 1, SOAK_QUEUE) == 0;
	ok &= obs_run(&s->obs, "UPDATE eav.ledger_accounts SET balance = "
	    "balance + 1 WHERE id = 'alice'", 0) == 0;
	ok &= obs_run(&s->obs, "INSERT INTO eav.audit_events (type, outcome, "
	    "actor, task_id, step_id, payload) SELECT 'tool_call.unknown', "
	    "'unknown', 'soak:sabotage', task_id, step_id, payload FROM "
	    "eav.audit_events WHERE type = 'tool_call.unknown' ORDER BY id "
	    "LIMIT 1", 0) == 0;
	ok &= obs_run(&s->obs, "INSERT INTO eav.audit_events (type, outcome, "
	    "actor, task_id, step_id, payload) SELECT 'step.succeeded', "
	    "'success', 'soak:sabotage', task_id, step_id, jsonb_build_object("
	    "'epoch', 0) FROM eav.audit_events WHERE type = 'step.claimed' "
	    "ORDER BY id DESC LIMIT 1", 0) == 0;
	nemesis_log(s, json_pack("{s:s, s:b}", "type", "sabotage", "ok", ok));
}

/* Everything that runs after healing, up to eavd's stop. */
void
check_all(struct soak *s)
{
	char		 path[PATH_MAX];
	struct hist	 h;

	memset(&h, 0, sizeof(h));
	snprintf(path, sizeof(path), "%s/invariants.txt", s->dir);
	if ((inv_fp = fopen(path, "w")) == NULL)
		fatal("%s", path);
	fprintf(inv_fp, "%-12s %10s  %-40s  %s\n", "# check", "violations",
	    "sample", "statement");
	(void)check_quiescence(s);
	if (getenv("SOAK_SABOTAGE") != NULL)
		sabotage(s);
	inv_db(s);
	if (hist_read(s, &h) == -1)
		soak_result(s, 0, "history readable", "%s has unreadable lines",
		    s->history);
	if (hist_load(s, &h) == -1)
		soak_result(s, 0, "history loaded", "cannot load the history "
		    "into the database");
	else {
		inv_history(s);
		check_throughput(s);
		fig_counts(s, &h);
	}
	fig_kills(s);
	fig_reclaim(s);
	fig_supervisor(s);
	fig_pg(s);
	fig_deaths(s);
	if (ferror(inv_fp) || fclose(inv_fp) == EOF)
		fatal("%s", path);
	inv_fp = NULL;
	free(h.ops);
	sb_free(&h.wphase);
	sb_free(&h.wwave);
	sb_free(&h.wrun);
}

/*
 * Processes of this run still alive: in the session of an eavd it
 * started, or an eav process named after its node or its configuration.
 * Zombies hold nothing but their pid; they are not counted.
 */
static int
leaked_procs(struct soak *s, struct sbuf *out)
{
	DIR		*d;
	struct dirent	*e;
	char		 comm[64], st;
	pid_t		 pid, ppid, sid;
	int		 i, n = 0, mine;

	if ((d = opendir("/proc")) == NULL)
		fatal("/proc");
	while ((e = readdir(d)) != NULL) {
		if ((pid = atoi(e->d_name)) <= 0 || pid == getpid() ||
		    proc_info(pid, comm, sizeof(comm), &st, &ppid, &sid) ==
		    -1 || st == 'Z')
			continue;
		for (mine = 0, i = 0; i < s->neavd; i++)
			mine |= sid == s->eavd_pids[i];
		mine |= strncmp(comm, "eav-", 4) == 0 &&
		    proc_has_arg(pid, "-n", s->node);
		mine |= strcmp(comm, "eavd") == 0 &&
		    proc_has_arg(pid, "-f", s->conf);
		if (mine && n++ < 10)
			sb_add(out, "%s%d(%s)", n > 1 ? " " : "", (int)pid,
			    comm);
	}
	closedir(d);
	return n;
}

/* INV-11 once eavd has stopped: no process, no session left. */
void
check_leaks(struct soak *s)
{
	int64_t		 end = mono_ns() + 10000000000LL;
	struct sbuf	 procs = { 0 };
	PGresult	*res = NULL;
	int		 n = -1, clean = 0;

	while (mono_ns() < end) {
		sb_free(&procs);
		n = leaked_procs(s, &procs);
		PQclear(res);
		res = obs_q(&s->obs, "SELECT count(*), coalesce(string_agg(pid "
		    "|| ' ' || application_name, '; '), '') FROM "
		    "pg_stat_activity WHERE application_name LIKE 'eav-%' OR "
		    "application_name LIKE 'eavd:%'", 0);
		clean = res != NULL && strcmp(PQgetvalue(res, 0, 0), "0") == 0;
		if (n == 0 && clean)
			break;
		pause_ms(100);
	}
	soak_result(s, n == 0, "hist INV-11 processes", "no eav process of "
	    "this run alive after eavd stopped: %d%s%s", n, n ? ": " : "",
	    procs.s ? procs.s : "");
	soak_result(s, clean, "hist INV-11 sessions", "no database session "
	    "named eav-* or eavd:* after eavd stopped: %s%s%s",
	    res ? PQgetvalue(res, 0, 0) : "query failed",
	    res && !clean ? ": " : "", res && !clean ? PQgetvalue(res, 0, 1) :
	    "");
	PQclear(res);
	sb_free(&procs);
}
