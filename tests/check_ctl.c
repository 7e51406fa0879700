/*
 * eavctl, run for real against the test database: what each command
 * prints, what it stores, the audited operator (-a), and its exit codes:
 * 0 done, 2 bad usage or input refused (one line on stderr, nothing
 * stored), 1 anything else, such as an unreachable database.
 */
#include <sys/wait.h>

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define CTL_MAX_ARGS	24
#define OUT_MAX		65536
#define GOOD_BODY	"{\"queue\": \"default\", \"kind\": \"k\", " \
			    "\"steps\": [{\"tool\": \"noop\"}]}"

static char	out_path[512];
static char	out_text[OUT_MAX];

static int		 ctl(const char *, const char *, ...);
static int		 ctl_argv(const char *, const char *, const char **);
static const char	*out_read(void);
static int		 out_lines(void);
static long long	 start_node(PGconn *);
static char		*held_step(PGconn *, long long, const char *);

/*
 * Runs eavctl -d dsn [-a actor] args... (NULL-terminated); output goes to
 * out_path.  Returns the exit code.
 */
static int
ctl(const char *dsn, const char *actor, ...)
{
	const char	*args[CTL_MAX_ARGS];
	va_list		 ap;
	int		 n = 0;

	va_start(ap, actor);
	while ((args[n] = va_arg(ap, const char *)) != NULL) {
		n++;
		ck_assert_int_lt(n, CTL_MAX_ARGS);
	}
	va_end(ap);
	return ctl_argv(dsn, actor, args);
}

/* As ctl, with the arguments in a NULL-terminated array. */
static int
ctl_argv(const char *dsn, const char *actor, const char **args)
{
	char	*argv[CTL_MAX_ARGS + 6];
	int	 n = 0, i, status;

	snprintf(out_path, sizeof(out_path), "%s/ctl-%d.out", th_tmpdir(),
	    (int)getpid());
	argv[n++] = th_bin("eavctl");
	argv[n++] = "-d";
	argv[n++] = (char *)(uintptr_t)dsn;
	if (actor != NULL) {
		argv[n++] = "-a";
		argv[n++] = (char *)(uintptr_t)actor;
	}
	for (i = 0; args[i] != NULL; i++) {
		ck_assert_int_lt(n, CTL_MAX_ARGS + 5);
		argv[n++] = (char *)(uintptr_t)args[i];
	}
	argv[n] = NULL;
	status = th_run(argv, out_path);
	ck_assert_msg(WIFEXITED(status), "eavctl %s: status %d", args[0],
	    status);
	return WEXITSTATUS(status);
}

/* The output of the last eavctl run, in a static buffer. */
static const char *
out_read(void)
{
	FILE	*fp = fopen(out_path, "r");
	size_t	 n;

	ck_assert_ptr_nonnull(fp);
	n = fread(out_text, 1, sizeof(out_text) - 1, fp);
	out_text[n] = '\0';
	fclose(fp);
	return out_text;
}

/* Number of lines of the last output (a last line without \n counts). */
static int
out_lines(void)
{
	const char	*p = out_read();
	int		 n = 0;

	for (; *p != '\0'; p++)
		if (*p == '\n' || p[1] == '\0')
			n++;
	return n;
}

/* Starts an incarnation of node "n1", so SQL can claim as a worker. */
static long long
start_node(PGconn *c)
{
	return th_ll(c, "SELECT eav.node_start('n1', 'test', 1, 'test')", 0);
}

/*
 * Enqueues a demo.notify task (a non-idempotent tool), claims its step as
 * worker 4242 of incarnation inc and reconciles that dead worker: the step
 * is held.  Returns the step id (caller frees).
 */
static char *
held_step(PGconn *c, long long inc, const char *kind)
{
	char	 sinc[24], *task, *step;

	snprintf(sinc, sizeof(sinc), "%lld", inc);
	task = th_str(c, "SELECT eav.enqueue('demo.notify', '{\"ms\": 1}', "
	    "p_kind => $1)::text", 1, kind);
	step = th_str(c, "SELECT step_id::text FROM eav.claim('n1', "
	    "$1::bigint, 4242, 1, NULL)", 1, sinc);
	ck_assert_ptr_nonnull(step);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.reconcile_worker("
	    "'n1', $1::bigint, 4242) WHERE decision = 'held'", 1, sinc), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.steps WHERE id = "
	    "$1::bigint AND task_id = $2::bigint AND state = 'held'", 2, step,
	    task), 1);
	free(task);
	return step;
}

/* migrate on a migrated database applies nothing. */
START_TEST(test_migrate_again)
{
	struct th_db	db;

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, NULL, "migrate", NULL), 0);
	ck_assert_msg(strstr(out_read(), "0 migration(s) applied") != NULL,
	    "migrate printed: %s", out_text);
	ck_assert_int_eq(out_lines(), 1);
	th_db_free(&db);
}
END_TEST

/* enqueue prints the id of a task that stores what was asked for. */
START_TEST(test_enqueue)
{
	struct th_db	 db;
	char		 id[32];

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, NULL, "enqueue", "noop", NULL), 0);
	ck_assert_int_eq(out_lines(), 1);
	ck_assert_int_gt(atoll(out_read()), 0);
	snprintf(id, sizeof(id), "%lld", atoll(out_text));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks t "
	    "JOIN eav.steps s ON s.task_id = t.id WHERE t.id = $1::bigint AND "
	    "t.kind = 'noop' AND t.queue = 'default' AND s.tool = 'noop' AND "
	    "s.state = 'pending' AND t.created_by LIKE 'operator:%'", 1, id),
	    1);

	ck_assert_int_eq(ctl(db.dsn, "alice", "enqueue", "-q", "default",
	    "-k", "mykind", "-m", "3", "-i", "key1", "sleep", "{\"ms\":1}",
	    NULL), 0);
	snprintf(id, sizeof(id), "%lld", atoll(out_read()));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks t "
	    "JOIN eav.steps s ON s.task_id = t.id WHERE t.id = $1::bigint AND "
	    "t.kind = 'mykind' AND t.queue = 'default' AND t.step_count = 1 "
	    "AND s.tool = 'sleep' AND s.max_attempts = 3 AND "
	    "s.idempotency_key = 'key1' AND s.input = '{\"ms\": 1}' AND "
	    "t.created_by = 'operator:alice'", 1, id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'task.enqueued' AND task_id = "
	    "$1::bigint AND actor = 'operator:alice'", 1, id), 1);

	ck_assert_int_eq(ctl(db.dsn, NULL, "enqueue", "-k", "multi", "-s",
	    "[{\"tool\":\"noop\"},{\"tool\":\"noop\"}]", NULL), 0);
	snprintf(id, sizeof(id), "%lld", atoll(out_read()));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "id = $1::bigint AND kind = 'multi' AND step_count = 2", 1, id),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND tool = 'noop' AND state = CASE ordinal "
	    "WHEN 1 THEN 'pending' WHEN 2 THEN 'blocked' END", 1, id), 2);

	/* -A: each step the spec leaves unmarked waits for an approval. */
	ck_assert_int_eq(ctl(db.dsn, NULL, "enqueue", "-A", "-s",
	    "[{\"tool\":\"noop\"},{\"tool\":\"noop\","
	    "\"requires_approval\":false}]", NULL), 0);
	snprintf(id, sizeof(id), "%lld", atoll(out_read()));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND (approval IS NOT NULL) = (ordinal = 1)",
	    1, id), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND state = 'waiting_approval'", 1, id), 1);
	th_db_free(&db);
}
END_TEST

/* "%STEP%" stands for a pending step, "%KEY256%" for a 256-byte key. */
static const char *const bad_args[][8] = {
	{ "enqueue", "nosuch" },
	{ "enqueue", "noop", "{\"ms\": " },
	{ "enqueue", "noop", "{\"a\": \"x\\u0000y\"}" },
	{ "enqueue", "-m", "0", "noop" },
	{ "enqueue", "-m", "three", "noop" },
	{ "enqueue", "-q", "nosuch", "noop" },
	{ "enqueue", "-i", "%KEY256%", "noop" },
	{ "enqueue", "-k", "empty", "-s", "[]" },
	{ "frobnicate", "1" },
	{ "enqueue" },
	{ "show" },
	{ "cancel" },
	{ "resolve", "%STEP%" },
	{ "event", "src", "key", "task" },
	{ "show", "abc" },
	{ "show", "999999" },
	{ "cancel", "999999" },
	{ "resolve", "%STEP%", "maybe" },
	{ "resolve", "%STEP%", "succeeded" },
	{ "event", "", "key", "task", GOOD_BODY },
	{ "tasks", "-n", "0" },
};

/* Refused input: exit 2, exactly one line, nothing stored. */
/* FM-018 */
START_TEST(test_bad_input)
{
	struct th_db	 db;
	const char	*args[9];
	char		 key[257], *step;
	long long	 audit;
	int		 i, code;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop')", 0));
	step = th_str(db.conn, "SELECT id::text FROM eav.steps", 0);
	audit = th_ll(db.conn, "SELECT count(*) FROM eav.audit_events", 0);
	memset(key, 'k', 256);
	key[256] = '\0';
	for (i = 0; i < 8 && bad_args[_i][i] != NULL; i++)
		if (strcmp(bad_args[_i][i], "%STEP%") == 0)
			args[i] = step;
		else if (strcmp(bad_args[_i][i], "%KEY256%") == 0)
			args[i] = key;
		else
			args[i] = bad_args[_i][i];
	args[i] = NULL;
	code = ctl_argv(db.dsn, "alice", args);
	ck_assert_msg(code == 2, "eavctl %s ... exited %d: %s", args[0], code,
	    out_read());
	ck_assert_msg(out_lines() == 1, "eavctl %s ... printed %d lines: %s",
	    args[0], out_lines(), out_text);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "state = 'pending' AND attempt = 0", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox", 0),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events", 0), audit);
	free(step);
	th_db_free(&db);
}
END_TEST

/* An unreachable database: exit 1, one line. */
START_TEST(test_unreachable)
{
	ck_assert_int_eq(ctl("host=/nonexistent dbname=x", NULL, "tasks",
	    NULL), 1);
	ck_assert_msg(out_lines() == 1, "printed: %s", out_read());
	ck_assert_ptr_nonnull(strstr(out_read(), "/nonexistent"));
}
END_TEST

/* tasks lists, show details a task with its steps and audit trail. */
START_TEST(test_tasks_show)
{
	struct th_db	 db;
	char		 a[32], b[32], key[64];
	const char	*out;

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, "alice", "enqueue", "-k", "first",
	    "noop", NULL), 0);
	snprintf(a, sizeof(a), "%lld", atoll(out_read()));
	ck_assert_int_eq(ctl(db.dsn, "alice", "enqueue", "-k", "second", "-q",
	    "demo", "sleep", "{\"ms\": 5}", NULL), 0);
	snprintf(b, sizeof(b), "%lld", atoll(out_read()));

	ck_assert_int_eq(ctl(db.dsn, NULL, "tasks", NULL), 0);
	out = out_read();
	ck_assert_int_eq(out_lines(), 3);
	ck_assert_ptr_nonnull(strstr(out, "kind"));
	ck_assert_ptr_nonnull(strstr(out, "first"));
	ck_assert_ptr_nonnull(strstr(out, "second"));
	ck_assert_ptr_nonnull(strstr(out, "pending"));
	ck_assert_int_eq(ctl(db.dsn, NULL, "tasks", "-q", "demo", NULL), 0);
	ck_assert_int_eq(out_lines(), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "second"));
	ck_assert_ptr_null(strstr(out_text, "first"));

	ck_assert_int_eq(ctl(db.dsn, NULL, "show", b, NULL), 0);
	out = out_read();
	snprintf(key, sizeof(key), "eav:%s:1", b);
	ck_assert_ptr_nonnull(strstr(out, "kind=second"));
	ck_assert_ptr_nonnull(strstr(out, "queue=demo"));
	ck_assert_ptr_nonnull(strstr(out, "steps:"));
	ck_assert_ptr_nonnull(strstr(out, "sleep"));
	ck_assert_ptr_nonnull(strstr(out, key));
	ck_assert_ptr_nonnull(strstr(out, "{\"ms\": 5}"));
	ck_assert_ptr_nonnull(strstr(out, "audit:"));
	ck_assert_ptr_nonnull(strstr(out, "task.enqueued"));
	ck_assert_ptr_nonnull(strstr(out, "operator:alice"));
	ck_assert_ptr_null(strstr(out, "first"));
	th_db_free(&db);
}
END_TEST

/* cancel -r cancels an active task, audited with the operator. */
START_TEST(test_cancel)
{
	struct th_db	 db;
	char		*id;

	th_db_new(&db);
	id = th_str(db.conn, "SELECT eav.task_enqueue('default', 'two', "
	    "'[{\"tool\": \"noop\"}, {\"tool\": \"noop\"}]')::text", 0);
	ck_assert_int_eq(ctl(db.dsn, "bob", "cancel", "-r", "why", id, NULL),
	    0);
	ck_assert_ptr_nonnull(strstr(out_read(), "cancelled (2 step(s)"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "id = $1::bigint AND state = 'cancelled'", 1, id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND state = 'cancelled'", 1, id), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'task.cancelled' AND task_id = "
	    "$1::bigint AND actor = 'operator:bob' AND payload->>'reason' = "
	    "'why'", 1, id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.cancelled' AND task_id = "
	    "$1::bigint AND actor = 'operator:bob'", 1, id), 2);
	/* Twice is refused, and changes nothing. */
	ck_assert_int_eq(ctl(db.dsn, "bob", "cancel", id, NULL), 2);
	ck_assert_int_eq(out_lines(), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'task.cancelled'", 0), 1);
	free(id);
	th_db_free(&db);
}
END_TEST

/* retry re-activates a failed task, audited with the operator. */
START_TEST(test_retry_failed)
{
	struct th_db	 db;
	char		 inc[24], *id, *batch;

	th_db_new(&db);
	id = th_str(db.conn, "SELECT eav.enqueue('noop')::text", 0);
	ck_assert_int_eq(ctl(db.dsn, "carol", "retry", id, NULL), 2);
	ck_assert_int_eq(out_lines(), 1);
	snprintf(inc, sizeof(inc), "%lld", start_node(db.conn));
	batch = th_str(db.conn, "SELECT jsonb_agg(jsonb_build_object('id', "
	    "step_id, 'epoch', claim_epoch, 'outcome', 'failed', 'error', "
	    "'boom'))::text FROM eav.claim('n1', $1::bigint, 7, 10, NULL)", 1,
	    inc);
	ck_assert_ptr_nonnull(batch);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.complete_batch('worker:n1', $1::jsonb) WHERE status = "
	    "'failed'", 1, batch), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "id = $1::bigint AND state = 'failed'", 1, id), 1);

	ck_assert_int_eq(ctl(db.dsn, "carol", "retry", id, NULL), 0);
	ck_assert_int_eq(out_lines(), 1);
	ck_assert_ptr_nonnull(strstr(out_read(), "retried"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks t "
	    "JOIN eav.steps s ON s.task_id = t.id WHERE t.id = $1::bigint AND "
	    "t.state = 'active' AND s.state = 'pending' AND s.attempt = 0", 1,
	    id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'task.retried' AND task_id = "
	    "$1::bigint AND actor = 'operator:carol' AND "
	    "payload->>'previous_state' = 'failed'", 1, id), 1);
	/* And the retried step really runs again. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim('n1', "
	    "$1::bigint, 7, 10, NULL) WHERE attempt = 1 AND claim_epoch = 2",
	    1, inc), 1);
	free(batch);
	free(id);
	th_db_free(&db);
}
END_TEST

static const struct {
	const char	*action;
	const char	*step_state;
	const char	*task_state;
} resolutions[] = {
	{ "retry", "pending", "active" },
	{ "succeeded", "succeeded", "succeeded" },
	{ "failed", "failed", "failed" },
};

/* resolve decides a held step; status shows its alarm until then. */
/* FM-002 */
START_TEST(test_resolve_held)
{
	struct th_db	 db;
	const char	*out;
	char		*step, subject[64];

	th_db_new(&db);
	step = held_step(db.conn, start_node(db.conn), "notify");
	snprintf(subject, sizeof(subject), "step:%s", step);

	ck_assert_int_eq(ctl(db.dsn, NULL, "status", NULL), 0);
	out = out_read();
	ck_assert_ptr_nonnull(strstr(out, "processes:"));
	ck_assert_ptr_nonnull(strstr(out, "queues:"));
	ck_assert_ptr_nonnull(strstr(out, "open alarms:"));
	ck_assert_ptr_nonnull(strstr(out, "unknown_outcome_held"));
	ck_assert_ptr_nonnull(strstr(out, subject));

	ck_assert_int_eq(ctl(db.dsn, "dave", "resolve", "-n", "checked",
	    step, resolutions[_i].action, NULL), 0);
	ck_assert_int_eq(out_lines(), 1);
	ck_assert_ptr_nonnull(strstr(out_read(), resolutions[_i].action));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.tasks t ON t.id = s.task_id WHERE s.id = $1::bigint AND "
	    "s.state = $2 AND t.state = $3", 3, step,
	    resolutions[_i].step_state, resolutions[_i].task_state), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.resolved' AND step_id = "
	    "$1::bigint AND actor = 'operator:dave' AND payload->>'action' = "
	    "$2 AND payload->>'note' = 'checked'", 2, step,
	    resolutions[_i].action), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE subject = $1 AND state = 'resolved' AND resolved_by = "
	    "'operator:dave'", 1, subject), 1);
	ck_assert_int_eq(ctl(db.dsn, NULL, "status", NULL), 0);
	ck_assert_ptr_null(strstr(out_read(), subject));
	/* It is no longer held: a second decision is refused. */
	ck_assert_int_eq(ctl(db.dsn, "dave", "resolve", step, "failed", NULL),
	    2);
	ck_assert_int_eq(out_lines(), 1);
	free(step);
	th_db_free(&db);
}
END_TEST

/* event puts an event in the inbox that the producer's step accepts. */
START_TEST(test_event)
{
	struct th_db	 db;
	char		 id[32];

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, "erin", "event", "src", "key1", "task",
	    GOOD_BODY, NULL), 0);
	ck_assert_int_eq(out_lines(), 1);
	snprintf(id, sizeof(id), "%lld", atoll(out_read()));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND source = 'src' AND event_key = 'key1' AND "
	    "type = 'task' AND body = $2 AND state = 'new'", 2, id,
	    GOOD_BODY), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(10, 'producer:test') WHERE state = 'accepted' "
	    "AND event_id = $1::bigint", 1, id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "event_id = $1::bigint AND kind = 'k'", 1, id), 1);
	th_db_free(&db);
}
END_TEST

/* An operator acks and resolves an alarm; bad ids are refused. */
START_TEST(test_alarm)
{
	struct th_db	 db;
	char		 id[32];

	th_db_new(&db);
	snprintf(id, sizeof(id), "%lld", th_ll(db.conn, "SELECT "
	    "eav.alarm_raise('test', 'warning', 'x', 'a test alarm')", 0));
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarm", "ack", id, NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarm", "ack", id, NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarm", "resolve", "-n", "done",
	    id, NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "id = $1::bigint AND state = 'resolved' AND acked_by = "
	    "'operator:erin' AND resolved_by = 'operator:erin'", 1, id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type IN ('alarm.acked', 'alarm.resolved') "
	    "AND payload->>'alarm_id' = $1", 1, id), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarm", "resolve", id, NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarm", "resolve", "0", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarm", "mute", id, NULL), 2);
	th_db_free(&db);
}
END_TEST

/* Queues are created and tuned through eav.queue_set, audited; bad
 * values are refused and change nothing. */
/* FM-018 */
START_TEST(test_queue)
{
	struct th_db	 db;

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "set", "-b", "5", "-x",
	    "50", "-d", "fast", "q1", NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "set", "-m", "7", "q1",
	    NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.queues "
	    "WHERE name = 'q1' AND default_max_attempts = 7 AND "
	    "retry_base_ms = 5 AND retry_max_ms = 50 AND description = "
	    "'fast'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type IN ('queue.created', "
	    "'queue.updated') AND payload->>'queue' = 'q1' AND actor = "
	    "'operator:erin'", 0), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "set", "-x", "1", "q1",
	    NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "set", "-m", "0", "q1",
	    NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "set", "-m", "x", "q1",
	    NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "set", "Bad Name",
	    NULL), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT default_max_attempts * 1000 + "
	    "retry_max_ms FROM eav.queues WHERE name = 'q1'", 0), 7050);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "list", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "q1"));
	th_db_free(&db);
}
END_TEST

/*
 * tools: register (audited, actor named), refused configs exit 2 with
 * nothing stored, list shows health, reset makes a tool available again.
 */
START_TEST(test_tools)
{
	struct th_db	 db;

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, "erin", "tools", "register", "-i", "-t",
	    "2000", "hook", "http", "{\"url\": \"http://127.0.0.1:9/x\"}",
	    NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'hook' AND kind = 'http' AND idempotent AND timeout_ms = "
	    "2000", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'tool.registered' AND "
	    "payload->>'tool' = 'hook' AND actor = 'operator:erin'", 0), 1);
	ck_assert_int_eq(ctl(db.dsn, "erin", "tools", "register", "h2", "http",
	    "{\"url\": \"ftp://x/\"}", NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "must use http or https"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "tools", "register", "h2", "http",
	    "not json", NULL), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'h2'", 0), 0);
	PQclear(th_exec(db.conn, "UPDATE eav.tools SET health = 'unavailable',"
	    " consecutive_errors = 12 WHERE name = 'hook'", 0));
	ck_assert_int_eq(ctl(db.dsn, "erin", "tools", "list", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "unavailable"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "tools", "reset", "hook", NULL),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'hook' AND health = 'available' AND consecutive_errors = "
	    "0", 0), 1);
	ck_assert_int_eq(ctl(db.dsn, "erin", "tools", "show", "hook", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "127.0.0.1:9"));
	ck_assert_int_ne(ctl(db.dsn, "erin", "tools", "show", "nope", NULL), 0);
	th_db_free(&db);
}
END_TEST

/* kill-switch on/off/list, with the reason required and the actor. */
START_TEST(test_kill_switch)
{
	struct th_db	 db;

	th_db_new(&db);
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", "on", NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "needs --reason"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", "on", "--queue",
	    "nope", "--reason", "x", NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "no queue \"nope\""));
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", "on", "-q", "a",
	    "-t", "b", "-r", "x", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", "on", "--tool",
	    "noop", "--reason", "noop is broken", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "tool noop engaged"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "ENGAGED"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'kill_switch.engaged' AND "
	    "actor = 'operator:erin' AND payload->>'reason' = "
	    "'noop is broken'", 0), 1);
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", "off", "-t",
	    "noop", "-r", "fixed", NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "kill-switch", "off", "-r", "x",
	    NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "not engaged"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.kill_switches WHERE engaged", 0), 0);
	th_db_free(&db);
}
END_TEST

/* alarms lists what is not resolved; queue stuck sets the threshold. */
START_TEST(test_alarms_and_stuck)
{
	struct th_db	 db;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.alarm_raise('test_alarm', "
	    "'warning', 'thing:1', 'something is off')", 0));
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarms", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "something is off"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarms", "ack", "1", NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE state = 'acked' AND acked_by = 'operator:erin'", 0), 1);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarms", "resolve", "1", NULL),
	    0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarms", NULL), 0);
	ck_assert_ptr_null(strstr(out_read(), "something is off"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "alarms", "-a", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "something is off"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "stuck", "default",
	    "120000", NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT stuck_after_ms FROM "
	    "eav.queues WHERE name = 'default'", 0), 120000);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "stuck", "default",
	    "5", NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "stuck_after_ms"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "recursion", "default",
	    "7", "-", NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT max_depth * 10000000 + "
	    "max_trace_tasks FROM eav.queues WHERE name = 'default'", 0),
	    70001000);
	ck_assert_int_eq(ctl(db.dsn, "erin", "queue", "recursion", "default",
	    "0", "-", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "approvals", "policy", "noop",
	    "{\"four_eyes\": true}", NULL), 0);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', p_actor => "
	    "'operator:erin')", 0));
	ck_assert_int_eq(ctl(db.dsn, "erin", "approvals", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "operator:erin"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "approvals", "approve", "1",
	    NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "four eyes"));
	ck_assert_int_eq(ctl(db.dsn, "bob", "approvals", "deny", "1", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "bob", "approvals", "approve", "-n",
	    "ok", "1", NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "approvals", "policy", "noop",
	    "off", NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "budget", "set", "-q", "default",
	    "30", NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "budget", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "queue:default"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "budget", "set", "-t", "noop",
	    "0", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "budget", "clear", "-q",
	    "default", NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.retry_budgets", 0), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "redaction", "add", "-h", "tok_",
	    "-m", "test tokens", "value", "test_tok", "tok_[a-z0-9]{8}", NULL),
	    0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "redaction", "add", "value",
	    "Bad Label", "x", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "erin", "redaction", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "test_tok"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT ((eav.redact_text('key "
	    "tok_abcd1234 here')).redacted = 'key [REDACTED:test_tok] "
	    "here')::int", 0), 1);
	ck_assert_int_eq(ctl(db.dsn, "erin", "redaction", "disable",
	    "test_tok", "was a test", NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "erin", "redaction", NULL), 0);
	ck_assert_ptr_null(strstr(out_read(), "test_tok"));
	ck_assert_int_eq(ctl(db.dsn, "erin", "redaction", "-a", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "was a test"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type LIKE 'redaction.%' AND actor = "
	    "'operator:erin'", 0), 2);
	th_db_free(&db);
}
END_TEST

/* What an operator reads, logged in as eav_operator (sql/0021). */
static const char *operator_reads[][4] = {
	{ "tasks", NULL },
	{ "show", "1", NULL },
	{ "status", NULL },
	{ "alarms", "-a", NULL },
	{ "tools", "list", NULL },
	{ "queue", "list", NULL },
	{ "kill-switch", NULL },
	{ "budget", NULL },
	{ "approvals", NULL },
	{ "owner", NULL },
	{ "schedules", NULL },
	{ "inject", "list", NULL },
	{ "check", NULL },
	{ "audit", "verify", NULL },
	{ "diagnose", NULL },
};

START_TEST(test_operator_role)
{
	struct th_db	 db;
	char		 dsn[600];
	int		 r;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_add('nightly', "
	    "'0 3 * * *', 'default', 'report', '[{\"tool\": \"noop\"}]', "
	    "p_actor => 'operator:test')", 0));
	snprintf(dsn, sizeof(dsn), "%s user=eav_operator", db.dsn);
	r = ctl_argv(dsn, "erin", operator_reads[_i]);
	ck_assert_msg(r == 0 || (r == 3 && strcmp(operator_reads[_i][0],
	    "diagnose") == 0), "eavctl %s as eav_operator: exit %d: %s",
	    operator_reads[_i][0], r, out_read());
	ck_assert_int_eq(ctl(dsn, "erin", "schedules", "next", "nightly", "2",
	    NULL), 0);
	th_db_free(&db);
}
END_TEST

/* status with eavd running lists its children and the queues. */
START_TEST(test_status_eavd)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*out;
	int		 status;

	th_db_new(&db);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_start(&e);
	ck_assert_msg(th_eavd_wait_up(&e, db.conn, 2, 60000),
	    "eavd did not come up; see %s", e.log);
	ck_assert_int_eq(ctl(db.dsn, NULL, "status", NULL), 0);
	out = out_read();
	ck_assert_ptr_nonnull(strstr(out, "processes:"));
	ck_assert_ptr_nonnull(strstr(out, "producer"));
	ck_assert_ptr_nonnull(strstr(out, "worker"));
	ck_assert_ptr_nonnull(strstr(out, " up "));
	ck_assert_ptr_nonnull(strstr(out, "queues:"));
	ck_assert_ptr_nonnull(strstr(out, "default"));
	ck_assert_ptr_nonnull(strstr(out, "demo"));
	ck_assert_ptr_nonnull(strstr(out, "open alarms:\n  alarm"));
	ck_assert_ptr_nonnull(strstr(out, "(none)"));
	/* review: clarification tasks of events (migration 0022). */
	ck_assert_ptr_nonnull(strstr(out, "review"));
	/* 3 headers, 3 children, 3 queues, 1 "(none)", 2 blank lines. */
	ck_assert_int_eq(out_lines(), 6 + 3 + 3 + 1 + 2);
	status = th_eavd_stop(&e, SIGTERM, 20000);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "eavd stop status %d", status);
	ck_assert_msg(!th_log_contains(&e, "Sanitizer") &&
	    !th_log_contains(&e, "runtime error"), "sanitizer report in %s",
	    e.log);
	th_db_free(&db);
}
END_TEST

Suite *
suite_ctl(void)
{
	Suite	*s = suite_create("ctl");
	TCase	*tc = tcase_create("ctl");

	tcase_add_test(tc, test_migrate_again);
	tcase_add_test(tc, test_enqueue);
	tcase_add_loop_test(tc, test_bad_input, 0,
	    (int)(sizeof(bad_args) / sizeof(bad_args[0])));
	tcase_add_test(tc, test_unreachable);
	tcase_add_test(tc, test_tasks_show);
	tcase_add_test(tc, test_cancel);
	tcase_add_test(tc, test_retry_failed);
	tcase_add_loop_test(tc, test_resolve_held, 0,
	    (int)(sizeof(resolutions) / sizeof(resolutions[0])));
	tcase_add_test(tc, test_event);
	tcase_add_test(tc, test_alarm);
	tcase_add_test(tc, test_queue);
	tcase_add_test(tc, test_kill_switch);
	tcase_add_test(tc, test_alarms_and_stuck);
	tcase_add_loop_test(tc, test_operator_role, 0,
	    sizeof(operator_reads) / sizeof(operator_reads[0]));
	tcase_add_test(tc, test_tools);
	tcase_add_test(tc, test_status_eavd);
	tcase_set_timeout(tc, 90);
	suite_add_tcase(s, tc);
	return s;
}
