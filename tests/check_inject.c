/*
 * The failure lab: injection points armed live from SQL and eavctl, the
 * invariant checker, and the injection matrix of reliability.md D.4.
 * Each matrix test arms one point to fire 50 times in the real eavd under
 * a mixed load (idempotent noop, in-database ledger.transfer, and the
 * non-idempotent demo.notify), waits until the queue drains, and asserts
 * the single outcome that point allows, plus zero invariant violations.
 */
#include <sys/wait.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"
#include "inject.h"

#define DEADLINE_MS	60000
#define MATRIX_FIRINGS	"50"
#define MATRIX_MS	150000	/* for 50 firings and the drain */

/* One worker slot each, so that a crash interrupts exactly one step. */
#define MATRIX_CONF	"[supervisor]\nnode_name = lab\nworkers = %d\n" \
			    "restart_backoff_min = 5ms\n" \
			    "restart_backoff_max = 50ms\n" \
			    "restart_intensity = 0\n" \
			    "[worker]\nconcurrency = 1\nbatch_size = 1\n" \
			    "poll_interval = 50ms\n"

/* The load: 100 noop, 20 ledger transfers, 10 non-idempotent calls. */
static const char *const load_sql =
    "SELECT count(*) FROM ("
    " SELECT eav.enqueue('noop', '{}', 'default', 'm.noop', 1000)"
    "  FROM generate_series(1, 100)"
    " UNION ALL SELECT eav.enqueue('ledger.transfer', jsonb_build_object("
    "  'from', 'alice', 'to', 'bob', 'amount', i), 'default', 'm.ledger',"
    "  1000) FROM generate_series(1, 20) i"
    " UNION ALL SELECT eav.enqueue('demo.notify', '{\"ms\": 1}', 'default',"
    "  'm.notify', 1000) FROM generate_series(1, 10)) x";

static const char *const drained_sql =
    "SELECT NOT EXISTS (SELECT 1 FROM eav.steps WHERE state IN "
    "('pending', 'running', 'blocked'))";

static const char *const violations_sql =
    "SELECT coalesce(string_agg(inv || '=' || violations || ' (' || "
    "coalesce(sample, '') || ')', ', '), '') FROM "
    "eav.check_invariants(true) WHERE violations > 0";

/* Steps of an idempotent tool that did not end succeeded. */
static const char *const idem_unfinished_sql =
    "SELECT count(*) FROM eav.steps s JOIN eav.tools t ON t.name = s.tool "
    "WHERE t.idempotent AND s.state <> 'succeeded'";

/*
 * Attempts per step against unknown outcomes: an idempotent step is
 * claimed once more than it was interrupted; a non-idempotent one is
 * never claimed again after an unknown outcome (it is held).
 */
static const char *const attempts_wrong_sql =
    "SELECT count(*) FROM eav.steps s JOIN eav.tools t ON t.name = s.tool "
    "WHERE (SELECT count(*) FROM eav.audit_events a WHERE a.step_id = s.id "
    " AND a.type = 'step.claimed') <> CASE"
    "  WHEN t.idempotent THEN (SELECT count(*) FROM eav.unknown_outcomes u"
    "   WHERE u.step_id = s.id) + 1"
    "  ELSE 1 END"
    " OR (NOT t.idempotent AND (s.state = 'held') <> EXISTS ("
    "  SELECT 1 FROM eav.unknown_outcomes u WHERE u.step_id = s.id))";

/* Runs eavctl -d <db> args... (NULL-terminated) into out; its exit code. */
static int
eavctl(struct th_db *db, const char *out, ...)
{
	char	*argv[24];
	va_list	 ap;
	int	 n = 0, status;

	argv[n++] = th_bin("eavctl");
	argv[n++] = "-d";
	argv[n++] = db->dsn;
	va_start(ap, out);
	while ((argv[n] = va_arg(ap, char *)) != NULL)
		ck_assert_int_lt(++n, 23);
	va_end(ap);
	status = th_run(argv, out);
	ck_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void
matrix_conf(struct th_eavd *e, const struct th_db *db, int workers)
{
	char	text[512];

	snprintf(text, sizeof(text), MATRIX_CONF, workers);
	th_eavd_conf(e, db, text);
	/* Retries after an unknown outcome come back within milliseconds. */
	PQclear(th_exec(db->conn, "SELECT eav.queue_set('default', "
	    "p_retry_base_ms => 5, p_retry_max_ms => 20)", 0));
}

static void
start_up(struct th_eavd *e, struct th_db *db, int workers)
{
	th_eavd_start(e);
	ck_assert_msg(th_eavd_wait_up(e, db->conn, workers, DEADLINE_MS),
	    "eavd did not come up (log %s)", e->log);
}

static void
stop_ok(struct th_eavd *e)
{
	int	status = th_eavd_stop(e, SIGTERM, DEADLINE_MS);

	ck_assert_msg(status != -1 && WIFEXITED(status) &&
	    WEXITSTATUS(status) == 0, "eavd did not stop cleanly (log %s)",
	    e->log);
	ck_assert_msg(!th_log_contains(e, "Sanitizer") &&
	    !th_log_contains(e, "runtime error"), "a sanitizer reported an "
	    "error (log %s)", e->log);
}

/* Arms point=action through SQL, as an operator in psql would. */
static char *
arm(PGconn *c, const char *point, const char *count)
{
	return th_str(c, "SELECT eav.inject_arm($1, 'crash', 0, "
	    "$2::integer)::text", 2, point, count);
}

/* Waits for the drain and asserts the checker finds nothing. */
static void
assert_drained_sound(struct th_db *db, struct th_eavd *e)
{
	char	*v;

	ck_assert_msg(th_wait(db->conn, MATRIX_MS, drained_sql, 0),
	    "the queue did not drain (log %s)", e->log);
	v = th_str(db->conn, violations_sql, 0);
	ck_assert_msg(v != NULL && *v == '\0', "invariants violated: %s", v);
	free(v);
}

/*
 * A crash point inside a worker: 50 firings, then the allowed outcomes.
 * unknown_each: every firing left exactly one unknown outcome (the point
 * is before the completion was sent).
 */
static void
matrix_worker(const char *point, int unknown_each)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*id;

	th_db_new(&db);
	matrix_conf(&e, &db, 2);
	start_up(&e, &db, 2);
	id = arm(db.conn, point, MATRIX_FIRINGS);
	PQclear(th_exec(db.conn, load_sql, 0));
	ck_assert_msg(th_wait(db.conn, MATRIX_MS, "SELECT fired = "
	    MATRIX_FIRINGS " FROM eav.inject_points WHERE id = $1::bigint", 1,
	    id), "%s did not fire " MATRIX_FIRINGS " times (log %s)", point,
	    e.log);
	assert_drained_sound(&db, &e);
	stop_ok(&e);

	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'inject.fired' AND "
	    "payload->>'id' = $1", 1, id), 50);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'process.exited' AND "
	    "payload->>'kind' = 'worker' AND payload->>'detail' LIKE "
	    "'%signal 9%'", 0), 50);
	if (unknown_each)
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.unknown_outcomes", 0), 50);
	ck_assert_int_eq(th_ll(db.conn, idem_unfinished_sql, 0), 0);
	ck_assert_int_eq(th_ll(db.conn, attempts_wrong_sql, 0), 0);
	/* One ledger entry per transfer, and the money all there. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT step_id) FROM "
	    "eav.ledger_entries", 0), 20);
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(balance) FROM "
	    "eav.ledger_accounts", 0), 4000000);
	free(id);
	th_db_free(&db);
}

/* FM-037 */
START_TEST(test_matrix_worker_after_claim)
{
	matrix_worker("worker.after_claim", 1);
}
END_TEST

/* FM-038 */
START_TEST(test_matrix_worker_before_effect)
{
	matrix_worker("worker.before_effect", 1);
}
END_TEST

/*
 * In-database tools never reach this point (effect and completion are
 * one transaction), so its 50 firings all hit noop and demo.notify: the
 * ledger's entries show no transfer was lost or doubled.
 */
/* FM-039 */
START_TEST(test_matrix_worker_after_effect_before_complete)
{
	matrix_worker("worker.after_effect_before_complete", 1);
}
END_TEST

/*
 * COMMIT sent, then the worker dies: each attempt either landed or was
 * reconciled as unknown, never both (INV-5 in the checker); the claim
 * riding in the same call may have landed too, so unknown outcomes are
 * not one per firing.
 */
/* FM-040 */
START_TEST(test_matrix_worker_mid_complete)
{
	matrix_worker("worker.mid_complete", 0);
}
END_TEST

/*
 * eavd dies right after sending a dead worker's reconciliation; restarted
 * as systemd would, its next incarnation reconciles.  50 times, then
 * every attempt has at most one unknown outcome (the primary key) and
 * every idempotent step ran to completion.
 */
/* FM-041 */
START_TEST(test_matrix_supervisor_mid_reconcile)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*wid, *sid;
	int		 status, restarts;

	th_db_new(&db);
	matrix_conf(&e, &db, 1);
	start_up(&e, &db, 1);
	sid = arm(db.conn, "supervisor.mid_reconcile", MATRIX_FIRINGS);
	wid = th_str(db.conn, "SELECT eav.inject_arm('worker.after_claim', "
	    "'crash')::text", 0);
	PQclear(th_exec(db.conn, load_sql, 0));
	for (restarts = 0; restarts < 50; restarts++) {
		status = th_waitpid(e.pid, DEADLINE_MS);
		ck_assert_msg(status != -1 && WIFSIGNALED(status) &&
		    WTERMSIG(status) == SIGKILL, "eavd was not killed by its "
		    "injection (%d restarts; log %s)", restarts, e.log);
		if (restarts == 49)
			PQclear(th_exec(db.conn, "SELECT eav.inject_disarm("
			    "$1::bigint)", 1, wid));
		th_eavd_start(&e);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT fired FROM eav.inject_points "
	    "WHERE id = $1::bigint", 1, sid), 50);
	assert_drained_sound(&db, &e);
	stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, idem_unfinished_sql, 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'node.started'", 0), 51);
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(balance) FROM "
	    "eav.ledger_accounts", 0), 4000000);
	free(wid);
	free(sid);
	th_db_free(&db);
}
END_TEST

/*
 * The producer dies after creating tasks, before its COMMIT, 50 times:
 * every event still becomes exactly one task.
 */
/* FM-017 */
START_TEST(test_matrix_producer_after_task_before_ack)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*id;

	th_db_new(&db);
	matrix_conf(&e, &db, 1);
	start_up(&e, &db, 1);
	id = arm(db.conn, "producer.after_task_before_ack", MATRIX_FIRINGS);
	PQclear(th_exec(db.conn, "SELECT eav.event_submit('lab', 'k' || i, "
	    "'task', '{\"queue\": \"default\", \"kind\": \"ev\", \"steps\": "
	    "[{\"tool\": \"noop\"}]}') FROM generate_series(1, 60) i", 0));
	ck_assert_msg(th_wait(db.conn, MATRIX_MS, "SELECT fired = "
	    MATRIX_FIRINGS " FROM eav.inject_points WHERE id = $1::bigint", 1,
	    id), "the producer point did not fire 50 times (log %s)", e.log);
	ck_assert_msg(th_wait(db.conn, MATRIX_MS, "SELECT count(*) = 60 FROM "
	    "eav.inbox WHERE state = 'accepted'", 0), "events were lost "
	    "(log %s)", e.log);
	assert_drained_sound(&db, &e);
	stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "kind = 'ev' AND state = 'succeeded'", 0), 60);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT task_id) FROM "
	    "eav.event_keys WHERE source = 'lab'", 0), 60);
	free(id);
	th_db_free(&db);
}
END_TEST

/*
 * Live arming: a worker started before the row existed picks it up by
 * NOTIFY, fires exactly the count over all workers, and disarming stops
 * it; every arming, firing and disarming is audited.
 */
START_TEST(test_live_arm_and_disarm)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*id;

	th_db_new(&db);
	matrix_conf(&e, &db, 2);
	start_up(&e, &db, 2);
	id = th_str(db.conn, "SELECT eav.inject_arm('worker.before_effect', "
	    "'error', 0, 3, NULL, 'noop')::text", 0);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', 'live', 10) FROM generate_series(1, 20)", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 20 FROM "
	    "eav.tasks WHERE kind = 'live' AND state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT fired * 10 + remaining FROM "
	    "eav.inject_points WHERE id = $1::bigint", 1, id), 30);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.retry_scheduled' AND "
	    "payload->>'error' = 'injected error'", 0), 3);
	ck_assert(th_log_contains(&e, "injection point worker.before_effect "
	    "fired: error"));

	/* Unlimited, then disarmed: nothing fires after the disarm. */
	free(id);
	id = th_str(db.conn, "SELECT eav.inject_arm('worker.after_claim', "
	    "'delay', 1)::text", 0);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', 'live2') FROM generate_series(1, 5)", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 5 FROM "
	    "eav.tasks WHERE kind = 'live2' AND state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT fired FROM eav.inject_points "
	    "WHERE id = $1::bigint", 1, id), 5);
	/* A worker that has not reloaded yet still cannot take a firing. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.inject_disarm()", 0), 2);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', 'live3') FROM generate_series(1, 5)", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 5 FROM "
	    "eav.tasks WHERE kind = 'live3' AND state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT fired FROM eav.inject_points "
	    "WHERE id = $1::bigint", 1, id), 5);
	stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type IN ('inject.armed', "
	    "'inject.disarmed', 'inject.fired')", 0), 2 + 2 + 3 + 5);
	free(id);
	th_db_free(&db);
}
END_TEST

/* Bad rows from psql: refused by a constraint naming the column. */
START_TEST(test_bad_rows_refused)
{
	static const struct {
		const char	*sql;
		const char	*constraint;
	} bad[] = {
		{ "('worker.nope', 'crash', 0, NULL)", "point" },
		{ "('worker.after_claim', 'explode', 0, NULL)", "action" },
		{ "('worker.after_claim', 'delay', -5, NULL)", "arg" },
		{ "('worker.after_claim', 'crash', 0, -1)", "remaining" },
		{ "('worker.mid_complete', 'error', 0, NULL)",
		    "action_supported" },
		{ "('worker.startup', 'exit', 256, NULL)", "exit_code" },
		{ "('worker.startup', 'exit', 78, NULL)", "exit_code" },
		{ "('supervisor.mid_reconcile', 'delay', 5, NULL)",
		    "action_supported" },
	};
	struct th_db	 db;
	char		 sql[256];
	const char	*err;
	size_t		 i;

	th_db_new(&db);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(sql, sizeof(sql), "INSERT INTO eav.inject_points "
		    "(point, action, arg, remaining) VALUES %s", bad[i].sql);
		err = th_err(db.conn, sql, 0);
		ck_assert_msg(strncmp(err, "23514", 5) == 0 &&
		    strstr(err, bad[i].constraint) != NULL,
		    "%s: %s", bad[i].sql, err);
	}
	err = th_err(db.conn, "INSERT INTO eav.inject_points (point, action, "
	    "step_id) VALUES ('worker.mid_complete', 'crash', 5)", 0);
	ck_assert_msg(strstr(err, "inject_points_step_id_point") != NULL, "%s",
	    err);
	err = th_err(db.conn, "INSERT INTO eav.inject_points (point, action, "
	    "tool) VALUES ('worker.after_claim', 'crash', 'nope')", 0);
	ck_assert_msg(strncmp(err, "23503", 5) == 0 &&
	    strstr(err, "inject_points_tool_known") != NULL, "%s", err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inject_points", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type LIKE 'inject.%'", 0), 0);
	PQclear(th_exec(db.conn, "SELECT eav.inject_arm('worker.startup', "
	    "'delay', 1)", 0));
	ck_assert_int_eq(strncmp(th_err(db.conn, "DELETE FROM "
	    "eav.inject_points", 0), "EA003", 5), 0);
	ck_assert_int_eq(strncmp(th_err(db.conn, "TRUNCATE "
	    "eav.inject_points", 0), "EA003", 5), 0);
	th_db_free(&db);
}
END_TEST

/* The table's constraints accept exactly the points and actions of C. */
START_TEST(test_points_match_sql)
{
	static const char *const acts[] = { "error", "drop" };
	struct th_db	 db;
	PGresult	*res;
	int		 p, a, ok, want;

	th_db_new(&db);
	for (p = 0; p < INJ_NPOINTS; p++) {
		for (a = -1; a < 2; a++) {
			res = PQexecParams(db.conn, "INSERT INTO "
			    "eav.inject_points (point, action) VALUES ($1, $2)",
			    2, NULL, (const char *const []){
			    inject_point_name(p), a < 0 ? "crash" : acts[a] },
			    NULL, NULL, 0);
			ok = PQresultStatus(res) == PGRES_COMMAND_OK;
			PQclear(res);
			want = a < 0 ? 1 : (inject_point_actions(p) &
			    (a == 0 ? INJ_ACT_ERROR : INJ_ACT_DROP)) != 0;
			ck_assert_msg(ok == want, "%s %s: SQL %s, C %s",
			    inject_point_name(p), a < 0 ? "crash" : acts[a],
			    ok ? "accepts" : "refuses",
			    want ? "accepts" : "refuses");
		}
	}
	/* And nothing else: one point per row, all of C's. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT point) FROM "
	    "eav.inject_points", 0), INJ_NPOINTS);
	th_db_free(&db);
}
END_TEST

/*
 * The checker finds each kind of violation planted behind the schema's
 * back, and does not flag the legal states that look like one.  $t is
 * the task of a fresh one-step (two-step for INV-13) task, $s its first
 * step, $i the incarnation of node n.
 */
static const struct {
	const char	*tool;
	const char	*sql;		/* statements; $t $s $i substituted */
	int		 quiescent;
	const char	*expect;	/* "INV-n=" in the result, or "" */
} planted[] = {
	{ "noop", "UPDATE eav.tasks SET state = 'succeeded' WHERE id = $t", 0,
	    "INV-1=1 (step:" },
	{ "noop", "SELECT 1", 1, "INV-1=1 (step:" },
	{ "demo.notify", "INSERT INTO eav.audit_events (type, outcome, actor,"
	    " step_id, payload) VALUES ('tool_call.unknown', 'unknown', 'x',"
	    " $s, '{\"epoch\": 1}'), ('step.claimed', 'success', 'x', $s,"
	    " '{\"epoch\": 2}')", 0, "INV-4=1 (step:" },
	{ "noop", "INSERT INTO eav.audit_events (type, outcome, actor,"
	    " step_id, payload) VALUES ('step.claimed', 'success', 'x', $s,"
	    " '{\"epoch\": 1}'), ('step.succeeded', 'success', 'x', $s,"
	    " '{\"epoch\": 1}'), ('step.failed', 'failure', 'x', $s,"
	    " '{\"epoch\": 1}')", 0, "INV-5=1 (step:" },
	{ "noop", "INSERT INTO eav.audit_events (type, outcome, actor,"
	    " step_id, payload) VALUES ('step.claimed', 'success', 'x', $s,"
	    " '{\"epoch\": 2}'), ('step.succeeded', 'success', 'x', $s,"
	    " '{\"epoch\": 1}')", 0, "INV-6=1 (audit:" },
	{ "noop", "UPDATE eav.steps SET attempt = 1 WHERE id = $s", 0,
	    "INV-7=1 (step:" },
	{ "noop", "UPDATE eav.steps SET state = 'running', owner_node = 'n',"
	    " owner_incarnation = $i, owner_pid = 424242, claimed_at = now() -"
	    " interval '1 hour' WHERE id = $s", 0, "INV-8=1 (step:" },
	{ "noop", "UPDATE eav.steps SET attempt = max_attempts + 1 WHERE"
	    " id = $s", 0, "INV-9=1 (step:" },
	{ "noop", "INSERT INTO eav.audit_events (type, outcome, actor,"
	    " step_id, payload) VALUES ('step.claimed', 'success',"
	    " 'worker:n/999999/1', $s, '{\"epoch\": 1}')", 0,
	    "INV-10=1 (audit:" },
	{ "noop+", "INSERT INTO eav.audit_events (type, outcome, actor,"
	    " step_id, payload) VALUES ('step.claimed', 'success', 'x', $s + 1,"
	    " '{\"epoch\": 1}')", 0, "INV-13=1 (step:" },
	/* Legal: a cancelled task's running step finishing its attempt. */
	{ "noop", "SELECT eav.claim('n', $i, 7, 1); SELECT eav.task_cancel($t)",
	    0, "" },
	/* Legal: a retry, then a release, of a cancelled task's attempts. */
	{ "noop", "SELECT eav.claim('n', $i, 7, 1); SELECT eav.task_cancel($t);"
	    " SELECT eav.complete('x', ARRAY[$s], ARRAY[1::bigint],"
	    " ARRAY['retry'], ARRAY[NULL::jsonb], ARRAY['e'])", 1, "" },
	{ "noop", "SELECT eav.claim('n', $i, 7, 1); SELECT eav.task_cancel($t);"
	    " SELECT eav.complete('x', ARRAY[$s], ARRAY[1::bigint],"
	    " ARRAY['release'], ARRAY[NULL::jsonb], ARRAY['stopping'])", 1,
	    "" },
};

/* Replaces $t, $s and $i in sql; returns a static buffer. */
static const char *
planted_sql(const char *sql, long long t, long long inc)
{
	static char	 out[2048];
	size_t		 o = 0;

	for (; *sql != '\0' && o < sizeof(out) - 32; sql++) {
		if (sql[0] == '$' && (sql[1] == 't' || sql[1] == 's' ||
		    sql[1] == 'i')) {
			o += (size_t)snprintf(out + o, sizeof(out) - o, "%lld",
			    sql[1] == 't' ? t : sql[1] == 's' ? t * 128 + 1 :
			    inc);
			sql++;
		} else
			out[o++] = *sql;
	}
	out[o] = '\0';
	return out;
}

START_TEST(test_check_finds_violations)
{
	struct th_db	 db;
	char		*v, sql[2048], *stmt, *save;
	long long	 t, inc;
	int		 two = strcmp(planted[_i].tool, "noop+") == 0;

	th_db_new(&db);
	inc = th_ll(db.conn, "SELECT eav.node_start('n', 'h', 1, 'v')", 0);
	t = th_ll(db.conn, two ? "SELECT eav.task_enqueue('default', 'k', "
	    "'[{\"tool\": \"noop\"}, {\"tool\": \"noop\"}]')" :
	    "SELECT eav.enqueue($1)", two ? 0 : 1, planted[_i].tool);
	snprintf(sql, sizeof(sql), "%s", planted_sql(planted[_i].sql, t, inc));
	for (stmt = strtok_r(sql, ";", &save); stmt != NULL;
	    stmt = strtok_r(NULL, ";", &save))
		PQclear(th_exec(db.conn, stmt, 0));
	v = th_str(db.conn, "SELECT coalesce(string_agg(inv || '=' || "
	    "violations || ' (' || coalesce(sample, '') || ')', ', '), '') "
	    "FROM eav.check_invariants($1::boolean) WHERE violations > 0", 1,
	    planted[_i].quiescent ? "true" : "false");
	if (*planted[_i].expect == '\0')
		ck_assert_msg(*v == '\0', "case %d: flagged %s", _i, v);
	else
		ck_assert_msg(strstr(v, planted[_i].expect) != NULL,
		    "case %d: expected %s in \"%s\"", _i, planted[_i].expect,
		    v);
	free(v);
	th_db_free(&db);
}
END_TEST

/* INV-3 and INV-12, and a session left by a dead process (INV-11). */
START_TEST(test_check_finds_more)
{
	struct th_db	 db;
	char		*v, *step;
	PGconn		*ghost;

	th_db_new(&db);
	v = th_str(db.conn, violations_sql, 0);
	ck_assert_str_eq(v, "");
	free(v);
	step = th_str(db.conn, "SELECT (eav.enqueue('noop') * 128 + 1)::text",
	    0);
	PQclear(th_exec(db.conn, "UPDATE eav.steps SET state = 'held', "
	    "held_reason = 'unknown_outcome' WHERE id = $1::bigint", 1, step));
	PQclear(th_exec(db.conn, "UPDATE eav.ledger_accounts SET balance = "
	    "balance + 1 WHERE id = 'carol'", 0));
	ghost = th_connect(db.dsn);
	PQclear(th_exec(ghost, "SET application_name = "
	    "'eav-worker:1:424242'", 0));
	v = th_str(db.conn, violations_sql, 0);
	ck_assert_msg(strstr(v, "INV-12=1 (step:") != NULL, "%s", v);
	ck_assert_msg(strstr(v, "INV-3=1 (account:carol)") != NULL, "%s", v);
	ck_assert_msg(strstr(v, "INV-11=1 (backend:") != NULL, "%s", v);
	PQfinish(ghost);
	free(v);
	free(step);
	th_db_free(&db);
}
END_TEST

/* eavctl inject: bad input is refused in one line and arms nothing. */
START_TEST(test_ctl_inject)
{
	static const char *const bad[][5] = {
		{ "arm", "worker.nope", "crash", NULL, NULL },
		{ "arm", "worker.after_claim", "explode", NULL, NULL },
		{ "arm", "worker.after_claim", "delay:-5", NULL, NULL },
		{ "arm", "worker.after_claim", "delay", NULL, NULL },
		{ "arm", "worker.mid_complete", "error", NULL, NULL },
		{ "arm", "worker.after_claim", "crash,count=5", NULL, NULL },
		{ "arm", "supervisor.mid_reconcile", "delay:5", NULL, NULL },
		{ "arm", "-n", "-1", "worker.after_claim", "crash" },
		{ "arm", "-n", "0", "worker.after_claim", "crash" },
		{ "arm", "-s", "0", "worker.after_claim", "crash" },
		{ "arm", "-s", "x", "worker.after_claim", "crash" },
		{ "arm", "-t", "nope", "worker.after_claim", "crash" },
		{ "arm", "-s", "5", "worker.mid_complete", "crash" },
		{ "disarm", "x", NULL, NULL, NULL },
	};
	struct th_db	 db;
	char		 out[512];
	size_t		 i;

	th_db_new(&db);
	snprintf(out, sizeof(out), "%s/%s.out", th_tmpdir(), db.name);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(eavctl(&db, out, "inject", bad[i][0],
		    bad[i][1], bad[i][2], bad[i][3], bad[i][4], (char *)NULL),
		    2);
		ck_assert_msg(th_file_contains(out, "eavctl: ") ||
		    th_file_contains(out, "usage:"), "case %zu", i);
	}
	ck_assert(th_file_contains(out, "injection id must be"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inject_points", 0), 0);

	ck_assert_int_eq(eavctl(&db, out, "inject", "arm", "-n", "2", "-t",
	    "noop", "worker.after_claim", "delay:5", (char *)NULL), 0);
	ck_assert(th_file_contains(out, "worker.after_claim=delay:5,count=2,"
	    "tool=noop"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inject_points WHERE point = 'worker.after_claim' AND action = "
	    "'delay' AND arg = 5 AND remaining = 2 AND tool = 'noop' AND "
	    "armed_by LIKE 'operator:%'", 0), 1);
	ck_assert_int_eq(eavctl(&db, out, "inject", "list", (char *)NULL), 0);
	ck_assert(th_file_contains(out, "worker.after_claim"));
	ck_assert_int_eq(eavctl(&db, out, "inject", "points", (char *)NULL),
	    0);
	ck_assert(th_file_contains(out, "supervisor.mid_reconcile"));
	ck_assert_int_eq(eavctl(&db, out, "inject", "disarm", "all",
	    (char *)NULL), 0);
	ck_assert(th_file_contains(out, "1 injection(s) disarmed"));
	ck_assert_int_eq(eavctl(&db, out, "inject", "disarm", "99",
	    (char *)NULL), 2);
	ck_assert_int_eq(eavctl(&db, out, "check", (char *)NULL), 0);
	ck_assert(th_file_contains(out, "13 invariant(s) checked, 0 violated"));
	PQclear(th_exec(db.conn, "UPDATE eav.ledger_accounts SET balance = "
	    "balance - 1 WHERE id = 'dave'", 0));
	ck_assert_int_eq(eavctl(&db, out, "check", (char *)NULL), 3);
	ck_assert(th_file_contains(out, "1 violated"));
	th_db_free(&db);
}
END_TEST

/*
 * eavctl rehearse on a live eavd: kills 3 workers that hold running
 * sleep steps, waits, reports, and writes a postmortem draft with the
 * template's headings.
 */
START_TEST(test_rehearse)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 out[512], draft[512];

	th_db_new(&db);
	snprintf(out, sizeof(out), "%s/%s.out", th_tmpdir(), db.name);
	snprintf(draft, sizeof(draft), "%s/%s.md", th_tmpdir(), db.name);
	ck_assert_int_eq(eavctl(&db, out, "rehearse", "-n", "0",
	    (char *)NULL), 2);
	ck_assert_int_eq(eavctl(&db, out, "rehearse", "-p", "worker.nope",
	    (char *)NULL), 2);
	ck_assert(th_file_contains(out, "nothing done"));
	matrix_conf(&e, &db, 2);
	start_up(&e, &db, 2);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('sleep', "
	    "'{\"ms\": 300}', 'default', 'rh') FROM generate_series(1, 60)",
	    0));
	ck_assert_int_eq(eavctl(&db, out, "rehearse", "-n", "3", "-i", "200",
	    "-o", draft, (char *)NULL), 0);
	ck_assert(th_file_contains(out, "workers killed:                 3"));
	ck_assert(th_file_contains(out, "0 violated"));
	ck_assert(th_file_contains(draft, "## Invariants after"));
	ck_assert(th_file_contains(draft, "## What changes"));
	ck_assert(th_file_contains(draft, "tool_call.unknown"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'process.exited' AND "
	    "payload->>'detail' LIKE '%signal 9%'", 0), 3);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 1);
	ck_assert(th_wait(db.conn, MATRIX_MS, "SELECT count(*) = 60 FROM "
	    "eav.tasks WHERE kind = 'rh' AND state = 'succeeded'", 0));

	/* At a point instead: armed for 2 firings, disarmed at the end. */
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('sleep', "
	    "'{\"ms\": 50}', 'default', 'rh2') FROM generate_series(1, 40)",
	    0));
	ck_assert_int_eq(eavctl(&db, out, "rehearse", "-p",
	    "worker.after_claim", "-n", "2", "-o", draft, (char *)NULL), 0);
	ck_assert(th_file_contains(out, "fired 2 time(s)"));
	ck_assert(th_file_contains(out, "workers killed:                 2"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inject_points WHERE disarmed_at IS NULL", 0), 0);
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * The drop action: a worker loses its connection right before a ledger
 * transfer's effect; it reconnects, and the transfer applies once.
 */
START_TEST(test_drop_before_effect)
{
	struct th_db	 db;
	struct th_eavd	 e;

	th_db_new(&db);
	matrix_conf(&e, &db, 1);
	start_up(&e, &db, 1);
	PQclear(th_exec(db.conn, "SELECT eav.inject_arm("
	    "'worker.before_effect', 'drop', 0, 1, NULL, 'ledger.transfer')",
	    0));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('ledger.transfer', "
	    "jsonb_build_object('from', 'alice', 'to', 'bob', 'amount', i), "
	    "'default', 'drop') FROM generate_series(1, 5) i", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 5 FROM "
	    "eav.tasks WHERE kind = 'drop' AND state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT fired FROM eav.inject_points",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.ledger_entries", 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT balance FROM "
	    "eav.ledger_accounts WHERE id = 'bob'", 0), 1000015);
	stop_ok(&e);
	ck_assert(th_log_contains(&e, "reconnected to the database"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'process.exited' AND "
	    "payload->>'detail' LIKE '%signal%'", 0), 0);
	th_db_free(&db);
}
END_TEST

Suite *
suite_inject(void)
{
	Suite	*s = suite_create("inject");
	TCase	*tc = tcase_create("inject");
	TCase	*matrix = tcase_create("matrix");
	TCase	*others = tcase_create("matrix-others");

	tcase_add_test(tc, test_bad_rows_refused);
	tcase_add_test(tc, test_points_match_sql);
	tcase_add_loop_test(tc, test_check_finds_violations, 0,
	    (int)(sizeof(planted) / sizeof(planted[0])));
	tcase_add_test(tc, test_check_finds_more);
	tcase_add_test(tc, test_live_arm_and_disarm);
	tcase_add_test(tc, test_ctl_inject);
	tcase_add_test(tc, test_rehearse);
	tcase_add_test(tc, test_drop_before_effect);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	tcase_add_test(matrix, test_matrix_worker_after_claim);
	tcase_add_test(matrix, test_matrix_worker_before_effect);
	tcase_add_test(matrix, test_matrix_worker_after_effect_before_complete);
	tcase_add_test(matrix, test_matrix_worker_mid_complete);
	tcase_set_timeout(matrix, 240);
	suite_add_tcase(s, matrix);
	tcase_add_test(others, test_matrix_supervisor_mid_reconcile);
	tcase_add_test(others, test_matrix_producer_after_task_before_ack);
	tcase_set_timeout(others, 240);
	suite_add_tcase(s, others);
	return s;
}
