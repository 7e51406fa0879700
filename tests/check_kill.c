/*
 * The kill switch (sql/0010): refused changes store nothing; engaged
 * under four busy workers, no claim commits after the engage (audit ids
 * are taken before commit, so a claim that committed after the engage
 * would carry a larger id than its audit row), every process reports
 * that it saw it, running steps finish, and claims resume on release;
 * per queue and per tool it stops only its scope, in the producer too.
 * Also: two steps with one client key never run at the same time.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define DEADLINE_MS	60000
#define BACKLOG		"20000"
#define ROUNDS		5

static const char engage_sql[] =
    "SELECT eav.kill_switch_engage($1, $2, $3, 'operator:test')";
static const char release_sql[] =
    "SELECT eav.kill_switch_release($1, $2, $3, 'operator:test')";

/* The id of the audit row of generation gen's change (type t). */
static long long
change_id(PGconn *c, const char *type, long long gen)
{
	char	g[24];

	snprintf(g, sizeof(g), "%lld", gen);
	return th_ll(c, "SELECT id FROM eav.audit_events WHERE type = $1 "
	    "AND (payload->>'generation')::bigint = $2::bigint", 2, type, g);
}

/* Steps claimed between two audit ids. */
static long long
claims_between(PGconn *c, long long from, long long to)
{
	char	a[24], b[24];

	snprintf(a, sizeof(a), "%lld", from);
	snprintf(b, sizeof(b), "%lld", to);
	return th_ll(c, "SELECT count(*) FROM eav.audit_events WHERE "
	    "type = 'step.claimed' AND id > $1::bigint AND id < $2::bigint",
	    2, a, b);
}

/* Waits until actors matching like saw generation gen (n of them). */
static int
observed_by(PGconn *c, const char *like, long long gen, int n)
{
	char	g[24], num[16];

	snprintf(g, sizeof(g), "%lld", gen);
	snprintf(num, sizeof(num), "%d", n);
	return th_wait(c, DEADLINE_MS, "SELECT count(DISTINCT actor) = "
	    "$3::int FROM eav.audit_events WHERE type = 'kill_switch.observed' "
	    "AND actor LIKE $1 AND (payload->>'generation')::bigint >= "
	    "$2::bigint", 3, like, g, num);
}

START_TEST(test_refused_changes)
{
	struct th_db	 db;
	const char	*e;

	th_db_new(&db);
	e = th_err(db.conn, engage_sql, 3, "global", NULL, "");
	ck_assert_msg(strstr(e, "22023") && strstr(e, "reason"), "%s", e);
	e = th_err(db.conn, engage_sql, 3, "global", NULL, NULL);
	ck_assert_msg(strstr(e, "22023"), "%s", e);
	e = th_err(db.conn, engage_sql, 3, "global", "default", "x");
	ck_assert_msg(strstr(e, "takes no target"), "%s", e);
	e = th_err(db.conn, engage_sql, 3, "queue", "nosuch", "x");
	ck_assert_msg(strstr(e, "no queue \"nosuch\""), "%s", e);
	e = th_err(db.conn, engage_sql, 3, "tool", "nosuch", "x");
	ck_assert_msg(strstr(e, "no tool \"nosuch\""), "%s", e);
	e = th_err(db.conn, engage_sql, 3, "queue", NULL, "x");
	ck_assert_msg(strstr(e, "needs the queue"), "%s", e);
	e = th_err(db.conn, engage_sql, 3, "planet", NULL, "x");
	ck_assert_msg(strstr(e, "global, queue or tool"), "%s", e);
	e = th_err(db.conn, release_sql, 3, "global", NULL, "x");
	ck_assert_msg(strstr(e, "EA003") && strstr(e, "not engaged"), "%s",
	    e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.kill_switches", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type LIKE 'kill_switch.%'", 0), 0);
	/* Engaging twice changes nothing the second time. */
	ck_assert_int_eq(th_ll(db.conn, engage_sql, 3, "global", NULL,
	    "drill"), th_ll(db.conn, engage_sql, 3, "global", NULL,
	    "again"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'kill_switch.engaged'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'kill_switch_engaged' AND state = 'open'", 0), 1);
	th_ll(db.conn, release_sql, 3, "global", NULL, "over");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'kill_switch_engaged' AND state = 'open'", 0), 0);
	th_db_free(&db);
}
END_TEST

/*
 * Engage and release ROUNDS times while four workers drain a backlog: no
 * step.claimed between an engage and its release, every process saw
 * each engage, claims resume after each release.
 */
/* FM-049 */
START_TEST(test_global_under_load)
{
	struct th_db	db;
	struct th_eavd	e;
	long long	gen, eng, rel = 0;
	char		last[24];
	int		i;

	th_db_new(&db);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 4\n");
	th_eavd_up(&e, db.conn, 4);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop') FROM "
	    "generate_series(1, " BACKLOG ")", 0));
	for (i = 0; i < ROUNDS; i++) {
		ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) > 0 "
		    "FROM eav.steps WHERE state = 'running' OR state = "
		    "'succeeded' AND finished_at > now() - interval '1 s'", 0));
		gen = th_ll(db.conn, engage_sql, 3, "global", NULL, "drill");
		eng = change_id(db.conn, "kill_switch.engaged", gen);
		ck_assert(observed_by(db.conn, "worker:%", gen, 4));
		ck_assert(observed_by(db.conn, "producer:%", gen, 1));
		ck_assert(observed_by(db.conn, "supervisor:%", gen, 1));
		/* What was running finishes; nothing new starts. */
		ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 0 "
		    "FROM eav.steps WHERE state = 'running'", 0));
		gen = th_ll(db.conn, release_sql, 3, "global", NULL, "over");
		rel = change_id(db.conn, "kill_switch.released", gen);
		ck_assert_int_eq(claims_between(db.conn, eng, rel), 0);
		ck_assert(observed_by(db.conn, "worker:%", gen, 4));
	}
	snprintf(last, sizeof(last), "%lld", rel);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) > 0 FROM "
	    "eav.audit_events WHERE type = 'step.claimed' AND id > $1::bigint",
	    1, last));
	ck_assert(th_log_contains(&e, "kill switch (generation"));
	th_eavd_stop_ok(&e);
	th_assert_sound(db.conn);
	th_db_free(&db);
}
END_TEST

/*
 * A queue's switch stops that queue (and the producer's events for it);
 * a tool's switch stops that tool; the rest flows; release lets them go.
 */
/* FM-049 */
START_TEST(test_queue_and_tool_scopes)
{
	struct th_db	db;
	struct th_eavd	e;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set('q2')", 0));
	th_ll(db.conn, engage_sql, 3, "queue", "q2", "q2 misbehaves");
	th_ll(db.conn, engage_sql, 3, "tool", "sleep", "sleep misbehaves");
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_up(&e, db.conn, 2);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', 'q2') "
	    "FROM generate_series(1, 20)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('sleep', '{\"ms\": 1}')"
	    " FROM generate_series(1, 20)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop') "
	    "FROM generate_series(1, 50)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.event_submit('t', 'k' || i, "
	    "'task', CASE WHEN i % 2 = 0 THEN '{\"queue\": \"q2\", "
	    "\"kind\": \"x\", \"steps\": [{\"tool\": \"noop\"}]}' "
	    "ELSE '{\"kind\": \"x\", \"steps\": [{\"tool\": \"noop\"}]}' "
	    "END, 'operator:test') "
	    "FROM generate_series(1, 10) i", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 55 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox "
	    "WHERE state = 'new'", 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'pending' AND (queue = 'q2' OR tool = 'sleep')",
	    0), 40);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events a JOIN eav.steps s ON s.id = a.step_id WHERE "
	    "a.type = 'step.claimed' AND (s.queue = 'q2' OR s.tool = "
	    "'sleep')", 0), 0);
	th_ll(db.conn, release_sql, 3, "queue", "q2", "fixed");
	th_ll(db.conn, release_sql, 3, "tool", "sleep", "fixed");
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 100 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox "
	    "WHERE state = 'new'", 0), 0);
	th_eavd_stop_ok(&e);
	th_assert_sound(db.conn);
	th_db_free(&db);
}
END_TEST

/* A step running when the switch is engaged finishes; none starts. */
/* FM-049 */
START_TEST(test_running_step_finishes)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*task;

	th_db_new(&db);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n");
	th_eavd_up(&e, db.conn, 1);
	task = th_str(db.conn, "SELECT eav.enqueue('sleep', "
	    "'{\"ms\": 1500}')::text", 0);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = 'running' "
	    "FROM eav.steps WHERE task_id = $1::bigint", 1, task));
	th_ll(db.conn, engage_sql, 3, "global", NULL, "drill");
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop')", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = 'succeeded' "
	    "FROM eav.tasks WHERE id = $1::bigint", 1, task));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'pending'", 0), 1);
	th_ll(db.conn, release_sql, 3, "global", NULL, "over");
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 2 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0));
	th_eavd_stop_ok(&e);
	free(task);
	th_db_free(&db);
}
END_TEST

/*
 * Two steps with one client key: the second waits (deferred, its
 * attempt refunded) while the first runs, then gets the first's outcome
 * without a call; the two runs never overlap.
 */
/* FM-036 */
START_TEST(test_key_in_flight_waits)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*a, *b;

	th_db_new(&db);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_up(&e, db.conn, 2);
	a = th_str(db.conn, "SELECT (eav.enqueue('sleep', '{\"ms\": 1200}', "
	    "p_idempotency_key => 'order-7') * 128 + 1)::text", 0);
	b = th_str(db.conn, "SELECT (eav.enqueue('sleep', '{\"ms\": 1200}', "
	    "p_idempotency_key => 'order-7') * 128 + 1)::text", 0);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 2 FROM "
	    "eav.steps WHERE state = 'succeeded'", 0));
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE step_id = $1::bigint AND type = "
	    "'step.released'", 1, b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE step_id = $1::bigint AND type = "
	    "'step.released' AND payload->>'reason' LIKE '%in flight%'", 1, b),
	    th_ll(db.conn, "SELECT count(*) FROM eav.audit_events WHERE "
	    "step_id = $1::bigint AND type = 'step.claimed'", 1, b) - 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE step_id = $1::bigint AND type = "
	    "'tool_call.deduplicated'", 1, b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT attempt FROM eav.steps "
	    "WHERE id = $1::bigint", 1, b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE step_id = $1::bigint AND type = "
	    "'step.claimed'", 1, a), 1);
	th_eavd_stop_ok(&e);
	free(a);
	free(b);
	th_db_free(&db);
}
END_TEST

Suite *
suite_kill(void)
{
	Suite	*s = suite_create("kill");
	TCase	*tc = tcase_create("kill");

	tcase_add_test(tc, test_refused_changes);
	tcase_add_test(tc, test_global_under_load);
	tcase_add_test(tc, test_queue_and_tool_scopes);
	tcase_add_test(tc, test_running_step_finishes);
	tcase_add_test(tc, test_key_in_flight_waits);
	tcase_set_timeout(tc, 240);
	suite_add_tcase(s, tc);
	return s;
}
