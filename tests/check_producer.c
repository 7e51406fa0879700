/*
 * The producer: inbox events become tasks through eav.inbox_ingest,
 * woken by NOTIFY; malformed events are rejected and audited without a
 * trace of a task or an event key; (source, event_key) dedupes; and a
 * producer killed just before its COMMIT neither loses an event nor
 * creates its task twice.  The database is the verdict every time.
 */
#include <sys/wait.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define GOOD_BODY	"{\"queue\": \"default\", \"kind\": \"k\", " \
			    "\"steps\": [{\"tool\": \"noop\"}]}"
#define INJECT_SPEC	"producer.after_task_before_ack=crash,count=1"

/* The producer's configuration: NOTIFY, not polling, must wake it. */
#define EAVD_CONF	"[supervisor]\nworkers = 2\n[producer]\n" \
			    "poll_interval = 1h\n"

static const struct {
	const char	*type;
	const char	*body;		/* NULL: larger than max_event_bytes */
	const char	*reason;
} bad[] = {
	{ "task", "{\"queue\": \"default\", \"kind\": ", "is not valid JSON" },
	{ "invoice", GOOD_BODY, "no route for event type \"invoice\"" },
	{ "task", "{\"queue\": \"default\", \"kind\": \"k\", \"steps\": "
	    "[{\"tool\": \"noop\"}], \"priority\": 1}",
	    "unknown field \"priority\"" },
	{ "task", "{\"kind\": \"k\", \"steps\": [{\"tool\": \"nosuch\"}]}",
	    "step 1: unknown tool \"nosuch\"" },
	{ "task", NULL, "more than the limit of 1048576 bytes" },
	{ "task", "[" GOOD_BODY "]", "must be a JSON object" },
};

static char	*big_body(void);
static void	 start_eavd(struct th_eavd *, struct th_db *);
static void	 stop_eavd(struct th_eavd *);
static void	 assert_rejected(PGconn *, const char *, const char *);
static void	 assert_one_task_each(PGconn *, const char *);
static int	 producer_crashes(PGconn *);
static pid_t	 producer_pid(PGconn *, pid_t);

/*
 * A body that would be a valid task but for its size: one byte over the
 * default max_event_bytes.  Caller frees.
 */
static char *
big_body(void)
{
	const char	*head = "{\"kind\": \"k\", \"steps\": [{\"tool\": "
			    "\"noop\", \"input\": {\"pad\": \"";
	const char	*tail = "\"}}]}";
	size_t		 total = 1048577, pad;
	char		*b;

	pad = total - strlen(head) - strlen(tail);
	b = malloc(total + 1);
	ck_assert_ptr_nonnull(b);
	memcpy(b, head, strlen(head));
	memset(b + strlen(head), 'x', pad);
	memcpy(b + strlen(head) + pad, tail, strlen(tail) + 1);
	ck_assert_uint_eq(strlen(b), total);
	return b;
}

/* Starts eavd on db and waits until its children are up. */
static void
start_eavd(struct th_eavd *e, struct th_db *db)
{
	th_eavd_start(e);
	ck_assert_msg(th_eavd_wait_up(e, db->conn, 2, 60000),
	    "eavd did not come up; see %s", e->log);
}

/* Stops eavd with SIGTERM; checks it exited cleanly, sanitizers quiet. */
static void
stop_eavd(struct th_eavd *e)
{
	int	status;

	status = th_eavd_stop(e, SIGTERM, 20000);
	ck_assert_msg(status != -1 && WIFEXITED(status) &&
	    WEXITSTATUS(status) == 0, "eavd stop status %d; see %s", status,
	    e->log);
	ck_assert_msg(!th_log_contains(e, "Sanitizer") &&
	    !th_log_contains(e, "runtime error"), "sanitizer report in %s",
	    e->log);
}

/*
 * Checks that event id was rejected for reason, audited as such, and
 * left neither a task nor an event key behind.
 */
static void
assert_rejected(PGconn *c, const char *id, const char *reason)
{
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND state = 'rejected' AND task_id IS NULL AND "
	    "processed_at IS NOT NULL AND strpos(error, $2) > 0", 2, id,
	    reason), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.ingested' AND outcome = 'failure' AND "
	    "payload->>'event_id' = $1 AND strpos(payload->>'error', $2) > 0 "
	    "AND task_id IS NULL", 2, id, reason), 1);
	/* Its arrival is audited once; nothing after it succeeded. */
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE payload->>'event_id' = $1 AND type = 'event.received'", 1,
	    id), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE payload->>'event_id' = $1 AND outcome <> 'failure' "
	    "AND type <> 'event.received'", 1, id), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.tasks WHERE "
	    "event_id = $1::bigint", 1, id), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.event_keys WHERE "
	    "event_id = $1::bigint", 1, id), 0);
}

/*
 * Checks that each of the n inbox events was accepted once, into one
 * task of its own that succeeded, with one event.ingested row.
 */
static void
assert_one_task_each(PGconn *c, const char *n)
{
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'accepted'", 0), atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox", 0),
	    atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.tasks", 0),
	    atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id AND t.event_id = i.id WHERE "
	    "t.state = 'succeeded'", 0), atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(DISTINCT event_id) FROM "
	    "eav.tasks", 0), atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.ingested' AND outcome = 'success'", 0),
	    atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(DISTINCT payload->>'event_id')"
	    " FROM eav.audit_events WHERE type = 'event.ingested'", 0),
	    atoi(n));
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.event_keys k "
	    "JOIN eav.inbox i ON i.id = k.event_id AND i.task_id = k.task_id",
	    0), atoi(n));
}

/* How many times eavd has seen its producer die of SIGKILL. */
static int
producer_crashes(PGconn *c)
{
	return (int)th_ll(c, "SELECT count(*) FROM eav.audit_events WHERE "
	    "type = 'process.exited' AND payload->>'kind' = 'producer' AND "
	    "payload->>'detail' LIKE '%signal 9%'", 0);
}

/*
 * The up producer's pid, once it is not old (the one just killed): eavd
 * restarts it after its back-off.  Fails the test past the deadline.
 */
static pid_t
producer_pid(PGconn *c, pid_t old)
{
	long long	deadline = th_now_ms() + 30000;
	long long	pid;

	for (;;) {
		pid = th_ll(c, "SELECT coalesce(max(pid), 0) FROM "
		    "eav.proj_processes WHERE kind = 'producer' AND "
		    "state = 'up' AND pid IS NOT NULL", 0);
		if (pid != 0 && pid != old && kill((pid_t)pid, 0) == 0)
			return (pid_t)pid;
		ck_assert_msg(th_now_ms() < deadline, "no producer came up "
		    "after pid %d was killed", (int)old);
		th_pause_ms(2);
	}
}

/* Events inserted by SQL wake the producer and become tasks. */
START_TEST(test_notify_path)
{
	struct th_db	db;
	struct th_eavd	e;

	th_db_new(&db);
	th_eavd_conf(&e, &db, EAVD_CONF);
	start_eavd(&e, &db);
	PQclear(th_exec(db.conn, "INSERT INTO eav.inbox (source, event_key, "
	    "type, body) SELECT 'sql', 'key-' || i, 'task', $1 FROM "
	    "generate_series(1, 25) i", 1, GOOD_BODY));
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = 25 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0),
	    "events did not become succeeded tasks; see %s", e.log);
	assert_one_task_each(db.conn, "25");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "kind = 'k' AND queue = 'default' AND created_by LIKE "
	    "'producer:%'", 0), 25);
	stop_eavd(&e);
	th_db_free(&db);
}
END_TEST

/* Each kind of malformed event is rejected; its neighbour is not. */
/* FM-015 */
START_TEST(test_malformed_rejected)
{
	struct th_db	 db;
	char		*body, *id, *good, *again;

	th_db_new(&db);
	body = bad[_i].body ? strdup(bad[_i].body) : big_body();
	id = th_str(db.conn, "SELECT eav.event_submit('bad', 'k1', $1, "
	    "$2)::text", 2, bad[_i].type, body);
	good = th_str(db.conn, "SELECT eav.event_submit('good', 'k1', 'task', "
	    "$1)::text", 1, GOOD_BODY);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(100, 'producer:test') WHERE (state, error IS "
	    "NULL) IN (('rejected', false), ('accepted', true))", 0), 2);
	assert_rejected(db.conn, id, bad[_i].reason);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks t "
	    "JOIN eav.inbox i ON i.task_id = t.id AND t.event_id = i.id "
	    "WHERE i.id = $1::bigint AND i.state = 'accepted'", 1, good), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.event_keys",
	    0), 1);
	/* The key of a rejected event is free: a corrected one gets in. */
	again = th_str(db.conn, "SELECT eav.event_submit('bad', 'k1', 'task', "
	    "$1)::text", 1, GOOD_BODY);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(100, 'producer:test') WHERE state = 'accepted' "
	    "AND event_id = $1::bigint", 1, again), 1);
	free(again);
	free(good);
	free(id);
	free(body);
	th_db_free(&db);
}
END_TEST

/* A running producer rejects a malformed event and accepts the next. */
/* FM-015 */
START_TEST(test_malformed_via_eavd)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*id, *good;

	th_db_new(&db);
	th_eavd_conf(&e, &db, EAVD_CONF);
	start_eavd(&e, &db);
	id = th_str(db.conn, "SELECT eav.event_submit('sql', 'bad', 'task', "
	    "'{\"kind\": \"k\", \"steps\": [{\"tool\": \"noop\"}], "
	    "\"when\": 1}')::text", 0);
	good = th_str(db.conn, "SELECT eav.event_submit('sql', 'good', "
	    "'task', $1)::text", 1, GOOD_BODY);
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = 1 FROM "
	    "eav.tasks WHERE state = 'succeeded' AND event_id = $1::bigint",
	    1, good), "the good event did not succeed; see %s", e.log);
	assert_rejected(db.conn, id, "unknown field \"when\"");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'event.ingested' AND outcome = "
	    "'failure' AND actor LIKE 'producer:%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    1);
	stop_eavd(&e);
	free(good);
	free(id);
	th_db_free(&db);
}
END_TEST

/* The same (source, event_key) makes one task; another source does not. */
/* FM-016 */
START_TEST(test_dedupe)
{
	struct th_db	 db;
	char		*first, *dup, *other, *later, *t1, *t2;

	th_db_new(&db);
	first = th_str(db.conn, "SELECT eav.event_submit('a', 'k1', 'task', "
	    "$1)::text", 1, GOOD_BODY);
	dup = th_str(db.conn, "SELECT eav.event_submit('a', 'k1', 'task', "
	    "$1)::text", 1, GOOD_BODY);
	other = th_str(db.conn, "SELECT eav.event_submit('b', 'k1', 'task', "
	    "$1)::text", 1, GOOD_BODY);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(10, 'producer:test')", 0), 3);
	/* A duplicate arriving in a later batch is caught as well. */
	later = th_str(db.conn, "SELECT eav.event_submit('a', 'k1', 'task', "
	    "$1)::text", 1, GOOD_BODY);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(10, 'producer:test') WHERE state = 'deduped'",
	    0), 1);
	t1 = th_str(db.conn, "SELECT task_id::text FROM eav.inbox WHERE id = "
	    "$1::bigint AND state = 'accepted'", 1, first);
	t2 = th_str(db.conn, "SELECT task_id::text FROM eav.inbox WHERE id = "
	    "$1::bigint AND state = 'accepted'", 1, other);
	ck_assert_ptr_nonnull(t1);
	ck_assert_ptr_nonnull(t2);
	ck_assert_str_ne(t1, t2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id IN ($1::bigint, $2::bigint) AND state = 'deduped' AND "
	    "task_id = $3::bigint", 3, dup, later, t1), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'event.deduped' AND task_id = "
	    "$1::bigint AND payload->>'event_id' IN ($2, $3) AND "
	    "payload->>'source' = 'a' AND payload->>'event_key' = 'k1'", 3,
	    t1, dup, later), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.event_keys",
	    0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.event_keys "
	    "WHERE source = 'a' AND event_key = 'k1' AND event_id = $1::bigint "
	    "AND task_id = $2::bigint", 2, first, t1), 1);
	free(t1);
	free(t2);
	free(first);
	free(dup);
	free(other);
	free(later);
	th_db_free(&db);
}
END_TEST

/*
 * A producer SIGKILLed right before its COMMIT: while the point is armed
 * (every new producer process re-arms it) nothing commits; once eavd runs
 * without it, every event becomes exactly one task.  Events ingested
 * before the crash phase must not be taken again.
 */
/* FM-017 */
START_TEST(test_crash_before_ack)
{
	struct th_db	db;
	struct th_eavd	e;

	th_db_new(&db);
	th_eavd_conf(&e, &db, EAVD_CONF);
	unsetenv("EAV_INJECT");
	start_eavd(&e, &db);
	PQclear(th_exec(db.conn, "INSERT INTO eav.inbox (source, event_key, "
	    "type, body) SELECT 'sql', 'key-' || i, 'task', $1 FROM "
	    "generate_series(1, 50) i", 1, GOOD_BODY));
	ck_assert(th_wait(db.conn, 60000, "SELECT count(*) = 50 FROM "
	    "eav.inbox WHERE state = 'accepted'", 0));
	stop_eavd(&e);

	setenv("EAV_INJECT", INJECT_SPEC, 1);
	start_eavd(&e, &db);
	PQclear(th_exec(db.conn, "INSERT INTO eav.inbox (source, event_key, "
	    "type, body) SELECT 'sql', 'key-' || i, 'task', $1 FROM "
	    "generate_series(51, 200) i", 1, GOOD_BODY));
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) > 0 FROM "
	    "eav.audit_events WHERE type = 'process.exited' AND "
	    "payload->>'kind' = 'producer' AND payload->>'detail' LIKE "
	    "'%signal 9%'", 0), "the producer was not killed; see %s", e.log);
	stop_eavd(&e);
	ck_assert(th_log_contains(&e, "injection point "
	    "producer.after_task_before_ack fired"));
	ck_assert_int_ge(producer_crashes(db.conn), 1);
	/* Every armed producer died before its COMMIT: nothing got in. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state <> 'new'", 0), 50);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    50);

	unsetenv("EAV_INJECT");
	start_eavd(&e, &db);
	ck_assert_msg(th_wait(db.conn, 90000, "SELECT count(*) = 200 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0),
	    "events were lost after the crash; see %s", e.log);
	stop_eavd(&e);
	assert_one_task_each(db.conn, "200");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.deduped'", 0), 0);
	th_db_free(&db);
}
END_TEST

/*
 * The producer SIGKILLed 100 times at random points while it ingests
 * (batches of 10, events arriving all along): every event becomes
 * exactly one task, none is lost, none is deduped against itself.
 */
/* FM-017 */
START_TEST(test_kill_100)
{
	struct th_db	db;
	struct th_eavd	e;
	pid_t		pid = 0;
	char		from[16], to[16];
	int		k, n = 0;

	th_db_new(&db);
	th_eavd_conf(&e, &db, EAVD_CONF "batch_size = 10\n[supervisor]\n"
	    "restart_backoff_min = 1ms\nrestart_backoff_max = 10ms\n"
	    "restart_intensity = 0\n");
	unsetenv("EAV_INJECT");
	start_eavd(&e, &db);
	srandom(17);
	for (k = 0; k < 100; k++) {
		snprintf(from, sizeof(from), "%d", n + 1);
		snprintf(to, sizeof(to), "%d", n += 40);
		PQclear(th_exec(db.conn, "INSERT INTO eav.inbox (source, "
		    "event_key, type, body) SELECT 'sql', 'key-' || i, 'task', "
		    "$1 FROM generate_series($2::int, $3::int) i", 3,
		    GOOD_BODY, from, to));
		pid = producer_pid(db.conn, pid);
		/* Mid-batch, mostly: the ingest is under way by then. */
		th_pause_ms(random() % 8);
		ck_assert_int_eq(kill(pid, SIGKILL), 0);
	}
	snprintf(to, sizeof(to), "%d", n);
	ck_assert_msg(th_wait(db.conn, 120000, "SELECT count(*) = $1::int FROM "
	    "eav.tasks WHERE state = 'succeeded'", 1, to),
	    "events were lost or doubled after 100 kills; see %s", e.log);
	ck_assert_int_ge(producer_crashes(db.conn), 100);
	stop_eavd(&e);
	assert_one_task_each(db.conn, to);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.deduped'", 0), 0);
	th_db_free(&db);
}
END_TEST

Suite *
suite_producer(void)
{
	Suite	*s = suite_create("producer");
	TCase	*tc = tcase_create("producer");
	TCase	*live = tcase_create("producer-eavd");

	tcase_add_loop_test(tc, test_malformed_rejected, 0,
	    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_dedupe);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	tcase_add_test(live, test_notify_path);
	tcase_add_test(live, test_malformed_via_eavd);
	tcase_add_test(live, test_crash_before_ack);
	tcase_add_test(live, test_kill_100);
	tcase_set_timeout(live, 240);
	suite_add_tcase(s, live);
	return s;
}
