/*
 * State transitions at the SQL level, without daemons: each test calls
 * the functions of sql/0002_transitions.sql with parameters and checks
 * states, audit rows and what was left unchanged.  Enqueue refuses bad
 * input whole; claims, completions, retries, reconciliation, operator
 * actions, the ledger and alarms do exactly what their COMMENTs say.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define NODE	"n1"

static struct th_db	db;

static void		 setup(void);
static void		 teardown(void);
static const char	*num(long long);
static const char	*str1(const char *, long long);
static long long	 ll1(const char *, long long);
static char		*counts(void);
static long long	 enqueue(const char *, const char *);
static long long	 enqueue_steps(const char *, const char *);
static long long	 step_of(long long, int);
static long long	 node_start(const char *);
static long long	 claim_one(long long, int);
static int		 claim_n(long long, int, int, const char *);
static const char	*complete1(long long, long long, const char *,
			    const char *, const char *);
static const char	*reconcile1(long long, int);
static long long	 audits(const char *, long long);
static long long	 task_audits(const char *, long long);
static long long	 audit_total(void);
static long long	 ledger_sum(void);
static long long	 balance(const char *);
static long long	 hold_step(long long, int);
static void		 assert_sql(const char *, long long);
static int		 session_alive(PGconn *);

/* Each test gets a fresh database, with two queues of known back-off. */
static void
setup(void)
{
	PGresult	*res;

	th_db_new(&db);
	res = th_exec(db.conn, "INSERT INTO eav.queues (name, retry_base_ms, "
	    "retry_max_ms, description) VALUES ('rq', 1000, 5000, 'test'), "
	    "('fast', 1, 1, 'test')", 0);
	PQclear(res);
}

/* Closes the test's connection. */
static void
teardown(void)
{
	th_db_free(&db);
}

/* v as text, in one of eight static buffers. */
static const char *
num(long long v)
{
	static char	buf[8][24];
	static int	i;

	i = (i + 1) % 8;
	snprintf(buf[i], sizeof(buf[i]), "%lld", v);
	return buf[i];
}

/* The text value of sql with $1 = id ("(null)" for NULL), in one of
 * eight static buffers. */
static const char *
str1(const char *sql, long long id)
{
	static char	 buf[8][512];
	static int	 i;
	char		*v;

	i = (i + 1) % 8;
	v = th_str(db.conn, sql, 1, num(id));
	snprintf(buf[i], sizeof(buf[i]), "%s", v != NULL ? v : "(null)");
	free(v);
	return buf[i];
}

/* The integer value of sql with $1 = id. */
static long long
ll1(const char *sql, long long id)
{
	return th_ll(db.conn, sql, 1, num(id));
}

/* Asserts that sql (one boolean, $1 = id) is true. */
static void
assert_sql(const char *sql, long long id)
{
	ck_assert_msg(strcmp(str1(sql, id), "t") == 0, "not true for %lld: %s",
	    id, sql);
}

/* "tasks/steps/audit rows", to show that a refused call stored nothing;
 * the caller frees it. */
static char *
counts(void)
{
	return th_str(db.conn, "SELECT format('%s/%s/%s', "
	    "(SELECT count(*) FROM eav.tasks), "
	    "(SELECT count(*) FROM eav.steps), "
	    "(SELECT count(*) FROM eav.audit_events))", 0);
}

/* A one-step task on queue default; returns the task id. */
static long long
enqueue(const char *tool, const char *input)
{
	return th_ll(db.conn, "SELECT eav.enqueue($1, $2::jsonb)", 2, tool,
	    input);
}

/* A task of the steps (JSON text) on queue; returns the task id. */
static long long
enqueue_steps(const char *queue, const char *steps)
{
	return th_ll(db.conn, "SELECT eav.task_enqueue($1, 'test', $2::jsonb)",
	    2, queue, steps);
}

/* Id of step ordinal of task. */
static long long
step_of(long long task, int ordinal)
{
	return th_ll(db.conn, "SELECT id FROM eav.steps WHERE task_id = "
	    "$1::bigint AND ordinal = $2::int", 2, num(task), num(ordinal));
}

/* Starts a new incarnation of node; returns its id. */
static long long
node_start(const char *node)
{
	return th_ll(db.conn, "SELECT eav.node_start($1, 'testhost', 1, "
	    "'test')", 1, node);
}

/* Claims exactly one step for worker pid of incarnation inc of NODE. */
static long long
claim_one(long long inc, int pid)
{
	return th_ll(db.conn, "SELECT step_id FROM eav.claim('" NODE "', "
	    "$1::bigint, $2::int, 1)", 2, num(inc), num(pid));
}

/* Claims up to limit steps of queues (NULL: any); returns how many. */
static int
claim_n(long long inc, int pid, int limit, const char *queues)
{
	return (int)th_ll(db.conn, "SELECT count(*) FROM eav.claim('" NODE
	    "', $1::bigint, $2::int, $3::int, $4::text[])", 4, num(inc),
	    num(pid), num(limit), queues);
}

/* Completes one step; returns its status (static). */
static const char *
complete1(long long step, long long epoch, const char *outcome,
    const char *result, const char *error)
{
	static char	 buf[64];
	char		*v;

	v = th_str(db.conn, "SELECT status FROM eav.complete('test', "
	    "ARRAY[$1::bigint], ARRAY[$2::bigint], ARRAY[$3::text], "
	    "ARRAY[$4::jsonb], ARRAY[$5::text])", 5, num(step), num(epoch),
	    outcome, result, error);
	ck_assert_ptr_nonnull(v);
	snprintf(buf, sizeof(buf), "%s", v);
	free(v);
	return buf;
}

/* Reconciles worker pid of incarnation inc, which owned exactly one
 * running step; returns the decision (static). */
static const char *
reconcile1(long long inc, int pid)
{
	static char	 buf[64];
	char		*v;

	v = th_str(db.conn, "SELECT decision FROM eav.reconcile_worker('"
	    NODE "', $1::bigint, $2::int)", 2, num(inc), num(pid));
	ck_assert_ptr_nonnull(v);
	snprintf(buf, sizeof(buf), "%s", v);
	free(v);
	return buf;
}

/* Audit rows of a type about a step. */
static long long
audits(const char *type, long long step)
{
	return th_ll(db.conn, "SELECT count(*) FROM eav.audit_events WHERE "
	    "type = $1 AND step_id = $2::bigint", 2, type, num(step));
}

/* Audit rows of a type about a task. */
static long long
task_audits(const char *type, long long task)
{
	return th_ll(db.conn, "SELECT count(*) FROM eav.audit_events WHERE "
	    "type = $1 AND task_id = $2::bigint", 2, type, num(task));
}

/* Audit rows in all. */
static long long
audit_total(void)
{
	return th_ll(db.conn, "SELECT count(*) FROM eav.audit_events", 0);
}

/* Sum of all ledger balances. */
static long long
ledger_sum(void)
{
	return th_ll(db.conn, "SELECT sum(balance) FROM eav.ledger_accounts",
	    0);
}

/* Balance of one ledger account. */
static long long
balance(const char *account)
{
	return th_ll(db.conn, "SELECT balance FROM eav.ledger_accounts WHERE "
	    "id = $1", 1, account);
}

/* Claims step 1 of task (a demo.notify step) as pid and lets its worker
 * die, so the step is held; returns the step id. */
static long long
hold_step(long long task, int pid)
{
	long long	inc, step;

	inc = node_start(NODE);
	step = claim_one(inc, pid);
	ck_assert_int_eq(step, step_of(task, 1));
	ck_assert_str_eq(reconcile1(inc, pid), "held");
	return step;
}

#define ENQ	"SELECT eav.task_enqueue('default', 'k', $1::jsonb)"
#define ENQ_NOOP(args) \
	"SELECT eav.task_enqueue(" args ", '[{\"tool\": \"noop\"}]')"
#define MAX_ATT	"\"max_attempts\" must be an integer between 1 and 1000"

static const struct {
	const char	*sql;
	const char	*arg;	/* $1, or NULL for none */
	const char	*state;
	const char	*msg;
} bad[] = {
	{ ENQ, "[{\"tool\": \"noop\"", "22P02",
	    "invalid input syntax for type json" },
	{ ENQ, "[{\"tool\": \"nosuch\"}]", "22023",
	    "step 1: unknown tool \"nosuch\"" },
	{ ENQ, "[]", "22023", "a task needs at least one step" },
	{ ENQ, "{\"tool\": \"noop\"}", "22023", "steps must be a JSON array" },
	{ ENQ, "\"noop\"", "22023", "steps must be a JSON array" },
	{ ENQ, "[{\"tool\": \"noop\"}, \"noop\"]", "22023",
	    "step 2: must be a JSON object" },
	{ ENQ, "[{\"tool\": \"noop\", \"inptu\": {}}]", "22023",
	    "step 1: unknown field \"inptu\"" },
	{ ENQ, "[{\"tool\": 1}]", "22023", "\"tool\" must be a string" },
	{ ENQ, "[{\"tool\": \"noop\", \"input\": [1, 2]}]", "22023",
	    "\"input\" must be a JSON object" },
	{ ENQ, "[{\"tool\": \"noop\", \"input\": \"x\"}]", "22023",
	    "\"input\" must be a JSON object" },
	{ ENQ, "[{\"tool\": \"noop\", \"max_attempts\": 0}]", "22023",
	    MAX_ATT },
	{ ENQ, "[{\"tool\": \"noop\", \"max_attempts\": -1}]", "22023",
	    MAX_ATT },
	{ ENQ, "[{\"tool\": \"noop\", \"max_attempts\": 3.5}]", "22023",
	    MAX_ATT },
	{ ENQ, "[{\"tool\": \"noop\", \"max_attempts\": \"3\"}]", "22023",
	    MAX_ATT },
	{ ENQ, "[{\"tool\": \"noop\", \"max_attempts\": 1001}]", "22023",
	    MAX_ATT },
	{ ENQ, "[{\"tool\": \"noop\", \"idempotency_key\": 5}]", "22023",
	    "\"idempotency_key\" must be a string" },
	{ ENQ, "[{\"tool\": \"noop\", \"input\": {\"s\": \"a\\u0000b\"}}]",
	    "22P05", "unsupported Unicode escape sequence" },
	{ "SELECT eav.task_enqueue('default', 'k', jsonb_build_array("
	    "jsonb_build_object('tool', 'noop', 'input', jsonb_build_object("
	    "'s', repeat('x', eav.setting('max_input_bytes')::int - 8)))))",
	    NULL, "54000", "bytes, more than the limit of 262144 bytes" },
	{ "SELECT eav.task_enqueue('default', 'k', (SELECT jsonb_agg("
	    "'{\"tool\": \"noop\"}'::jsonb) FROM generate_series(1, 101)))",
	    NULL, "54000", "a task has at most 100 steps, not 101" },
	{ ENQ_NOOP("$1, 'k'"), "nosuch", "22023", "unknown queue \"nosuch\"" },
	{ ENQ_NOOP("'default', $1"), "", "22023",
	    "kind must be 1 to 128 characters" },
	{ ENQ_NOOP("'default', repeat('k', $1::int)"), "129", "22023",
	    "kind must be 1 to 128 characters" },
	{ ENQ_NOOP("'default', $1"), "\xC0\xAF", "22021",
	    "invalid byte sequence for encoding \"UTF8\"" },
	{ "SELECT eav.task_enqueue('default', 'k', '[{\"tool\": \"noop\"}]', "
	    "p_run_at => $1::timestamptz)", "infinity", "22023",
	    "run_at must be a finite time" },
	{ "SELECT eav.task_enqueue('default', 'k', '[{\"tool\": \"noop\"}]', "
	    "p_run_at => $1::timestamptz)", "-infinity", "22023",
	    "run_at must be a finite time" },
	{ "SELECT eav.task_enqueue('default', 'k', NULL)", NULL, "22023",
	    "steps must be a JSON array" },
	{ "SELECT eav.enqueue($1)", "nosuch", "22023",
	    "unknown tool \"nosuch\"" },
	{ "SELECT eav.enqueue('noop', $1::jsonb)", "[1]", "22023",
	    "\"input\" must be a JSON object" },
	{ "SELECT eav.enqueue('noop', $1::jsonb)", "{\"a\": ", "22P02",
	    "invalid input syntax for type json" },
	{ "SELECT eav.enqueue('noop', '{}', $1)", "no such", "22023",
	    "unknown queue \"no such\"" },
	{ "SELECT eav.enqueue('noop', '{}', p_max_attempts => $1::int)", "0",
	    "22023", MAX_ATT },
	{ "SELECT eav.enqueue('noop', '{}', p_max_attempts => $1::int)",
	    "1001", "22023", MAX_ATT },
	{ "SELECT eav.enqueue('noop', '{}', p_idempotency_key => $1)", "",
	    "22023", "\"idempotency_key\" must be 1 to 255 bytes, not 0" },
	{ "SELECT eav.enqueue('noop', '{}', p_idempotency_key => "
	    "repeat('k', $1::int))", "256", "22023",
	    "\"idempotency_key\" must be 1 to 255 bytes, not 256" },
	{ "SELECT eav.enqueue('noop', '{}', p_idempotency_key => "
	    "repeat(U&'\\00E9', $1::int))", "128", "22023",
	    "\"idempotency_key\" must be 1 to 255 bytes, not 256" },
	{ "SELECT eav.enqueue_many('noop', $1::jsonb)", "[{}, 3]", "22023",
	    "input 2: must be a JSON object" },
	{ "SELECT eav.enqueue_many('noop', $1::jsonb)", "{}", "22023",
	    "inputs must be a JSON array" },
	{ "SELECT eav.enqueue_many($1, '[{}]')", "nope", "22023",
	    "unknown tool \"nope\"" },
	{ "SELECT eav.enqueue_many('noop', '[{}]', $1)", "nope", "22023",
	    "unknown queue \"nope\"" },
	{ "SELECT eav.enqueue_many('noop', '[{}]', p_max_attempts => "
	    "$1::int)", "0", "22023", "max_attempts must be between 1 and "
	    "1000" },
	{ "SELECT eav.enqueue_many('noop', (SELECT jsonb_agg('{}'::jsonb) "
	    "FROM generate_series(1, $1::int)))", "10001", "54000",
	    "at most 10000 tasks" },
	{ "SELECT eav.enqueue_many('noop', jsonb_build_array('{}'::jsonb, "
	    "jsonb_build_object('s', repeat('x', $1::int))))", "262144",
	    "54000", "input 2: more than the limit" },
};

/* Bad input is refused with a clear error and stores nothing. */
/* FM-018 */
START_TEST(test_enqueue_refused)
{
	const char	*err;
	char		*before, *after;

	(void)enqueue("noop", "{}");
	before = counts();
	err = th_err(db.conn, bad[_i].sql, bad[_i].arg != NULL ? 1 : 0,
	    bad[_i].arg);
	ck_assert_msg(strncmp(err, bad[_i].state, 5) == 0 &&
	    strstr(err, bad[_i].msg) != NULL, "case %d: got \"%s\", expected "
	    "%s and \"%s\"", _i, err, bad[_i].state, bad[_i].msg);
	after = counts();
	ck_assert_str_eq(before, after);
	free(before);
	free(after);
}
END_TEST

/*
 * A bulk enqueue makes the same tasks, steps and audit rows as one
 * eav.enqueue per input, returning the ids in input order.
 */
START_TEST(test_enqueue_many)
{
	PGresult	*res;

	res = th_exec(db.conn, "SELECT * FROM eav.enqueue_many('noop', "
	    "'[{\"a\": 1}, {\"a\": 2}, {\"a\": 3}]', p_kind => 'bulk', "
	    "p_max_attempts => 7)", 0);
	ck_assert_int_eq(PQntuples(res), 3);
	PQclear(res);
	/* In input order, each like a task of eav.enqueue. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.tasks t ON t.id = s.task_id WHERE t.kind = 'bulk' AND "
	    "t.step_count = 1 AND s.state = 'pending' AND s.max_attempts = 7 "
	    "AND s.idempotency_key = 'eav:' || t.id || ':1' AND s.trace_id = "
	    "t.trace_id AND (s.input->>'a')::bigint = t.id - (SELECT min(id) "
	    "FROM eav.tasks WHERE kind = 'bulk') + 1", 0), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events a JOIN eav.tasks t ON t.id = a.task_id AND "
	    "t.trace_id = a.trace_id WHERE a.type = 'task.enqueued' AND "
	    "t.kind = 'bulk' AND a.payload->>'batch' = '3'", 0), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.enqueue_many('noop', '[]')", 0), 0);
}
END_TEST

/* The largest accepted values of each limit are accepted, unchanged. */
START_TEST(test_enqueue_limits)
{
	long long	t;

	t = th_ll(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "jsonb_build_array(jsonb_build_object('tool', 'noop', 'input', "
	    "jsonb_build_object('s', repeat('x', eav.setting('max_input_bytes')"
	    "::int - 9)))))", 0);
	assert_sql("SELECT octet_length(input::text) = eav.setting("
	    "'max_input_bytes') FROM eav.steps WHERE task_id = $1::bigint", t);

	t = th_ll(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "p_idempotency_key => repeat('k', 255))", 0);
	assert_sql("SELECT idempotency_key = repeat('k', 255) FROM eav.steps "
	    "WHERE task_id = $1::bigint", t);
	t = th_ll(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "p_idempotency_key => repeat(U&'\\00E9', 127) || 'k')", 0);
	assert_sql("SELECT octet_length(idempotency_key) = 255 FROM eav.steps "
	    "WHERE task_id = $1::bigint", t);

	/* kind is limited in characters, not bytes. */
	t = th_ll(db.conn, ENQ_NOOP("'default', repeat(U&'\\00E9', 128)"), 0);
	assert_sql("SELECT kind = repeat(U&'\\00E9', 128) FROM eav.tasks "
	    "WHERE id = $1::bigint", t);

	t = enqueue_steps("default", "[{\"tool\": \"noop\", \"max_attempts\": "
	    "1}, {\"tool\": \"noop\", \"max_attempts\": 1000}, {\"tool\": "
	    "\"noop\", \"max_attempts\": 3.0}, {\"tool\": \"noop\"}]");
	ck_assert_str_eq(str1("SELECT string_agg(max_attempts::text, ',' "
	    "ORDER BY ordinal) FROM eav.steps WHERE task_id = $1::bigint", t),
	    "1,1000,3,5");
	ck_assert_str_eq(str1("SELECT string_agg(state, ',' ORDER BY ordinal) "
	    "FROM eav.steps WHERE task_id = $1::bigint", t),
	    "pending,blocked,blocked,blocked");
	ck_assert_int_eq(task_audits("task.enqueued", t), 1);
}
END_TEST

static const char *const sqlish[] = {
	"'; DROP TABLE eav.steps; --",
	"$$; SELECT pg_sleep(10); $$",
	"' OR '1'='1",
	"\\\"; DELETE FROM eav.tasks; -- \xC3\xA9\xE2\x9C\x93",
};

/* SQL-like text in kind, input and key is stored and read back exactly. */
START_TEST(test_enqueue_sqlish)
{
	const char	*s = sqlish[_i];
	char		*v;
	long long	 t, inc;

	t = th_ll(db.conn, "SELECT eav.task_enqueue('default', $1, "
	    "jsonb_build_array(jsonb_build_object('tool', 'noop', 'input', "
	    "jsonb_build_object('v', $1::text), 'idempotency_key', $1::text)))",
	    1, s);
	ck_assert_str_eq(str1("SELECT kind FROM eav.tasks WHERE id = "
	    "$1::bigint", t), s);
	ck_assert_str_eq(str1("SELECT input->>'v' FROM eav.steps WHERE "
	    "task_id = $1::bigint", t), s);
	ck_assert_str_eq(str1("SELECT idempotency_key FROM eav.steps WHERE "
	    "task_id = $1::bigint", t), s);

	/* A worker gets it back the same, through the claim. */
	inc = node_start(NODE);
	v = th_str(db.conn, "SELECT input::jsonb->>'v' || '|' || "
	    "idempotency_key FROM eav.claim('" NODE "', $1::bigint, 1, 1)", 1,
	    num(inc));
	ck_assert_ptr_nonnull(v);
	ck_assert_int_eq(strncmp(v, s, strlen(s)), 0);
	ck_assert_str_eq(v + strlen(s) + 1, s);
	free(v);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps", 0),
	    1);
}
END_TEST

/* A claim takes pending, due steps of its queues, up to its limit. */
START_TEST(test_claim)
{
	long long	 inc, t[5], s;
	PGresult	*res;
	char		 want[128];
	int		 i;

	inc = node_start(NODE);
	for (i = 0; i < 3; i++)
		t[i] = enqueue("noop", "{}");
	t[3] = enqueue_steps("rq", "[{\"tool\": \"noop\"}]");
	t[4] = th_ll(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "'[{\"tool\": \"noop\"}]', p_run_at => now() + interval '1 hour')",
	    0);

	res = th_exec(db.conn, "SELECT step_id, claim_epoch, attempt FROM "
	    "eav.claim('" NODE "', $1::bigint, 4242, 2, '{default}')", 1,
	    num(inc));
	ck_assert_int_eq(PQntuples(res), 2);
	for (i = 0; i < 2; i++) {
		s = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		ck_assert_int_eq(s, step_of(t[i], 1));
		ck_assert_str_eq(PQgetvalue(res, i, 1), "1");
		ck_assert_str_eq(PQgetvalue(res, i, 2), "1");
		ck_assert_str_eq(str1("SELECT format('%s %s %s %s %s %s', "
		    "state, claim_epoch, attempt, owner_node, "
		    "owner_incarnation, owner_pid) FROM eav.steps "
		    "WHERE id = $1::bigint", s),
		    str1("SELECT format('running 1 1 " NODE " %s 4242', "
		    "$1::bigint)", inc));
		assert_sql("SELECT claimed_at IS NOT NULL FROM eav.steps "
		    "WHERE id = $1::bigint", s);
		ck_assert_int_eq(audits("step.claimed", s), 1);
		snprintf(want, sizeof(want), "worker:" NODE "/%lld/4242 1 1",
		    inc);
		ck_assert_str_eq(str1("SELECT actor || ' ' || (payload->>"
		    "'epoch') || ' ' || (payload->>'attempt') FROM "
		    "eav.audit_events WHERE type = 'step.claimed' AND "
		    "step_id = $1::bigint", s), want);
	}
	PQclear(res);

	ck_assert_int_eq(claim_n(inc, 4242, 10, "{default}"), 1);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(t[2], 1)), "running");
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(t[3], 1)), "pending");
	ck_assert_int_eq(claim_n(inc, 4242, 10, NULL), 1);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(t[3], 1)), "running");
	ck_assert_int_eq(claim_n(inc, 4242, 10, NULL), 0);
	ck_assert_str_eq(str1("SELECT state || claim_epoch || attempt FROM "
	    "eav.steps WHERE id = $1::bigint", step_of(t[4], 1)), "pending00");
	ck_assert_int_eq(audits("step.claimed", step_of(t[4], 1)), 0);
}
END_TEST

/* A superseded incarnation, an unknown node or a bad limit claims
 * nothing. */
/* FM-003 */
START_TEST(test_claim_refused)
{
	long long	 inc1, inc2, t;
	const char	*err;
	char		*before, *after;

	inc1 = node_start(NODE);
	t = enqueue("noop", "{}");
	inc2 = node_start(NODE);
	ck_assert_int_ne(inc1, inc2);
	before = counts();
	err = th_err(db.conn, "SELECT * FROM eav.claim('" NODE "', $1::bigint, "
	    "7, 1)", 1, num(inc1));
	ck_assert_msg(strncmp(err, "EA002: ", 7) == 0 &&
	    strstr(err, "is not the current incarnation") != NULL, "%s", err);
	err = th_err(db.conn, "SELECT * FROM eav.claim('n2', $1::bigint, 7, 1)",
	    1, num(inc2));
	ck_assert_int_eq(strncmp(err, "EA002: ", 7), 0);
	err = th_err(db.conn, "SELECT * FROM eav.claim('" NODE "', $1::bigint, "
	    "7, 0)", 1, num(inc2));
	ck_assert_int_eq(strncmp(err, "22023: ", 7), 0);
	after = counts();
	ck_assert_str_eq(before, after);
	ck_assert_str_eq(str1("SELECT state || claim_epoch FROM eav.steps "
	    "WHERE task_id = $1::bigint", t), "pending0");
	ck_assert_int_eq(claim_one(inc2, 7), step_of(t, 1));
	free(before);
	free(after);
}
END_TEST

/* Step 1 of 2 succeeding readies step 2; the task succeeds after it. */
START_TEST(test_complete_two_steps)
{
	long long	 inc, t, s1, s2;
	char		*v;

	t = enqueue_steps("default", "[{\"tool\": \"noop\"}, {\"tool\": "
	    "\"noop\"}]");
	s1 = step_of(t, 1);
	s2 = step_of(t, 2);
	inc = node_start(NODE);
	ck_assert_int_eq(claim_one(inc, 10), s1);
	ck_assert_int_eq(claim_n(inc, 10, 5, NULL), 0);
	ck_assert_str_eq(complete1(s1, 1, "succeeded", "{\"a\": 1}", NULL),
	    "succeeded");
	assert_sql("SELECT state = 'succeeded' AND result = '{\"a\": 1}' AND "
	    "finished_at IS NOT NULL FROM eav.steps WHERE id = $1::bigint", s1);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", s2), "pending");
	ck_assert_int_eq(audits("step.ready", s2), 1);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "active");
	ck_assert_int_eq(task_audits("task.succeeded", t), 0);

	ck_assert_int_eq(claim_one(inc, 10), s2);
	v = th_str(db.conn, "SELECT string_agg(status, ',') FROM "
	    "eav.complete_batch('test', jsonb_build_array(jsonb_build_object("
	    "'id', $1::bigint, 'epoch', 1, 'outcome', 'succeeded', 'result', "
	    "'{\"b\": 2}'::jsonb)))", 1, num(s2));
	ck_assert_str_eq(v, "succeeded");
	free(v);
	assert_sql("SELECT state = 'succeeded' AND finished_at IS NOT NULL "
	    "FROM eav.tasks WHERE id = $1::bigint", t);
	assert_sql("SELECT result = '{\"b\": 2}' FROM eav.steps WHERE id = "
	    "$1::bigint", s2);
	ck_assert_int_eq(task_audits("task.succeeded", t), 1);
	ck_assert_int_eq(audits("step.succeeded", s1), 1);
	ck_assert_int_eq(audits("step.succeeded", s2), 1);
}
END_TEST

#define ROW_MD5	"SELECT md5(s::text) FROM eav.steps s WHERE id = $1::bigint"

/* A stale epoch is fenced (one audit row, nothing changed); a repeat of
 * an applied completion is already_applied (no audit row). */
/* FM-004, FM-005, FM-032 */
START_TEST(test_complete_fenced)
{
	long long	inc, t, s, a;
	char		row[64];

	t = enqueue_steps("fast", "[{\"tool\": \"noop\"}]");
	s = step_of(t, 1);
	inc = node_start(NODE);
	ck_assert_int_eq(claim_one(inc, 100), s);
	ck_assert_str_eq(reconcile1(inc, 100), "retry");
	/* The dead worker's completion arrives after reconciliation. */
	snprintf(row, sizeof(row), "%s", str1(ROW_MD5, s));
	ck_assert_str_eq(complete1(s, 1, "succeeded", NULL, NULL), "fenced");
	ck_assert_str_eq(str1(ROW_MD5, s), row);
	ck_assert_int_eq(audits("fence.rejected", s), 1);

	ck_assert(th_wait(db.conn, TH_TIMEOUT_MS, "SELECT run_at <= now() "
	    "FROM eav.steps WHERE id = $1::bigint", 1, num(s)));
	ck_assert_int_eq(claim_one(inc, 101), s);
	snprintf(row, sizeof(row), "%s", str1(ROW_MD5, s));
	a = audit_total();
	ck_assert_str_eq(complete1(s, 1, "succeeded", NULL, NULL), "fenced");
	ck_assert_int_eq(audit_total(), a + 1);
	ck_assert_int_eq(audits("fence.rejected", s), 2);
	assert_sql("SELECT count(*) = 1 FROM eav.audit_events WHERE type = "
	    "'fence.rejected' AND step_id = $1::bigint AND outcome = 'refused' "
	    "AND payload->>'epoch' = '1' AND payload->>'current_epoch' = '2'",
	    s);
	ck_assert_str_eq(str1(ROW_MD5, s), row);
	ck_assert_str_eq(str1("SELECT state || claim_epoch || attempt FROM "
	    "eav.steps WHERE id = $1::bigint", s), "running22");

	ck_assert_str_eq(complete1(s, 2, "succeeded", "{}", NULL), "succeeded");
	snprintf(row, sizeof(row), "%s", str1(ROW_MD5, s));
	a = audit_total();
	ck_assert_str_eq(complete1(s, 2, "succeeded", "{}", NULL),
	    "already_applied");
	ck_assert_str_eq(complete1(s, 2, "failed", NULL, "late"),
	    "already_applied");
	ck_assert_int_eq(audit_total(), a);
	ck_assert_str_eq(str1(ROW_MD5, s), row);
	ck_assert_int_eq(task_audits("task.succeeded", t), 1);
}
END_TEST

/* Back-off after attempt n of queue rq (base 1 s, max 5 s), then failure
 * after max_attempts with the later steps cancelled. */
/* FM-019 */
START_TEST(test_retry_backoff)
{
	long long	inc, t, s, n, delay_us, cap_ms;
	char		err[32];

	t = enqueue_steps("rq", "[{\"tool\": \"fail\", \"max_attempts\": 5}, "
	    "{\"tool\": \"noop\"}, {\"tool\": \"noop\"}]");
	s = step_of(t, 1);
	inc = node_start(NODE);
	for (n = 1; n <= 4; n++) {
		ck_assert_int_eq(claim_one(inc, 20), s);
		ck_assert_int_eq(ll1("SELECT attempt FROM eav.steps WHERE id = "
		    "$1::bigint", s), n);
		snprintf(err, sizeof(err), "boom %lld", n);
		ck_assert_str_eq(complete1(s, n, "retry", NULL, err),
		    "pending");
		/* run_at and updated_at come from the same now(). */
		delay_us = ll1("SELECT (extract(epoch FROM run_at - updated_at)"
		    " * 1000000)::bigint FROM eav.steps WHERE id = $1::bigint",
		    s);
		cap_ms = 1000LL << (n - 1);
		if (cap_ms > 5000)
			cap_ms = 5000;
		ck_assert_msg(delay_us >= cap_ms * 500 - 1000 &&
		    delay_us <= cap_ms * 1000 + 1000, "attempt %lld: delay "
		    "%lld us is not within 50-100 %% of %lld ms", n, delay_us,
		    cap_ms);
		ck_assert_str_eq(str1("SELECT error FROM eav.steps WHERE id = "
		    "$1::bigint", s), err);
		ck_assert_int_eq(audits("step.retry_scheduled", s), n);
		ck_assert_int_eq(claim_n(inc, 20, 5, NULL), 0);
		/* Skip the back-off rather than wait it out. */
		PQclear(th_exec(db.conn, "UPDATE eav.steps SET run_at = now() "
		    "WHERE id = $1::bigint", 1, num(s)));
	}
	ck_assert_int_eq(claim_one(inc, 20), s);
	ck_assert_str_eq(complete1(s, 5, "retry", NULL, "boom 5"), "failed");
	assert_sql("SELECT state = 'failed' AND error = 'boom 5' AND "
	    "finished_at IS NOT NULL FROM eav.steps WHERE id = $1::bigint", s);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "failed");
	ck_assert_int_eq(task_audits("task.failed", t), 1);
	ck_assert_int_eq(audits("step.failed", s), 1);
	for (n = 2; n <= 3; n++) {
		ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
		    "$1::bigint", step_of(t, (int)n)), "cancelled");
		ck_assert_int_eq(audits("step.cancelled", step_of(t, (int)n)),
		    1);
	}
}
END_TEST

/* 'release' puts the step back at once and refunds the attempt. */
START_TEST(test_release)
{
	long long	inc, t, s;

	t = enqueue_steps("rq", "[{\"tool\": \"noop\", \"max_attempts\": 1}]");
	s = step_of(t, 1);
	inc = node_start(NODE);
	ck_assert_int_eq(claim_one(inc, 30), s);
	ck_assert_str_eq(complete1(s, 1, "release", NULL, "shutting down"),
	    "pending");
	assert_sql("SELECT state = 'pending' AND attempt = 0 AND run_at <= "
	    "now() FROM eav.steps WHERE id = $1::bigint", s);
	ck_assert_int_eq(audits("step.released", s), 1);
	assert_sql("SELECT payload->>'reason' = 'shutting down' FROM "
	    "eav.audit_events WHERE type = 'step.released' AND step_id = "
	    "$1::bigint", s);
	/* The only attempt allowed is still there. */
	ck_assert_int_eq(claim_one(inc, 31), s);
	ck_assert_str_eq(str1("SELECT attempt || '/' || claim_epoch FROM "
	    "eav.steps WHERE id = $1::bigint", s), "1/2");
	ck_assert_str_eq(complete1(s, 2, "succeeded", NULL, NULL), "succeeded");
}
END_TEST

/* A dead worker's idempotent step: unknown outcome, retried with the
 * same key; a second reconciliation does nothing. */
/* FM-001 */
START_TEST(test_reconcile_idempotent)
{
	long long	 inc, t, other, s, a;
	char		 key[64];
	char		*v;

	t = enqueue_steps("fast", "[{\"tool\": \"noop\"}]");
	s = step_of(t, 1);
	other = enqueue_steps("default", "[{\"tool\": \"noop\"}]");
	snprintf(key, sizeof(key), "%s", str1("SELECT idempotency_key FROM "
	    "eav.steps WHERE id = $1::bigint", s));
	inc = node_start(NODE);
	ck_assert_int_eq(claim_one(inc, 5001), s);
	ck_assert_int_eq(claim_one(inc, 5002), step_of(other, 1));

	ck_assert_str_eq(reconcile1(inc, 5001), "retry");
	assert_sql("SELECT count(*) = 1 FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint AND decision = 'retry' AND detected_by = "
	    "'worker_exit' AND claim_epoch = 1 AND attempt = 1 AND tool = "
	    "'noop' AND owner_pid = 5001", s);
	ck_assert_int_eq(audits("tool_call.unknown", s), 1);
	assert_sql("SELECT state = 'pending' AND attempt = 1 AND error = "
	    "'unknown outcome' FROM eav.steps WHERE id = $1::bigint", s);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(other, 1)), "running");

	a = audit_total();
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.reconcile_worker('" NODE "', $1::bigint, 5001)", 1, num(inc)),
	    0);
	ck_assert_int_eq(audit_total(), a);
	ck_assert_int_eq(ll1("SELECT count(*) FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint", s), 1);

	ck_assert(th_wait(db.conn, TH_TIMEOUT_MS, "SELECT run_at <= now() "
	    "FROM eav.steps WHERE id = $1::bigint", 1, num(s)));
	v = th_str(db.conn, "SELECT idempotency_key FROM eav.claim('" NODE "', "
	    "$1::bigint, 5003, 1)", 1, num(inc));
	ck_assert_str_eq(v, key);
	free(v);
}
END_TEST

/* A dead worker's non-idempotent step is held with an open alarm. */
/* FM-002 */
START_TEST(test_reconcile_non_idempotent)
{
	long long	inc, t, s, a;
	char		subject[32];

	t = enqueue("demo.notify", "{\"ms\": 1}");
	s = hold_step(t, 6001);
	inc = th_ll(db.conn, "SELECT incarnation FROM eav.nodes", 0);
	assert_sql("SELECT state = 'held' AND held_reason = 'unknown_outcome' "
	    "FROM eav.steps WHERE id = $1::bigint", s);
	snprintf(subject, sizeof(subject), "step:%lld", s);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'unknown_outcome_held' AND subject = $1 AND state = "
	    "'open'", 1, subject), 1);
	ck_assert_int_eq(audits("step.held", s), 1);
	ck_assert_int_eq(audits("tool_call.unknown", s), 1);
	assert_sql("SELECT count(*) = 1 FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint AND decision = 'held'", s);

	a = audit_total();
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.reconcile_worker('" NODE "', $1::bigint, 6001)", 1, num(inc)),
	    0);
	ck_assert_int_eq(audit_total(), a);
	ck_assert_int_eq(claim_n(inc, 6002, 10, NULL), 0);
}
END_TEST

/* A recorded outcome for the step's (tool, key) is applied instead. */
/* FM-007 */
START_TEST(test_reconcile_recorded_outcome)
{
	long long	 inc, t1, t2, s1, s2;
	const char	*in = "{\"from\": \"alice\", \"to\": \"bob\", "
	    "\"amount\": 5}";

	t1 = th_ll(db.conn, "SELECT eav.enqueue('ledger.transfer', $1::jsonb, "
	    "p_idempotency_key => 'rec-1')", 1, in);
	inc = node_start(NODE);
	s1 = claim_one(inc, 6100);
	ck_assert_int_eq(s1, step_of(t1, 1));
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 1, "
	    "'test')", s1), "succeeded");

	t2 = th_ll(db.conn, "SELECT eav.enqueue('ledger.transfer', $1::jsonb, "
	    "p_idempotency_key => 'rec-1')", 1, in);
	s2 = claim_one(inc, 6101);
	ck_assert_int_eq(s2, step_of(t2, 1));
	ck_assert_str_eq(reconcile1(inc, 6101), "applied");
	assert_sql("SELECT state = 'succeeded' AND result = '{\"from\": "
	    "\"alice\", \"to\": \"bob\", \"amount\": 5}' FROM eav.steps "
	    "WHERE id = $1::bigint", s2);
	ck_assert_int_eq(ll1("SELECT count(*) FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint", s2), 0);
	ck_assert_int_eq(audits("tool_call.unknown", s2), 0);
	ck_assert_int_eq(audits("tool_call.outcome_applied", s2), 1);
	ck_assert_int_eq(task_audits("task.succeeded", t2), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.ledger_entries", 0), 1);
	ck_assert_int_eq(balance("alice"), 1000000 - 5);
}
END_TEST

/* An idempotent step out of attempts, or of a cancelled task, is not
 * retried after its worker dies. */
/* FM-020 */
START_TEST(test_reconcile_no_retry)
{
	long long	inc, t1, t2, s1, s2;

	t1 = enqueue_steps("default", "[{\"tool\": \"noop\", "
	    "\"max_attempts\": 1}]");
	t2 = enqueue("noop", "{}");
	inc = node_start(NODE);
	s1 = claim_one(inc, 6201);
	ck_assert_int_eq(s1, step_of(t1, 1));
	s2 = claim_one(inc, 6202);
	ck_assert_int_eq(s2, step_of(t2, 1));

	ck_assert_str_eq(reconcile1(inc, 6201), "held");
	ck_assert_str_eq(str1("SELECT state || ' ' || held_reason FROM "
	    "eav.steps WHERE id = $1::bigint", s1), "held attempts_exhausted");
	ck_assert_int_eq(ll1("SELECT count(*) FROM eav.alarms WHERE subject = "
	    "'step:' || $1 AND state = 'open'", s1), 1);

	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(t2)), 0);
	ck_assert_str_eq(reconcile1(inc, 6202), "cancelled");
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", s2), "cancelled");
	assert_sql("SELECT count(*) = 1 FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint AND decision = 'cancelled'", s2);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t2), "cancelled");
}
END_TEST

/*
 * A cancelled task runs nothing more, but the unknown outcome of its
 * non-idempotent step is held with an alarm, and retrying the task is
 * refused until an operator resolved it.
 */
/* FM-035 */
START_TEST(test_reconcile_cancelled_non_idempotent)
{
	long long	inc, t, s;

	t = enqueue("demo.notify", "{\"ms\": 1}");
	inc = node_start(NODE);
	s = claim_one(inc, 6250);
	ck_assert_int_eq(s, step_of(t, 1));
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(t)), 0);
	ck_assert_str_eq(reconcile1(inc, 6250), "held");
	assert_sql("SELECT state = 'held' AND held_reason = 'unknown_outcome' "
	    "FROM eav.steps WHERE id = $1::bigint", s);
	ck_assert_int_eq(ll1("SELECT count(*) FROM eav.alarms WHERE subject = "
	    "'step:' || $1 AND state = 'open'", s), 1);
	ck_assert_ptr_nonnull(strstr(th_err(db.conn, "SELECT eav.task_retry("
	    "$1::bigint)", 1, num(t)), "EA003: step"));
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", s), "held");
}
END_TEST

/* Tools and queues are never deleted: steps refer to them by name. */
START_TEST(test_no_delete_of_tools_and_queues)
{
	ck_assert_ptr_nonnull(strstr(th_err(db.conn, "DELETE FROM eav.tools "
	    "WHERE name = 'noop'", 0), "EA003"));
	ck_assert_ptr_nonnull(strstr(th_err(db.conn, "TRUNCATE eav.queues "
	    "CASCADE", 0), "EA003"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'noop'", 0), 1);
}
END_TEST

/*
 * Two steps with one key in flight at once: the second waits for the
 * first and gets its outcome (tool_call.deduplicated), not an error.
 */
/* FM-036 */
START_TEST(test_ledger_same_key_concurrent)
{
	const char	*in = "{\"from\": \"alice\", \"to\": \"bob\", "
	    "\"amount\": 7}";
	long long	 inc, t1, t2, s1, s2;
	PGconn		*other;
	PGresult	*res;
	const char	*p[2];

	t1 = th_ll(db.conn, "SELECT eav.enqueue('ledger.transfer', $1::jsonb, "
	    "p_idempotency_key => 'same')", 1, in);
	t2 = th_ll(db.conn, "SELECT eav.enqueue('ledger.transfer', $1::jsonb, "
	    "p_idempotency_key => 'same')", 1, in);
	inc = node_start(NODE);
	s1 = claim_one(inc, 6400);
	s2 = claim_one(inc, 6401);
	ck_assert_int_eq(s1, step_of(t1, 1));
	ck_assert_int_eq(s2, step_of(t2, 1));
	PQclear(th_exec(db.conn, "BEGIN", 0));
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 1, "
	    "'w1')", s1), "succeeded");
	other = th_connect(db.dsn);
	p[0] = num(s2);
	ck_assert_int_eq(PQsendQueryParams(other, "SELECT eav.ledger_transfer("
	    "$1::bigint, 1, 'w2')", 1, NULL, p, NULL, NULL, 0), 1);
	ck_assert(th_wait(db.conn, TH_TIMEOUT_MS, "SELECT count(*) = 1 FROM "
	    "pg_stat_activity WHERE wait_event = 'advisory'", 0));
	PQclear(th_exec(db.conn, "COMMIT", 0));
	res = PQgetResult(other);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s",
	    PQresultErrorMessage(res));
	ck_assert_str_eq(PQgetvalue(res, 0, 0), "succeeded");
	PQclear(res);
	while ((res = PQgetResult(other)) != NULL)
		PQclear(res);
	PQfinish(other);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.ledger_entries WHERE idempotency_key = 'same'", 0), 1);
	ck_assert_int_eq(audits("tool_call.deduplicated", s2), 1);
	ck_assert_int_eq(balance("bob"), 1000007);
}
END_TEST

/* A reconnected worker releases the steps it owns but never saw. */
/* FM-008 */
START_TEST(test_worker_resync)
{
	long long	inc, t1, t2, s1, s2;

	t1 = enqueue("noop", "{}");
	t2 = enqueue("noop", "{}");
	inc = node_start(NODE);
	s1 = claim_one(inc, 6300);
	s2 = claim_one(inc, 6300);
	ck_assert_int_eq(s2, step_of(t2, 1));
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.worker_resync('" NODE "', "
	    "$1::bigint, 6300, NULL, ARRAY[$2::bigint])", 2, num(inc),
	    num(s1)), 1);
	ck_assert_str_eq(str1("SELECT state || attempt FROM eav.steps WHERE "
	    "id = $1::bigint", s1), "running1");
	ck_assert_str_eq(str1("SELECT state || attempt FROM eav.steps WHERE "
	    "id = $1::bigint", s2), "pending0");
	ck_assert_int_eq(audits("step.released", s2), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.worker_resync('" NODE "', "
	    "$1::bigint, 6300, NULL, ARRAY[$2::bigint])", 2, num(inc),
	    num(s1)), 0);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t1), "active");
}
END_TEST

/* A new incarnation reconciles what the old one left running, once. */
/* FM-003 */
START_TEST(test_reconcile_incarnation)
{
	long long	inc1, inc2, other, t1, t2, t3, a;

	t1 = enqueue("noop", "{}");
	t2 = enqueue("demo.notify", "{\"ms\": 1}");
	t3 = enqueue("noop", "{}");
	inc1 = node_start(NODE);
	ck_assert_int_eq(claim_n(inc1, 7001, 2, NULL), 2);
	other = node_start("n2");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim('n2', "
	    "$1::bigint, 7002, 1)", 1, num(other)), 1);
	inc2 = node_start(NODE);

	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_incarnation('"
	    NODE "', $1::bigint)", 1, num(inc2)), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE detected_by = 'incarnation' AND "
	    "owner_incarnation = $1::bigint", 1, num(inc1)), 2);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(t1, 1)), "pending");
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(t2, 1)), "held");
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", step_of(t3, 1)), "running");
	assert_sql("SELECT stopped_at IS NOT NULL AND stop_reason = "
	    "'superseded' AND reconciled_steps = 2 FROM eav.incarnations WHERE "
	    "id = $1::bigint", inc1);
	assert_sql("SELECT stopped_at IS NULL FROM eav.incarnations WHERE "
	    "id = $1::bigint", inc2);
	assert_sql("SELECT stopped_at IS NULL FROM eav.incarnations WHERE "
	    "id = $1::bigint", other);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'node.reconciled'", 0), 1);

	a = audit_total();
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_incarnation('"
	    NODE "', $1::bigint)", 1, num(inc2)), 0);
	ck_assert_int_eq(audit_total(), a);
}
END_TEST

/* True if the session still answers. */
static int
session_alive(PGconn *c)
{
	PGresult	*res = PQexec(c, "SELECT 1");
	int		 ok = PQresultStatus(res) == PGRES_TUPLES_OK;

	PQclear(res);
	return ok;
}

/*
 * Reconciliation ends the sessions of dead eav processes of this
 * database only: incarnation ids start at 1 in every database, so the
 * same application_name can belong to another eav database of the
 * cluster.
 */
/* FM-021 */
START_TEST(test_reconcile_spares_other_databases)
{
	struct th_db	 other;
	PGconn		*theirs[2], *ours;
	char		 dsn[600];
	long long	 inc1, inc2;

	th_db_new(&other);
	snprintf(dsn, sizeof(dsn), "%s application_name=eav-worker:1:4242",
	    other.dsn);
	theirs[0] = th_connect(dsn);
	snprintf(dsn, sizeof(dsn), "%s application_name=eav-worker:1:4243",
	    other.dsn);
	theirs[1] = th_connect(dsn);
	snprintf(dsn, sizeof(dsn), "%s application_name=eav-worker:1:4243",
	    db.dsn);
	ours = th_connect(dsn);

	inc1 = node_start(NODE);
	ck_assert_int_eq(inc1, 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.reconcile_worker('" NODE "', 1, 4242)", 0), 0);
	ck_assert(session_alive(theirs[0]));
	inc2 = node_start(NODE);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_incarnation('"
	    NODE "', $1::bigint)", 1, num(inc2)), 0);
	ck_assert(session_alive(theirs[1]));
	/* Its own dead incarnation's session is ended. */
	ck_assert(!session_alive(ours));
	PQfinish(theirs[0]);
	PQfinish(theirs[1]);
	PQfinish(ours);
	th_db_free(&other);
}
END_TEST

/* Sessions whose names look like eav processes' but whose numbers
 * overflow do not break reconciliation. */
/* FM-021 */
START_TEST(test_reconcile_odd_session_names)
{
	PGconn		*odd[2];
	char		 dsn[600];
	long long	 inc2, t;

	snprintf(dsn, sizeof(dsn), "%s application_name="
	    "eav-worker:99999999999999999999:1", db.dsn);
	odd[0] = th_connect(dsn);
	(void)node_start(NODE);
	inc2 = node_start(NODE);
	snprintf(dsn, sizeof(dsn), "%s application_name="
	    "eav-worker:%lld:99999999999", db.dsn, inc2);
	odd[1] = th_connect(dsn);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_incarnation('"
	    NODE "', $1::bigint)", 1, num(inc2)), 0);
	ck_assert(session_alive(odd[0]));

	/* The sweep ends sessions of pids that are not live children. */
	t = enqueue("noop", "{}");
	ck_assert_int_eq(claim_one(inc2, 5), step_of(t, 1));
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_sweep('" NODE
	    "', $1::bigint, '{1}')", 1, num(inc2)), 1);
	ck_assert(session_alive(odd[0]));
	ck_assert(!session_alive(odd[1]));
	PQfinish(odd[0]);
	PQfinish(odd[1]);
}
END_TEST

static const char *const resolve_actions[] = { "retry", "succeeded",
	"failed" };

/* An operator resolves a held step; its alarm is resolved with it. */
/* FM-002 */
START_TEST(test_step_resolve)
{
	const char	*action = resolve_actions[_i];
	long long	 t, s1, s2, inc;
	char		 subject[32], *v;

	t = enqueue_steps("default", "[{\"tool\": \"demo.notify\"}, "
	    "{\"tool\": \"noop\"}, {\"tool\": \"noop\"}]");
	s1 = hold_step(t, 8001);
	s2 = step_of(t, 2);
	inc = th_ll(db.conn, "SELECT incarnation FROM eav.nodes", 0);
	v = th_str(db.conn, "SELECT eav.step_resolve($1::bigint, $2, "
	    "'operator:test', 'checked')", 2, num(s1), action);
	ck_assert_str_eq(v, action);
	free(v);
	snprintf(subject, sizeof(subject), "step:%lld", s1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "subject = $1 AND state = 'resolved' AND resolved_by = "
	    "'operator:test'", 1, subject), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "state <> 'resolved'", 0), 0);
	ck_assert_int_eq(audits("step.resolved", s1), 1);
	assert_sql("SELECT held_reason IS NULL FROM eav.steps WHERE id = "
	    "$1::bigint", s1);
	if (strcmp(action, "retry") == 0) {
		ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
		    "$1::bigint", s1), "pending");
		ck_assert_int_eq(claim_one(inc, 8002), s1);
		ck_assert_int_eq(ll1("SELECT attempt FROM eav.steps WHERE id = "
		    "$1::bigint", s1), 2);
	} else if (strcmp(action, "succeeded") == 0) {
		ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
		    "$1::bigint", s1), "succeeded");
		ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
		    "$1::bigint", s2), "pending");
		ck_assert_int_eq(audits("step.ready", s2), 1);
	} else {
		ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
		    "$1::bigint", s1), "failed");
		ck_assert_str_eq(str1("SELECT string_agg(state, ',' ORDER BY "
		    "ordinal) FROM eav.steps WHERE task_id = $1::bigint", t),
		    "failed,cancelled,cancelled");
		ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
		    "$1::bigint", t), "failed");
	}
}
END_TEST

/* step_resolve refuses a step that is not held, a bad action and a
 * missing step, and changes nothing. */
START_TEST(test_step_resolve_refused)
{
	long long	 t, s;
	const char	*err;
	char		*before, *after;

	t = enqueue("noop", "{}");
	s = step_of(t, 1);
	before = counts();
	err = th_err(db.conn, "SELECT eav.step_resolve($1::bigint, 'retry')",
	    1, num(s));
	ck_assert_msg(strncmp(err, "EA003: ", 7) == 0 &&
	    strstr(err, "is pending, not held") != NULL, "%s", err);
	err = th_err(db.conn, "SELECT eav.step_resolve($1::bigint, 'redo')", 1,
	    num(s));
	ck_assert_msg(strncmp(err, "22023: ", 7) == 0 &&
	    strstr(err, "unknown action \"redo\"") != NULL, "%s", err);
	err = th_err(db.conn, "SELECT eav.step_resolve($1::bigint, "
	    "'succeeded')", 1, num(s + 1000));
	ck_assert_msg(strncmp(err, "EA004: ", 7) == 0 &&
	    strstr(err, "does not exist") != NULL, "%s", err);
	after = counts();
	ck_assert_str_eq(before, after);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE id = "
	    "$1::bigint", s), "pending");
	free(before);
	free(after);
}
END_TEST

/* A failed task is retried from its first unfinished step. */
START_TEST(test_task_retry)
{
	long long	 t, inc;
	const char	*err;

	t = enqueue_steps("default", "[{\"tool\": \"noop\"}, {\"tool\": "
	    "\"fail\"}, {\"tool\": \"noop\"}]");
	inc = node_start(NODE);
	ck_assert_int_eq(claim_one(inc, 40), step_of(t, 1));
	ck_assert_str_eq(complete1(step_of(t, 1), 1, "succeeded", NULL, NULL),
	    "succeeded");
	ck_assert_int_eq(claim_one(inc, 40), step_of(t, 2));
	ck_assert_str_eq(complete1(step_of(t, 2), 1, "failed", NULL, "no"),
	    "failed");
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "failed");

	PQclear(th_exec(db.conn, "SELECT eav.task_retry($1::bigint, "
	    "'operator:test')", 1, num(t)));
	assert_sql("SELECT state = 'active' AND finished_at IS NULL FROM "
	    "eav.tasks WHERE id = $1::bigint", t);
	ck_assert_str_eq(str1("SELECT string_agg(state || attempt, ',' ORDER "
	    "BY ordinal) FROM eav.steps WHERE task_id = $1::bigint", t),
	    "succeeded1,pending0,blocked0");
	ck_assert_int_eq(task_audits("task.retried", t), 1);
	ck_assert_int_eq(claim_one(inc, 41), step_of(t, 2));

	err = th_err(db.conn, "SELECT eav.task_retry($1::bigint)", 1, num(t));
	ck_assert_msg(strncmp(err, "EA003: ", 7) == 0 &&
	    strstr(err, "is active") != NULL, "%s", err);
	err = th_err(db.conn, "SELECT eav.task_retry($1::bigint)", 1,
	    num(t + 1000));
	ck_assert_int_eq(strncmp(err, "EA004: ", 7), 0);
}
END_TEST

/*
 * A task cancelled while its last step ran, which then succeeded, has no
 * step left to run: retrying it must not leave an active task that
 * nothing will ever move.
 */
START_TEST(test_task_retry_nothing_left)
{
	long long	 t, inc, s;
	const char	*err;

	t = enqueue("noop", "{}");
	inc = node_start(NODE);
	s = claim_one(inc, 45);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(t)), 0);
	ck_assert_str_eq(complete1(s, 1, "succeeded", NULL, NULL), "succeeded");
	err = th_err(db.conn, "SELECT eav.task_retry($1::bigint)", 1, num(t));
	ck_assert_msg(strncmp(err, "EA003: ", 7) == 0, "%s", err);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "cancelled");
}
END_TEST

/* Cancel stops everything but the running step, whose success does not
 * revive the task. */
START_TEST(test_task_cancel)
{
	long long	 t, inc, s1;
	const char	*err;

	t = enqueue_steps("default", "[{\"tool\": \"noop\"}, {\"tool\": "
	    "\"noop\"}, {\"tool\": \"noop\"}]");
	inc = node_start(NODE);
	s1 = claim_one(inc, 50);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint, "
	    "'operator:test', 'not needed')", 1, num(t)), 2);
	ck_assert_str_eq(str1("SELECT string_agg(state, ',' ORDER BY ordinal) "
	    "FROM eav.steps WHERE task_id = $1::bigint", t),
	    "running,cancelled,cancelled");
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "cancelled");
	ck_assert_int_eq(audits("step.cancelled", step_of(t, 2)), 1);
	ck_assert_int_eq(audits("step.cancelled", step_of(t, 3)), 1);
	ck_assert_int_eq(task_audits("task.cancelled", t), 1);

	ck_assert_str_eq(complete1(s1, 1, "succeeded", NULL, NULL),
	    "succeeded");
	ck_assert_str_eq(str1("SELECT string_agg(state, ',' ORDER BY ordinal) "
	    "FROM eav.steps WHERE task_id = $1::bigint", t),
	    "succeeded,cancelled,cancelled");
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "cancelled");
	ck_assert_int_eq(audits("step.ready", step_of(t, 2)), 0);
	ck_assert_int_eq(task_audits("task.succeeded", t), 0);
	ck_assert_int_eq(claim_n(inc, 50, 10, NULL), 0);

	err = th_err(db.conn, "SELECT eav.task_cancel($1::bigint)", 1, num(t));
	ck_assert_msg(strncmp(err, "EA003: ", 7) == 0 &&
	    strstr(err, "is already cancelled") != NULL, "%s", err);
}
END_TEST

/*
 * Cancel takes pending steps but leaves a held one held with its alarm
 * (whether its effect happened is still unknown), which then can only be
 * resolved as succeeded or failed; a retry of a running step of a
 * cancelled task cancels it; a finished task cannot be cancelled.
 */
/* FM-035 */
START_TEST(test_task_cancel_states)
{
	long long	 held, pend, run, done, inc, s;
	const char	*err;

	held = enqueue("demo.notify", "{}");
	s = hold_step(held, 55);
	inc = th_ll(db.conn, "SELECT incarnation FROM eav.nodes", 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(held)), 0);
	ck_assert_str_eq(str1("SELECT state || coalesce(held_reason, '-') FROM "
	    "eav.steps WHERE id = $1::bigint", s), "heldunknown_outcome");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "state <> 'resolved'", 0), 1);
	err = th_err(db.conn, "SELECT eav.step_resolve($1::bigint, 'retry')",
	    1, num(s));
	ck_assert_msg(strncmp(err, "EA003: ", 7) == 0 &&
	    strstr(err, "cancelled task") != NULL, "%s", err);
	ck_assert_ptr_nonnull(strstr(th_err(db.conn, "SELECT eav.task_retry("
	    "$1::bigint)", 1, num(held)), "EA003: step"));
	ck_assert_str_eq(str1("SELECT eav.step_resolve($1::bigint, 'failed')",
	    s), "failed");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "state <> 'resolved'", 0), 0);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", held), "cancelled");

	pend = enqueue("noop", "{}");
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(pend)), 1);
	ck_assert_str_eq(str1("SELECT state FROM eav.steps WHERE task_id = "
	    "$1::bigint", pend), "cancelled");

	run = enqueue("noop", "{}");
	s = claim_one(inc, 56);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(run)), 0);
	ck_assert_str_eq(complete1(s, 1, "retry", NULL, "again"), "cancelled");
	ck_assert_int_eq(audits("step.cancelled", s), 1);

	done = enqueue("noop", "{}");
	s = claim_one(inc, 57);
	ck_assert_str_eq(complete1(s, 1, "succeeded", NULL, NULL), "succeeded");
	err = th_err(db.conn, "SELECT eav.task_cancel($1::bigint)", 1,
	    num(done));
	ck_assert_msg(strncmp(err, "EA003: ", 7) == 0 &&
	    strstr(err, "is already succeeded") != NULL, "%s", err);
}
END_TEST

/* A ledger transfer applies once per idempotency key; the sum of the
 * balances never changes. */
/* FM-006, FM-007 */
START_TEST(test_ledger_transfer)
{
	long long	 inc, t1, t2, s1, s2, sum;
	const char	*in = "{\"from\": \"alice\", \"to\": \"bob\", "
	    "\"amount\": 100}";

	sum = ledger_sum();
	t1 = th_ll(db.conn, "SELECT eav.enqueue('ledger.transfer', $1::jsonb, "
	    "p_idempotency_key => 'pay-1')", 1, in);
	inc = node_start(NODE);
	s1 = claim_one(inc, 60);
	ck_assert_int_eq(s1, step_of(t1, 1));
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 1, "
	    "'test')", s1), "succeeded");
	ck_assert_int_eq(balance("alice"), 1000000 - 100);
	ck_assert_int_eq(balance("bob"), 1000000 + 100);
	ck_assert_int_eq(ledger_sum(), sum);
	assert_sql("SELECT count(*) = 1 FROM eav.ledger_entries WHERE "
	    "idempotency_key = 'pay-1' AND step_id = $1::bigint AND amount = "
	    "100", s1);
	assert_sql("SELECT count(*) = 1 FROM eav.idempotency_outcomes WHERE "
	    "tool = 'ledger.transfer' AND idempotency_key = 'pay-1' AND "
	    "outcome = 'succeeded' AND step_id = $1::bigint", s1);
	assert_sql("SELECT state = 'succeeded' AND result->>'amount' = '100' "
	    "FROM eav.steps WHERE id = $1::bigint", s1);
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 1, "
	    "'test')", s1), "already_applied");
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 7, "
	    "'test')", s1), "fenced");

	t2 = th_ll(db.conn, "SELECT eav.enqueue('ledger.transfer', $1::jsonb, "
	    "p_idempotency_key => 'pay-1')", 1, in);
	s2 = claim_one(inc, 61);
	ck_assert_int_eq(s2, step_of(t2, 1));
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 1, "
	    "'test')", s2), "succeeded");
	ck_assert_int_eq(audits("tool_call.deduplicated", s2), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.ledger_entries", 0), 1);
	ck_assert_int_eq(balance("alice"), 1000000 - 100);
	ck_assert_int_eq(ledger_sum(), sum);
	assert_sql("SELECT result->>'amount' = '100' FROM eav.steps WHERE "
	    "id = $1::bigint", s2);
}
END_TEST

/* Insufficient funds fail the step, with the outcome recorded. */
START_TEST(test_ledger_insufficient)
{
	long long	inc, t, s, sum;

	sum = ledger_sum();
	t = enqueue("ledger.transfer", "{\"from\": \"carol\", \"to\": "
	    "\"dave\", \"amount\": 1000001}");
	inc = node_start(NODE);
	s = claim_one(inc, 62);
	ck_assert_int_eq(s, step_of(t, 1));
	ck_assert_str_eq(str1("SELECT eav.ledger_transfer($1::bigint, 1, "
	    "'test')", s), "failed");
	assert_sql("SELECT state = 'failed' AND error = 'insufficient funds' "
	    "FROM eav.steps WHERE id = $1::bigint", s);
	assert_sql("SELECT count(*) = 1 FROM eav.idempotency_outcomes o JOIN "
	    "eav.steps s ON s.idempotency_key = o.idempotency_key AND s.tool = "
	    "o.tool WHERE s.id = $1::bigint AND o.outcome = 'failed' AND "
	    "o.error = 'insufficient funds'", s);
	ck_assert_str_eq(str1("SELECT state FROM eav.tasks WHERE id = "
	    "$1::bigint", t), "failed");
	ck_assert_int_eq(balance("carol"), 1000000);
	ck_assert_int_eq(balance("dave"), 1000000);
	ck_assert_int_eq(ledger_sum(), sum);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.ledger_entries", 0), 0);
}
END_TEST

/* tool_register adds and changes builtin tools, and refuses others. */
START_TEST(test_tool_register)
{
	const char	*err;
	char		*before, *after, *v;
	long long	 t;

	PQclear(th_exec(db.conn, "SELECT eav.tool_register('my.noop', "
	    "'builtin', '{\"builtin\": \"noop\"}', true)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('my.noop', "
	    "'builtin', '{\"builtin\": \"sleep\"}', false, 500)", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type IN ('tool.registered', 'tool.updated')", 0), 2);
	v = th_str(db.conn, "SELECT format('%s %s %s', config->>'builtin', "
	    "idempotent, timeout_ms) FROM eav.tools WHERE name = 'my.noop'", 0);
	ck_assert_str_eq(v, "sleep f 500");
	free(v);
	t = enqueue("my.noop", "{}");
	ck_assert_int_eq(ll1("SELECT count(*) FROM eav.steps WHERE task_id = "
	    "$1::bigint AND tool = 'my.noop'", t), 1);

	before = counts();
	err = th_err(db.conn, "SELECT eav.tool_register('x', 'exec', '{}', "
	    "true)", 0);
	ck_assert_int_eq(strncmp(err, "22023: ", 7), 0);
	err = th_err(db.conn, "SELECT eav.tool_register('x', 'builtin', "
	    "'{\"builtin\": \"noop\", \"extra\": 1}', true)", 0);
	ck_assert_int_eq(strncmp(err, "22023: ", 7), 0);
	err = th_err(db.conn, "SELECT eav.tool_register('Bad Name', 'builtin', "
	    "'{\"builtin\": \"noop\"}', true)", 0);
	ck_assert_int_eq(strncmp(err, "22023: ", 7), 0);
	after = counts();
	ck_assert_str_eq(before, after);
	free(before);
	free(after);
}
END_TEST

/* An alarm raised again while open counts up in the same row. */
START_TEST(test_alarm_raise_twice)
{
	long long	 id1, id2, id3;
	const char	*err;

	id1 = th_ll(db.conn, "SELECT eav.alarm_raise('test_alarm', 'warning', "
	    "'node:x', 'first')", 0);
	id2 = th_ll(db.conn, "SELECT eav.alarm_raise('test_alarm', 'critical', "
	    "'node:x', 'second')", 0);
	ck_assert_int_eq(id1, id2);
	assert_sql("SELECT count(*) = 1 FROM eav.alarms WHERE type = "
	    "'test_alarm' AND id = $1::bigint AND raise_count = 2 AND message "
	    "= 'second' AND severity = 'critical' AND state = 'open'", id1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'alarm.raised'", 0), 2);

	PQclear(th_exec(db.conn, "SELECT eav.alarm_resolve($1::bigint)", 1,
	    num(id1)));
	id3 = th_ll(db.conn, "SELECT eav.alarm_raise('test_alarm', 'warning', "
	    "'node:x', 'third')", 0);
	ck_assert_int_ne(id3, id1);
	assert_sql("SELECT raise_count = 1 FROM eav.alarms WHERE id = "
	    "$1::bigint", id3);
	err = th_err(db.conn, "SELECT eav.alarm_raise('test_alarm', 'loud', "
	    "'node:x', 'm')", 0);
	ck_assert_int_eq(strncmp(err, "22023: ", 7), 0);
}
END_TEST

Suite *
suite_transitions(void)
{
	Suite	*s = suite_create("transitions");
	TCase	*tc = tcase_create("transitions");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_enqueue_refused, 0,
	    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_enqueue_limits);
	tcase_add_test(tc, test_enqueue_many);
	tcase_add_loop_test(tc, test_enqueue_sqlish, 0,
	    (int)(sizeof(sqlish) / sizeof(sqlish[0])));
	tcase_add_test(tc, test_claim);
	tcase_add_test(tc, test_claim_refused);
	tcase_add_test(tc, test_complete_two_steps);
	tcase_add_test(tc, test_complete_fenced);
	tcase_add_test(tc, test_retry_backoff);
	tcase_add_test(tc, test_release);
	tcase_add_test(tc, test_reconcile_idempotent);
	tcase_add_test(tc, test_reconcile_non_idempotent);
	tcase_add_test(tc, test_reconcile_recorded_outcome);
	tcase_add_test(tc, test_reconcile_no_retry);
	tcase_add_test(tc, test_reconcile_cancelled_non_idempotent);
	tcase_add_test(tc, test_no_delete_of_tools_and_queues);
	tcase_add_test(tc, test_ledger_same_key_concurrent);
	tcase_add_test(tc, test_reconcile_incarnation);
	tcase_add_test(tc, test_reconcile_spares_other_databases);
	tcase_add_test(tc, test_reconcile_odd_session_names);
	tcase_add_loop_test(tc, test_step_resolve, 0,
	    (int)(sizeof(resolve_actions) / sizeof(resolve_actions[0])));
	tcase_add_test(tc, test_step_resolve_refused);
	tcase_add_test(tc, test_task_retry);
	tcase_add_test(tc, test_task_retry_nothing_left);
	tcase_add_test(tc, test_task_cancel);
	tcase_add_test(tc, test_task_cancel_states);
	tcase_add_test(tc, test_ledger_transfer);
	tcase_add_test(tc, test_ledger_insufficient);
	tcase_add_test(tc, test_worker_resync);
	tcase_add_test(tc, test_tool_register);
	tcase_add_test(tc, test_alarm_raise_twice);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}
