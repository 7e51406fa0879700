/*
 * Governance that eavd's sweep enforces: a step running past its queue's
 * stuck_after_ms raises task_stuck (audited task.stuck), a queue whose
 * runnable steps are not claimed raises queue_stalled, and each clears
 * as soon as what it names has moved.  Bad thresholds are refused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define DEADLINE_MS	30000

static const char open_alarm[] =
    "SELECT count(*) = 1 FROM eav.alarms WHERE type = $1 AND subject = $2 "
    "AND state = 'open'";
static const char resolved_alarm[] =
    "SELECT count(*) = 1 FROM eav.alarms WHERE type = $1 AND subject = $2 "
    "AND state = 'resolved'";

START_TEST(test_stuck_threshold_refused)
{
	struct th_db	 db;
	const char	*e;

	th_db_new(&db);
	e = th_err(db.conn, "SELECT eav.queue_set_stuck_after('default', "
	    "999)", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "stuck_after_ms"), "%s",
	    e);
	e = th_err(db.conn, "SELECT eav.queue_set_stuck_after('default', "
	    "NULL)", 0);
	ck_assert_msg(strstr(e, "22023"), "%s", e);
	e = th_err(db.conn, "SELECT eav.queue_set_stuck_after('nope', "
	    "5000)", 0);
	ck_assert_msg(strstr(e, "no queue"), "%s", e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT stuck_after_ms FROM "
	    "eav.queues WHERE name = 'default'", 0), 600000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'queue.updated'", 0), 0);
	th_db_free(&db);
}
END_TEST

/*
 * A 3 s step on a queue whose threshold is 1 s: task_stuck while it
 * runs, resolved once it succeeded.  A queue no worker serves: stalled,
 * resolved once its task is cancelled.
 */
/* FM-024 */
START_TEST(test_stuck_and_stalled)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*slow, *idle, subject[48], qsub[] = "queue:idle";

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set('idle')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.queue_set_stuck_after("
	    "'default', 1000, 'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.queue_set_stuck_after("
	    "'idle', 1000, 'operator:test')", 0));
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n"
	    "sweep_interval = 100ms\n[worker]\nqueues = default\n");
	th_eavd_up(&e, db.conn, 1);
	slow = th_str(db.conn, "SELECT (eav.enqueue('sleep', '{\"ms\": 3000}')"
	    " * 128 + 1)::text", 0);
	idle = th_str(db.conn, "SELECT eav.enqueue('noop', '{}', 'idle')::text",
	    0);
	snprintf(subject, sizeof(subject), "step:%s", slow);
	ck_assert(th_wait(db.conn, DEADLINE_MS, open_alarm, 2, "task_stuck",
	    subject));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'task.stuck' AND step_id = "
	    "$1::bigint", 1, slow), 1);
	ck_assert(th_wait(db.conn, DEADLINE_MS, open_alarm, 2,
	    "queue_stalled", qsub));
	ck_assert(th_wait(db.conn, DEADLINE_MS, resolved_alarm, 2,
	    "task_stuck", subject));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE id = $1::bigint AND state = 'succeeded'", 1, slow), 1);
	/* Raised once, not once per sweep. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT raise_count FROM eav.alarms "
	    "WHERE type = 'queue_stalled'", 0), 1);
	PQclear(th_exec(db.conn, "SELECT eav.task_cancel($1::bigint, "
	    "'operator:test', 'nobody serves it')", 1, idle));
	ck_assert(th_wait(db.conn, DEADLINE_MS, resolved_alarm, 2,
	    "queue_stalled", qsub));
	th_eavd_stop_ok(&e);
	free(slow);
	free(idle);
	th_db_free(&db);
}
END_TEST

START_TEST(test_retry_budget_refused)
{
	struct th_db	 db;
	const char	*e;

	th_db_new(&db);
	e = th_err(db.conn, "SELECT eav.retry_budget_set('queue', 'default',"
	    " 0)", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "between 1"), "%s", e);
	e = th_err(db.conn, "SELECT eav.retry_budget_set('queue', 'default',"
	    " -5)", 0);
	ck_assert_msg(strstr(e, "22023"), "%s", e);
	e = th_err(db.conn, "SELECT eav.retry_budget_set('queue', 'nope', "
	    "5)", 0);
	ck_assert_msg(strstr(e, "no queue"), "%s", e);
	e = th_err(db.conn, "SELECT eav.retry_budget_set('node', 'x', 5)", 0);
	ck_assert_msg(strstr(e, "queue or tool"), "%s", e);
	e = th_err(db.conn, "SELECT eav.retry_budget_set('tool', 'noop', "
	    "NULL)", 0);
	ck_assert_msg(strstr(e, "EA003"), "%s", e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.retry_budgets", 0), 0);
	th_db_free(&db);
}
END_TEST

/*
 * 20 steps that fail retryably at once on a queue allowing 5 retries a
 * minute: 5 retries run, the other 15 are deferred unspent to later
 * windows, retry_storm is raised once; removing the budget resolves it.
 */
/* FM-029 */
START_TEST(test_retry_storm_capped)
{
	struct th_db	 db;
	struct th_eavd	 e;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set('storm', 5, 1, 1)",
	    0));
	PQclear(th_exec(db.conn, "SELECT eav.retry_budget_set('queue', "
	    "'storm', 5, 'operator:test')", 0));
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_up(&e, db.conn, 2);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('fail', "
	    "'{\"retryable\": true}', 'storm') FROM generate_series(1, 20)",
	    0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 15 FROM "
	    "eav.steps WHERE state = 'pending' AND attempt = 1 AND "
	    "run_at > now() + interval '20 seconds'", 0));
	/* Retries that ran: attempt 2 closed by a completion. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type IN ('step.retry_scheduled', "
	    "'step.failed') AND (payload->>'attempt')::int >= 2", 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'retry.storm'", 0), 1);
	ck_assert(th_wait(db.conn, DEADLINE_MS, open_alarm, 2, "retry_storm",
	    "queue:storm"));
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.released' AND "
	    "payload->>'reason' LIKE '%retry budget%'", 0), 15);
	PQclear(th_exec(db.conn, "SELECT eav.retry_budget_set('queue', "
	    "'storm', NULL, 'operator:test')", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, resolved_alarm, 2,
	    "retry_storm", "queue:storm"));
	th_eavd_stop_ok(&e);
	th_assert_sound(db.conn);
	th_db_free(&db);
}
END_TEST

/*
 * An exec tool (/bin/sh) whose result asks for children: $1 is a printf
 * format of one child spec, whose %s gets this step's input; $2 copies.
 */
static const char loop_script[] =
    "i=$(cat); c=$(printf \"$1\" \"$i\"); out=$c; k=1; "
    "while [ $k -lt $2 ]; do out=\"$out,$c\"; k=$((k + 1)); done; "
    "printf '{\"enqueue\": [%s]}' \"$out\"";

static void
loop_tool(PGconn *c, const char *name, const char *child, int n)
{
	char	num[8];

	snprintf(num, sizeof(num), "%d", n);
	PQclear(th_exec(c, "SELECT eav.tool_register($1, 'exec', "
	    "jsonb_build_object('argv', jsonb_build_array('/bin/sh', '-c', "
	    "$2::text, 'sh', $3::text, $4::text)), true, 10000)", 4, name,
	    loop_script, child, num));
}

/*
 * A step that gets another step's recorded outcome (same client key) does
 * not create that outcome's children a second time.
 */
START_TEST(test_replay_spawns_nothing)
{
	struct th_db	 db;
	char		*a, *b, *ea, *eb, batch[512];
	static const char steps[] = "[{\"tool\": \"noop\", "
	    "\"idempotency_key\": \"hook-9\"}]";

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.node_start('n1', 'h', 1, 't')",
	    0));
	a = th_str(db.conn, "SELECT (eav.task_enqueue('default', 'k', $1, "
	    "'operator:t') * 128 + 1)::text", 1, steps);
	ea = th_str(db.conn, "SELECT claim_epoch::text FROM eav.claim('n1', 1, "
	    "7, 1)", 0);
	snprintf(batch, sizeof(batch), "[{\"id\": %s, \"epoch\": %s, "
	    "\"outcome\": \"succeeded\", \"rec\": true, \"result\": "
	    "{\"enqueue\": [{\"kind\": \"child\", \"steps\": "
	    "[{\"tool\": \"noop\"}]}]}}]", a, ea);
	PQclear(th_exec(db.conn, "SELECT * FROM eav.complete_batch('w', "
	    "$1::jsonb)", 1, batch));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "kind = 'child'", 0), 1);
	b = th_str(db.conn, "SELECT (eav.task_enqueue('default', 'k', $1, "
	    "'operator:t') * 128 + 1)::text", 1, steps);
	eb = th_str(db.conn, "SELECT claim_epoch || ':' || gate FROM eav.claim("
	    "'n1', 1, 7, 10) WHERE step_id = $1::bigint", 1, b);
	ck_assert_str_eq(eb + strcspn(eb, ":"), ":replay");
	eb[strcspn(eb, ":")] = '\0';
	snprintf(batch, sizeof(batch), "[{\"id\": %s, \"epoch\": %s, "
	    "\"outcome\": \"replay\"}]", b, eb);
	PQclear(th_exec(db.conn, "SELECT * FROM eav.complete_batch('w', "
	    "$1::jsonb)", 1, batch));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND state = 'succeeded' AND result ? 'enqueue'", 1,
	    b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "kind = 'child'", 0), 1);
	free(a);
	free(b);
	free(ea);
	free(eb);
	th_db_free(&db);
}
END_TEST

START_TEST(test_recursion_refused_settings)
{
	struct th_db	 db;
	const char	*e;

	th_db_new(&db);
	e = th_err(db.conn, "SELECT eav.queue_set_recursion('default', 0, "
	    "NULL)", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "max_depth"), "%s", e);
	e = th_err(db.conn, "SELECT eav.queue_set_recursion('default', NULL, "
	    "-1)", 0);
	ck_assert_msg(strstr(e, "max_trace_tasks"), "%s", e);
	e = th_err(db.conn, "SELECT eav.queue_set_recursion('nope', 3, 3)",
	    0);
	ck_assert_msg(strstr(e, "no queue"), "%s", e);
	th_db_free(&db);
}
END_TEST

/*
 * A task whose tool enqueues itself again: stopped at max_depth 4 (five
 * tasks, depths 0-4); one that enqueues itself with one dedupe_key:
 * stopped at the second use (cycle); one that enqueues three of itself:
 * stopped at the trace's fan-out budget of 10.  Each refusal: audited
 * loop.blocked, loop_blocked alarm about the trace; every task created
 * succeeded.  A malformed spec is refused without failing its parent.
 */
/* FM-047 */
START_TEST(test_self_triggering_chains)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*t1, *t2, *t3, *t4;
	static const char blocked[] = "SELECT count(*) = 1 FROM "
	    "eav.audit_events a JOIN eav.tasks t ON t.id = a.task_id WHERE "
	    "a.type = 'loop.blocked' AND a.payload->>'reason' = $2 AND "
	    "t.trace_id = (SELECT trace_id FROM eav.tasks WHERE id = "
	    "$1::bigint)";
	static const char in_trace[] = "SELECT count(*) FROM eav.tasks WHERE "
	    "trace_id = (SELECT trace_id FROM eav.tasks WHERE id = $1::bigint)"
	    " AND state = 'succeeded'";

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set_recursion('default', "
	    "4, 10, 'operator:test')", 0));
	loop_tool(db.conn, "deep", "{\"kind\": \"deep\", \"steps\": "
	    "[{\"tool\": \"deep\", \"input\": %s}]}", 1);
	loop_tool(db.conn, "cyc", "{\"kind\": \"cyc\", \"dedupe_key\": "
	    "\"k1\", \"steps\": [{\"tool\": \"cyc\", \"input\": %s}]}", 1);
	loop_tool(db.conn, "fan", "{\"kind\": \"fan\", \"steps\": "
	    "[{\"tool\": \"fan\", \"input\": %s}]}", 3);
	loop_tool(db.conn, "bad", "{\"kind\": \"bad\", \"bogus\": %s}", 1);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_up(&e, db.conn, 2);
	t1 = th_str(db.conn, "SELECT eav.enqueue('deep', '{\"n\": 1}')::text",
	    0);
	t2 = th_str(db.conn, "SELECT eav.enqueue('cyc', '{\"n\": 2}')::text",
	    0);
	t3 = th_str(db.conn, "SELECT eav.enqueue('fan', '{\"n\": 3}')::text",
	    0);
	t4 = th_str(db.conn, "SELECT eav.enqueue('bad', '{\"n\": 4}')::text",
	    0);
	ck_assert(th_wait(db.conn, DEADLINE_MS, blocked, 2, t1, "depth"));
	ck_assert(th_wait(db.conn, DEADLINE_MS, blocked, 2, t2, "cycle"));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) >= 1 FROM "
	    "eav.audit_events WHERE type = 'loop.blocked' AND "
	    "payload->>'reason' = 'fan_out'", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 0 FROM "
	    "eav.tasks WHERE state = 'active'", 0));
	ck_assert_int_eq(th_ll(db.conn, in_trace, 1, t1), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT max(depth) FROM eav.tasks "
	    "WHERE kind = 'deep'", 0), 4);
	ck_assert_int_eq(th_ll(db.conn, in_trace, 1, t2), 2);
	ck_assert_int_eq(th_ll(db.conn, in_trace, 1, t3), 10);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'loop_blocked' AND state = 'open'", 0), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'task.spawn_refused' AND task_id = "
	    "$1::bigint AND payload->>'error' LIKE '%bogus%'", 1, t4), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks "
	    "WHERE state <> 'succeeded'", 0), 0);
	th_eavd_stop_ok(&e);
	th_assert_sound(db.conn);
	free(t1);
	free(t2);
	free(t3);
	free(t4);
	th_db_free(&db);
}
END_TEST

static const char approve_sql[] =
    "SELECT eav.approval_approve($1::bigint, $2, 'looks fine')";
static const char deny_sql[] =
    "SELECT eav.approval_deny($1::bigint, $2, $3)";

/* The open approval of task t's first step (caller frees). */
static char *
approval_of(PGconn *c, const char *task)
{
	return th_str(c, "SELECT id::text FROM eav.approvals WHERE task_id = "
	    "$1::bigint AND state = 'open'", 1, task);
}

/*
 * Policies and decisions in SQL: a step of a policed tool waits; approve
 * makes it pending; deny fails it and its task; approving twice, denied,
 * unknown or by the task's creator (four eyes) is refused; a denial
 * needs a reason; a cancelled task closes its approval; bad policies
 * are refused with nothing stored.
 */
START_TEST(test_approvals_decisions)
{
	struct th_db	 db;
	const char	*e;
	char		*t1, *t2, *t3, *a1, *a2, *a3;

	th_db_new(&db);
	e = th_err(db.conn, "SELECT eav.tool_approval_set('noop', "
	    "'{\"ttl_ms\": 0}')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "ttl_ms"), "%s", e);
	e = th_err(db.conn, "SELECT eav.tool_approval_set('noop', "
	    "'{\"on_expiry\": \"later\"}')", 0);
	ck_assert_msg(strstr(e, "on_expiry"), "%s", e);
	e = th_err(db.conn, "SELECT eav.tool_approval_set('noop', "
	    "'{\"who\": 1}')", 0);
	ck_assert_msg(strstr(e, "unknown field \"who\""), "%s", e);
	e = th_err(db.conn, "SELECT eav.tool_approval_set('nope', '{}')", 0);
	ck_assert_msg(strstr(e, "no tool"), "%s", e);
	/* (event.clarify, migration 0022, has a policy of its own.) */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools "
	    "WHERE name = 'noop' AND approval IS NOT NULL", 0), 0);
	PQclear(th_exec(db.conn, "SELECT eav.tool_approval_set('noop', "
	    "'{\"four_eyes\": true}', 'operator:admin')", 0));
	t1 = th_str(db.conn, "SELECT eav.enqueue('noop', p_actor => "
	    "'operator:alice')::text", 0);
	t2 = th_str(db.conn, "SELECT eav.enqueue('noop', p_actor => "
	    "'operator:alice')::text", 0);
	t3 = th_str(db.conn, "SELECT eav.enqueue('noop', p_actor => "
	    "'operator:alice')::text", 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'waiting_approval'", 0), 3);
	a1 = approval_of(db.conn, t1);
	a2 = approval_of(db.conn, t2);
	a3 = approval_of(db.conn, t3);
	e = th_err(db.conn, approve_sql, 2, a1, "operator:alice");
	ck_assert_msg(strstr(e, "EA006") && strstr(e, "four eyes"), "%s", e);
	PQclear(th_exec(db.conn, approve_sql, 2, a1, "operator:bob"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND state = 'pending'", 1, t1), 1);
	e = th_err(db.conn, approve_sql, 2, a1, "operator:bob");
	ck_assert_msg(strstr(e, "EA003") && strstr(e, "already approved"),
	    "%s", e);
	e = th_err(db.conn, deny_sql, 3, a2, "operator:bob", "");
	ck_assert_msg(strstr(e, "needs a reason"), "%s", e);
	PQclear(th_exec(db.conn, deny_sql, 3, a2, "operator:bob", "no"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "id = $1::bigint AND state = 'failed'", 1, t2), 1);
	e = th_err(db.conn, approve_sql, 2, a2, "operator:bob");
	ck_assert_msg(strstr(e, "already denied"), "%s", e);
	e = th_err(db.conn, approve_sql, 2, "999999", "operator:bob");
	ck_assert_msg(strstr(e, "EA004"), "%s", e);
	PQclear(th_exec(db.conn, "SELECT eav.task_cancel($1::bigint, "
	    "'operator:bob', 'not needed')", 1, t3));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.approvals "
	    "WHERE id = $1::bigint AND state = 'cancelled'", 1, a3), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type IN ('approval.requested', "
	    "'approval.approved', 'approval.denied')", 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.check_invariants(false) WHERE violations > 0", 0), 0);
	free(t1);
	free(t2);
	free(t3);
	free(a1);
	free(a2);
	free(a3);
	th_db_free(&db);
}
END_TEST

/*
 * With eavd: a waiting step is never claimed; approved, it runs; an
 * approval nobody decides expires in eavd's sweep: fail policy fails the
 * task, reissue opens a new approval; a two-step task's second step
 * waits when it becomes ready.
 */
/* FM-025 */
START_TEST(test_approvals_with_eavd)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*t1, *t2, *t3, *a1;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.tool_approval_set('noop', "
	    "'{}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.tool_approval_set('fail', "
	    "'{\"ttl_ms\": 1000}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.tool_approval_set('sleep', "
	    "'{\"ttl_ms\": 1000, \"on_expiry\": \"reissue\"}')", 0));
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n"
	    "sweep_interval = 100ms\n");
	th_eavd_up(&e, db.conn, 1);
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('free', 'builtin', "
	    "'{\"builtin\": \"noop\"}', true, 1000)", 0));
	t1 = th_str(db.conn, "SELECT eav.task_enqueue('default', 'two', "
	    "'[{\"tool\": \"free\"}, {\"tool\": \"noop\"}]', "
	    "'operator:alice')::text", 0);
	t2 = th_str(db.conn, "SELECT eav.enqueue('fail')::text", 0);
	t3 = th_str(db.conn, "SELECT eav.enqueue('sleep', '{\"ms\": 1}')::text",
	    0);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = "
	    "'waiting_approval' FROM eav.steps WHERE id = $1::bigint * 128 + 2",
	    1, t1));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = 'failed' FROM "
	    "eav.tasks WHERE id = $1::bigint", 1, t2));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'approval.expired' AND task_id = "
	    "$1::bigint", 1, t2), 1);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) >= 2 FROM "
	    "eav.approvals WHERE task_id = $1::bigint", 1, t3));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.claimed' AND task_id IN "
	    "($1::bigint, $2::bigint)", 2, t2, t3), 0);
	a1 = approval_of(db.conn, t1);
	PQclear(th_exec(db.conn, approve_sql, 2, a1, "operator:bob"));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = 'succeeded' "
	    "FROM eav.tasks WHERE id = $1::bigint", 1, t1));
	PQclear(th_exec(db.conn, "SELECT eav.task_cancel($1::bigint, "
	    "'operator:bob', 'done testing')", 1, t3));
	th_eavd_stop_ok(&e);
	th_assert_sound(db.conn);
	free(t1);
	free(t2);
	free(t3);
	free(a1);
	th_db_free(&db);
}
END_TEST

/*
 * Approval asked for by the task (a step's "requires_approval") or by a
 * rule's template, on a tool with no policy (0029): the marked steps
 * wait, first and later ones, with their policy (four eyes refuses the
 * creator); the unmarked step runs; bad values are refused naming the
 * field, with nothing stored.
 */
START_TEST(test_approvals_by_task_and_rule)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*err;
	char		*t, *a, *ev, *rt;

	th_db_new(&db);
	err = th_err(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "'[{\"tool\": \"noop\", \"requires_approval\": \"yes\"}]')", 0);
	ck_assert_msg(strstr(err, "22023") && strstr(err,
	    "\"requires_approval\" must be"), "%s", err);
	err = th_err(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "'[{\"tool\": \"noop\", \"requires_approval\": "
	    "{\"ttl\": 1}}]')", 0);
	ck_assert_msg(strstr(err, "unknown field \"ttl\""), "%s", err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    0);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n");
	th_eavd_up(&e, db.conn, 1);
	t = th_str(db.conn, "SELECT eav.task_enqueue('default', 'three', "
	    "'[{\"tool\": \"noop\", \"requires_approval\": true}, "
	    "{\"tool\": \"noop\", \"requires_approval\": {\"four_eyes\": true, "
	    "\"ttl_ms\": 60000}}, {\"tool\": \"noop\", \"requires_approval\": "
	    "false}]', 'operator:alice')::text", 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint * 128 + 1 AND state = 'waiting_approval'", 1, t),
	    1);
	a = approval_of(db.conn, t);
	PQclear(th_exec(db.conn, approve_sql, 2, a, "operator:alice"));
	free(a);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = "
	    "'waiting_approval' FROM eav.steps WHERE id = $1::bigint * 128 + 2",
	    1, t));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.approvals "
	    "WHERE task_id = $1::bigint AND state = 'open' AND four_eyes AND "
	    "expires_at - requested_at = '60 s'", 1, t), 1);
	a = approval_of(db.conn, t);
	err = th_err(db.conn, approve_sql, 2, a, "operator:alice");
	ck_assert_msg(strstr(err, "EA006"), "%s", err);
	PQclear(th_exec(db.conn, approve_sql, 2, a, "operator:bob"));
	free(a);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT state = 'succeeded' "
	    "FROM eav.tasks WHERE id = $1::bigint", 1, t));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.approvals "
	    "WHERE task_id = $1::bigint", 1, t), 2);

	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('ping', "
	    "'{\"type\": \"object\"}', NULL, 1000, 0, 'pings', "
	    "'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('careful', 'ping', NULL, "
	    "'[]', '{\"kind\": \"careful\", \"steps\": [{\"tool\": \"noop\", "
	    "\"requires_approval\": true}]}', 10, 0, 60, 'operator:test')", 0));
	ev = th_str(db.conn, "SELECT eav.event_submit('src', 'k1', 'ping', "
	    "'{}', 'operator:test')::text", 0);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT task_id IS NOT NULL "
	    "FROM eav.inbox WHERE id = $1::bigint", 1, ev));
	rt = th_str(db.conn, "SELECT task_id::text FROM eav.inbox WHERE id = "
	    "$1::bigint", 1, ev);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND state = 'waiting_approval'", 1, rt), 1);
	PQclear(th_exec(db.conn, "SELECT eav.task_cancel($1::bigint, "
	    "'operator:bob', 'done testing')", 1, rt));
	th_eavd_stop_ok(&e);
	th_assert_sound(db.conn);
	free(t);
	free(ev);
	free(rt);
	th_db_free(&db);
}
END_TEST

/* What each role may not do: every one fails with 42501. */
static const struct {
	const char	*role;
	const char	*sql;
} forbidden[] = {
	{ "eav_worker", "UPDATE eav.steps SET state = 'failed'" },
	{ "eav_worker", "DELETE FROM eav.audit_events" },
	{ "eav_worker", "SELECT eav.approval_approve(1, 'worker')" },
	{ "eav_worker", "SELECT eav.kill_switch_engage('global', NULL, 'x')" },
	{ "eav_worker", "SELECT eav.enqueue('noop')" },
	{ "eav_worker", "SELECT eav.audit('x', 'success', 'w', NULL, NULL, "
	    "NULL)" },
	{ "eav_producer", "SELECT * FROM eav.complete_and_claim('p', '[]', "
	    "'n', 1, 1, 1)" },
	{ "eav_producer", "SELECT count(*) FROM eav.steps" },
	{ "eav_api", "SELECT eav.approval_deny(1, 'api', 'no')" },
	{ "eav_api", "SELECT count(*) FROM eav.audit_events" },
	{ "eav_api", "SELECT eav.tool_register('t', 'builtin', "
	    "'{\"builtin\": \"noop\"}', true, 1000)" },
	{ "eav_operator", "UPDATE eav.steps SET state = 'failed'" },
	{ "eav_operator", "DELETE FROM eav.audit_events" },
	{ "eav_operator", "TRUNCATE eav.audit_events" },
	{ "eav_operator", "SELECT * FROM eav.complete_and_claim('o', '[]', "
	    "'n', 1, 1, 1)" },
	{ "eav_auditor", "SELECT eav.enqueue('noop')" },
	{ "eav_auditor", "INSERT INTO eav.audit_events (type, outcome, actor) "
	    "VALUES ('forged', 'success', 'me')" },
	{ "eav_auditor", "SELECT count(*) FROM eav.steps" },
};

/*
 * Four eyes holds against a chosen actor label: the session that made the
 * task may not approve it as "someone else"; another login may.
 */
static void
four_eyes_by_session(PGconn *c)
{
	const char	*e;
	char		*a, *t;

	PQclear(th_exec(c, "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles "
	    "WHERE rolname = 'eav_test_alice') THEN CREATE ROLE "
	    "eav_test_alice; CREATE ROLE eav_test_bob; END IF; GRANT "
	    "eav_operator TO eav_test_alice, eav_test_bob; END $$", 0));
	PQclear(th_exec(c, "SELECT eav.tool_approval_set('sleep', "
	    "'{\"four_eyes\": true}')", 0));
	PQclear(th_exec(c, "SET SESSION AUTHORIZATION eav_test_alice", 0));
	t = th_str(c, "SELECT eav.enqueue('sleep', '{\"ms\": 1}', p_actor => "
	    "'operator:alice')::text", 0);
	a = approval_of(c, t);
	e = th_err(c, "SELECT eav.approval_approve($1::bigint, "
	    "'operator:bob')", 1, a);
	ck_assert_msg(strstr(e, "EA006"), "%s", e);
	PQclear(th_exec(c, "RESET SESSION AUTHORIZATION", 0));
	PQclear(th_exec(c, "SET SESSION AUTHORIZATION eav_test_bob", 0));
	PQclear(th_exec(c, "SELECT eav.approval_approve($1::bigint, "
	    "'operator:bob')", 1, a));
	PQclear(th_exec(c, "RESET SESSION AUTHORIZATION", 0));
	/* The audit says which login wrote each row, whatever its actor. */
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE task_id = $1::bigint AND (type, role) IN (('task.enqueued', "
	    "'eav_test_alice'), ('approval.approved', 'eav_test_bob'))", 1, t),
	    2);
	free(a);
	free(t);
}

/*
 * Least privilege: the roles exist, none superuser, none owns anything
 * of eav; no eav function is executable by PUBLIC; every forbidden
 * action of each role fails with 42501; what each role is for works.
 */
START_TEST(test_least_privilege)
{
	struct th_db	 db;
	const char	*e;
	size_t		 i;

	th_db_new(&db);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM pg_roles WHERE "
	    "rolname IN ('eav_worker', 'eav_producer', 'eav_api', "
	    "'eav_operator', 'eav_auditor') AND NOT rolsuper", 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM pg_class c "
	    "JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname LIKE "
	    "'eav\\_%'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM pg_proc p JOIN "
	    "pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'eav' "
	    "AND has_function_privilege('public', p.oid, 'EXECUTE')", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM pg_proc p JOIN "
	    "pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'eav' "
	    "AND has_function_privilege('eav_worker', p.oid, 'EXECUTE') AND "
	    "NOT (p.prosecdef AND p.proconfig IS NOT NULL)", 0), 0);
	for (i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++) {
		PQclear(th_exec(db.conn, "SELECT set_config('role', $1, false)",
		    1, forbidden[i].role));
		e = th_err(db.conn, forbidden[i].sql, 0);
		ck_assert_msg(strncmp(e, "42501", 5) == 0, "%s: %s: %s",
		    forbidden[i].role, forbidden[i].sql, e);
		PQclear(th_exec(db.conn, "RESET ROLE", 0));
	}
	PQclear(th_exec(db.conn, "SET ROLE eav_operator", 0));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop')", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps", 0),
	    1);
	PQclear(th_exec(db.conn, "SET ROLE eav_auditor", 0));
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events", 0), 1);
	PQclear(th_exec(db.conn, "SET ROLE eav_worker", 0));
	PQclear(th_exec(db.conn, "SELECT * FROM eav.kill_switch_observe("
	    "'worker:x', NULL)", 0));
	PQclear(th_exec(db.conn, "RESET ROLE", 0));
	four_eyes_by_session(db.conn);
	th_db_free(&db);
}
END_TEST

/* Starts incarnation of node "n1"; returns it (caller frees). */
static char *
gov_node(PGconn *c)
{
	return th_str(c, "SELECT eav.node_start('n1', 'test', 1, 'test')"
	    "::text", 0);
}

/*
 * eav.redaction_busy was the recursion guard of the leak alarm, and any
 * session could set it: a worker doing so had a secret in its result
 * redacted but neither alarmed nor audited.  It is ignored now (0025).
 */
/* FM-100 */
START_TEST(test_redaction_flag_ignored)
{
	struct th_db	 db;
	char		*inc, *step, *epoch, batch[256];

	th_db_new(&db);
	inc = gov_node(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop')", 0));
	step = th_str(db.conn, "SELECT id::text FROM eav.steps", 0);
	epoch = th_str(db.conn, "SELECT claim_epoch::text FROM eav.claim("
	    "'n1', $1::bigint, 7, 1, NULL)", 1, inc);
	snprintf(batch, sizeof(batch), "[{\"id\": %s, \"epoch\": %s, "
	    "\"outcome\": \"succeeded\", \"result\": {\"note\": "
	    "\"Bearer abcdefghijklmnopqrstu\"}}]", step, epoch);
	PQclear(th_exec(db.conn, "SET ROLE eav_worker", 0));
	PQclear(th_exec(db.conn, "SET eav.redaction_busy = on", 0));
	PQclear(th_exec(db.conn, "SELECT * FROM eav.complete_and_claim("
	    "'worker:n1', $1::jsonb, 'n1', $2::bigint, 7, 0, NULL)", 2, batch,
	    inc));
	PQclear(th_exec(db.conn, "RESET ROLE", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'succeeded' AND result::text LIKE "
	    "'%REDACTED:bearer_credential%' AND result::text NOT LIKE "
	    "'%abcdefghijkl%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'secret_leak' AND subject = 'steps.result.note'", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'secret.leak' AND step_id = "
	    "$1::bigint", 1, step), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.redaction_guard", 0), 0);
	free(epoch);
	free(step);
	free(inc);
	th_db_free(&db);
}
END_TEST

/*
 * A budget of 3 retries a minute: a real retry held back ten times by a
 * busy client key (gate wait, no call) spends none of it; four real
 * retries then get three calls and one budget deferral.
 */
/* FM-101 */
START_TEST(test_retry_budget_gated_free)
{
	struct th_db	 db;
	char		*inc, *b, *epoch, *gate;
	int		 i;

	th_db_new(&db);
	inc = gov_node(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.retry_budget_set('queue', "
	    "'default', 3, 'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', NULL, 5, 'k')", 0));
	b = th_str(db.conn, "SELECT id::text FROM eav.steps", 0);
	PQclear(th_exec(db.conn, "CREATE TEMP TABLE cl AS SELECT * FROM "
	    "eav.claim('n1', $1::bigint, 7, 1, NULL)", 1, inc));
	PQclear(th_exec(db.conn, "SELECT eav.complete_batch('t', "
	    "jsonb_agg(jsonb_build_object('id', step_id, 'epoch', "
	    "claim_epoch, 'outcome', 'retry', 'error', 'boom'))) FROM cl", 0));
	/* A second step with the key, running: B must wait for it. */
	PQclear(th_exec(db.conn, "UPDATE eav.steps SET run_at = now() + "
	    "interval '1 hour' WHERE id = $1::bigint", 1, b));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', NULL, 5, 'k')", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim("
	    "'n1', $1::bigint, 7, 1, NULL)", 1, inc), 1);
	PQclear(th_exec(db.conn, "UPDATE eav.steps SET run_at = now() - "
	    "interval '1 second' WHERE id = $1::bigint", 1, b));
	for (i = 0; i < 10; i++) {
		PQclear(th_exec(db.conn, "TRUNCATE cl", 0));
		PQclear(th_exec(db.conn, "INSERT INTO cl SELECT * FROM "
		    "eav.claim('n1', $1::bigint, 7, 1, NULL)", 1, inc));
		gate = th_str(db.conn, "SELECT gate FROM cl WHERE step_id = "
		    "$1::bigint AND attempt = 2", 1, b);
		ck_assert_str_eq(gate, "wait");
		free(gate);
		epoch = th_str(db.conn, "SELECT claim_epoch::text FROM cl", 0);
		gate = th_str(db.conn, "SELECT eav.step_defer('t', $1::bigint, "
		    "$2::bigint, 0, false, 'not called')", 2, b, epoch);
		ck_assert_str_eq(gate, "pending");
		free(gate);
		free(epoch);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT used FROM eav.retry_budgets",
	    0), 0);
	PQclear(th_exec(db.conn, "UPDATE eav.steps SET run_at = now() + "
	    "interval '1 hour' WHERE id = $1::bigint", 1, b));
	/* Four real retries. */
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', NULL, 5) FROM generate_series(1, 4)", 0));
	PQclear(th_exec(db.conn, "TRUNCATE cl", 0));
	PQclear(th_exec(db.conn, "INSERT INTO cl SELECT * FROM eav.claim("
	    "'n1', $1::bigint, 7, 10, NULL)", 1, inc));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM cl", 0), 4);
	PQclear(th_exec(db.conn, "SELECT eav.complete_batch('t', "
	    "jsonb_agg(jsonb_build_object('id', step_id, 'epoch', "
	    "claim_epoch, 'outcome', 'retry', 'error', 'boom'))) FROM cl", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.steps SET run_at = now() - "
	    "interval '1 second' WHERE state = 'pending' AND id <> $1::bigint",
	    1, b));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FILTER (WHERE gate "
	    "IS NULL) * 10 + count(*) FILTER (WHERE gate LIKE 'budget:%') "
	    "FROM eav.claim('n1', $1::bigint, 7, 10, NULL)", 1, inc), 31);
	ck_assert_int_eq(th_ll(db.conn, "SELECT used FROM eav.retry_budgets",
	    0), 4);
	free(b);
	free(inc);
	th_db_free(&db);
}
END_TEST

/* Sends a claim that defers what it claimed; 1 if it ended in 40P01. */
static int
gov_round(PGconn *c, const char *inc, const char *pid, int send)
{
	const char	*p[2] = { inc, pid };
	PGresult	*res;
	const char	*st;
	int		 dead = 0;

	if (send) {
		ck_assert(PQsendQueryParams(c, "SELECT count(eav.step_defer("
		    "'t', step_id, claim_epoch, 0, false, 'x')) FROM eav.claim("
		    "'n1', $1::bigint, $2::integer, 4, NULL)", 2, NULL, p, NULL,
		    NULL, 0));
		return 0;
	}
	while ((res = PQgetResult(c)) != NULL) {
		st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		if (PQresultStatus(res) == PGRES_FATAL_ERROR) {
			ck_assert_msg(st != NULL && strcmp(st, "40P01") == 0,
			    "%s", PQresultErrorMessage(res));
			dead = 1;
		}
		PQclear(res);
	}
	return dead;
}

/*
 * Two workers claiming retries covered by a queue's and a tool's budget
 * at once, 300 times each, with nothing between them: the budget rows
 * are locked in one order, so no claim dies of a deadlock.
 */
/* FM-102 */
START_TEST(test_retry_budget_lock_order)
{
	struct th_db	 db;
	PGconn		*other;
	char		*inc;
	int		 i, dead = 0;

	th_db_new(&db);
	inc = gov_node(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.retry_budget_set('tool', "
	    "'noop', 1000000, 'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.retry_budget_set('queue', "
	    "'default', 1000000, 'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', NULL, 1000) FROM generate_series(1, 40)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.complete_batch('t', "
	    "jsonb_agg(jsonb_build_object('id', step_id, 'epoch', "
	    "claim_epoch, 'outcome', 'retry', 'error', 'boom'))) FROM "
	    "eav.claim('n1', $1::bigint, 7, 100, NULL)", 1, inc));
	PQclear(th_exec(db.conn, "UPDATE eav.steps SET run_at = now()", 0));
	other = th_connect(db.dsn);
	for (i = 0; i < 300; i++) {
		gov_round(db.conn, inc, "7", 1);
		gov_round(other, inc, "8", 1);
		dead += gov_round(db.conn, inc, "7", 0);
		dead += gov_round(other, inc, "8", 0);
	}
	ck_assert_int_eq(dead, 0);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.claimed'", 0), 1000);
	PQfinish(other);
	free(inc);
	th_db_free(&db);
}
END_TEST

/*
 * The trace locks of a completion batch are taken first, in key order
 * (0027): one for each trace whose succeeded step asks for children,
 * none for a step that failed or asks for nothing.
 */
/* FM-103 */
START_TEST(test_trace_locks_ordered)
{
	struct th_db	 db;
	char		*a, *b, *c, *batch;

	th_db_new(&db);
	a = th_str(db.conn, "SELECT eav.step_id(eav.enqueue('noop'), 1)::text",
	    0);
	b = th_str(db.conn, "SELECT eav.step_id(eav.enqueue('noop'), 1)::text",
	    0);
	c = th_str(db.conn, "SELECT eav.step_id(eav.enqueue('noop'), 1)::text",
	    0);
	batch = th_str(db.conn, "SELECT jsonb_build_array("
	    "jsonb_build_object('id', $2::bigint, 'outcome', 'succeeded', "
	    "'result', '{\"enqueue\": []}'::jsonb), "
	    "jsonb_build_object('id', $1::bigint, 'outcome', 'succeeded', "
	    "'result', '{\"enqueue\": []}'::jsonb), "
	    "jsonb_build_object('id', $3::bigint, 'outcome', 'failed', "
	    "'result', '{\"enqueue\": []}'::jsonb))::text", 3, a, b, c);
	PQclear(th_exec(db.conn, "BEGIN", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.trace_locks_take("
	    "$1::jsonb)", 1, batch), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM pg_locks WHERE "
	    "locktype = 'advisory' AND pid = pg_backend_pid() AND granted", 0),
	    2);
	PQclear(th_exec(db.conn, "ROLLBACK", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.trace_locks_take("
	    "'[{\"id\": 1, \"outcome\": \"succeeded\", \"result\": {}}]')", 0),
	    0);
	free(a);
	free(b);
	free(c);
	free(batch);
	th_db_free(&db);
}
END_TEST

Suite *
suite_governance(void)
{
	Suite	*s = suite_create("governance");
	TCase	*tc = tcase_create("governance");

	tcase_add_test(tc, test_stuck_threshold_refused);
	tcase_add_test(tc, test_stuck_and_stalled);
	tcase_add_test(tc, test_retry_budget_refused);
	tcase_add_test(tc, test_retry_storm_capped);
	tcase_add_test(tc, test_recursion_refused_settings);
	tcase_add_test(tc, test_replay_spawns_nothing);
	tcase_add_test(tc, test_self_triggering_chains);
	tcase_add_test(tc, test_approvals_decisions);
	tcase_add_test(tc, test_approvals_with_eavd);
	tcase_add_test(tc, test_approvals_by_task_and_rule);
	tcase_add_test(tc, test_least_privilege);
	tcase_add_test(tc, test_redaction_flag_ignored);
	tcase_add_test(tc, test_retry_budget_gated_free);
	tcase_add_test(tc, test_retry_budget_lock_order);
	tcase_add_test(tc, test_trace_locks_ordered);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}
