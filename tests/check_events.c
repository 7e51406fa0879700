/*
 * Events: types and their schemas (each kind of malformed event rejected
 * with its reason, nothing stored), bad type and rule definitions
 * refused, the dedupe window (past it a new task; two producers claim a
 * key once), routing rules and the clarification task, the classifier
 * hook (garbage answers fall back, leases are taken again), the storm
 * gate (held events released or dropped), a rule that triggers itself
 * stopped by the gate and by the recursion limit, and eavctl.  Steps are
 * claimed and completed through SQL as a worker would, so every loop is
 * driven round by round, never waited for.
 */
#include <sys/wait.h>

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define ORDER_SCHEMA	"{\"type\": \"object\", \"required\": [\"id\", " \
	"\"amount\"], \"additionalProperties\": false, \"properties\": {" \
	"\"id\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 8}, " \
	"\"amount\": {\"type\": \"number\", \"minimum\": 0}, " \
	"\"qty\": {\"type\": \"integer\"}, " \
	"\"tier\": {\"type\": \"string\", \"enum\": [\"gold\", \"basic\"]}, " \
	"\"tags\": {\"type\": \"array\", \"maxItems\": 2, \"items\": " \
	"{\"type\": \"string\"}}, " \
	"\"customer\": {\"type\": \"object\", \"required\": [\"vip\"], " \
	"\"properties\": {\"vip\": {\"type\": \"boolean\"}}}}}"
#define GOLD_TEMPLATE	"{\"queue\": \"default\", \"kind\": \"$.tier\", " \
	"\"steps\": [{\"tool\": \"noop\", \"input\": {\"order\": \"$.id\", " \
	"\"amount\": \"$.amount\"}}]}"
#define NOOP_TEMPLATE	"{\"kind\": \"k\", \"steps\": [{\"tool\": \"noop\"}]}"
#define PING_TEMPLATE	"{\"kind\": \"echo\", \"steps\": [{\"tool\": " \
	"\"noop\", \"input\": {\"n\": \"$.n\"}}]}"

/* Bodies of type order.created (sources shop, max 300 bytes) rejected. */
static const struct {
	const char	*source;
	const char	*type;
	const char	*body;		/* NULL: 301 bytes */
	const char	*reason;
} bad_events[] = {
	{ "shop", "order.created", "{\"id\": \"a1\", ", "is not valid JSON" },
	{ "shop", "order.created", "{\"id\": 7, \"amount\": 1}",
	    "field \"id\" must be a string, not number" },
	{ "shop", "order.created", "{\"id\": \"a1\"}",
	    "event body: required field \"amount\" is missing" },
	{ "shop", "order.created", NULL,
	    "more than the limit of 300 bytes" },
	{ "shop", "nosuch.type", "{}", "no route for event type "
	    "\"nosuch.type\"" },
	{ "mallory", "order.created", "{\"id\": \"a1\", \"amount\": 1}",
	    "source \"mallory\" may not send events of type "
	    "\"order.created\"" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"tier\": \"silver\"}", "field \"tier\" is \"silver\", not one "
	    "of" },
	{ "shop", "order.created", "{\"id\": \"a123456789\", \"amount\": 1}",
	    "field \"id\" is 10 characters long" },
	{ "shop", "order.created", "[1]", "event body must be a JSON object" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"coupon\": 1}", "unknown field \"coupon\" in event body" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"qty\": 1.5}", "field \"qty\" must be an integer, not a "
	    "fraction" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": -1}",
	    "field \"amount\" is -1, outside minimum 0" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"tags\": [\"x\", 2]}", "field \"tags[1]\" must be a string" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"tags\": [\"x\", \"y\", \"z\"]}", "more than maxItems 2" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"customer\": {}}", "field \"customer\": required field \"vip\"" },
	{ "shop", "order.created", "{\"id\": \"a1\", \"amount\": 1, "
	    "\"customer\": {\"vip\": \"yes\"}}",
	    "field \"customer.vip\" must be a boolean, not string" },
};

/* Event type definitions eav.event_type_set refuses. */
static const struct {
	const char	*name;
	const char	*schema;
	const char	*max_bytes;
	const char	*window;
	const char	*reason;
} bad_types[] = {
	{ "t", "{\"type\": \"string\"}", NULL, NULL,
	    "an event body is an object" },
	{ "t", "[]", NULL, NULL, "schema: must be a JSON object" },
	{ "t", "{\"type\": \"object\", \"pattern\": \"x\"}", NULL, NULL,
	    "unknown keyword \"pattern\"" },
	{ "t", "{\"type\": \"thing\"}", NULL, NULL, "\"type\" must be string" },
	{ "t", "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": "
	    "\"number\", \"maxLength\": 3}}}", NULL, NULL,
	    "schema of field \"a\": minLength and maxLength apply to strings" },
	{ "t", "{\"type\": \"object\", \"required\": [\"b\"], "
	    "\"additionalProperties\": false, \"properties\": {}}", NULL, NULL,
	    "required field \"b\" is not among the properties" },
	{ "t", "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": "
	    "\"string\", \"enum\": []}}}", NULL, NULL,
	    "\"enum\" must be an array of 1 to 100 values" },
	{ "t", "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": "
	    "\"string\", \"maxLength\": -1}}}", NULL, NULL,
	    "\"maxLength\" must be an integer" },
	{ "t", "{\"type\": \"object\"}", "0", NULL,
	    "max_bytes must be between 2 and max_event_bytes" },
	{ "t", "{\"type\": \"object\"}", NULL, "-5",
	    "dedupe_window_s must be between 0" },
	{ "bad name", "{\"type\": \"object\"}", NULL, NULL,
	    "an event type name is" },
	{ "task", "{\"type\": \"object\"}", NULL, NULL,
	    "event type \"task\" is built in" },
};

/* Rule definitions eav.rule_add refuses (type order.created exists). */
static const struct {
	const char	*name;
	const char	*type;
	const char	*predicates;
	const char	*tmpl;
	const char	*max_per_minute;
	const char	*reason;
} bad_rules[] = {
	{ "r", "nosuch", "[]", NOOP_TEMPLATE, "60", "unknown event type" },
	{ "r", "task", "[]", NOOP_TEMPLATE, "60", "carry their task" },
	{ "r", "order.created", "{}", NOOP_TEMPLATE, "60",
	    "predicates must be an array" },
	{ "r", "order.created", "[{\"field\": \"tier\", \"op\": \"eq\", "
	    "\"value\": 1}]", NOOP_TEMPLATE, "60",
	    "predicate 1: field must be a reference like \"$.a.b\"" },
	{ "r", "order.created", "[{\"field\": \"$.tier\", \"op\": \"like\", "
	    "\"value\": 1}]", NOOP_TEMPLATE, "60",
	    "predicate 1: op must be eq, ne, in, exists" },
	{ "r", "order.created", "[{\"field\": \"$.tier\", \"op\": \"in\", "
	    "\"value\": \"gold\"}]", NOOP_TEMPLATE, "60",
	    "op in needs a value that is an array" },
	{ "r", "order.created", "[{\"field\": \"$.amount\", \"op\": \"gt\", "
	    "\"value\": \"5\"}]", NOOP_TEMPLATE, "60",
	    "op gt needs a value that is a number" },
	{ "r", "order.created", "[{\"field\": \"$.a\", \"op\": \"eq\", "
	    "\"value\": 1, \"x\": 2}]", NOOP_TEMPLATE, "60",
	    "predicate 1: unknown field \"x\"" },
	{ "r", "order.created", "[]", "{\"kind\": \"k\", \"steps\": "
	    "[{\"tool\": \"nosuch\"}]}", "60",
	    "task template: step 1: unknown tool \"nosuch\"" },
	{ "r", "order.created", "[]", "{\"queue\": \"nosuch\", \"kind\": "
	    "\"k\", "
	    "\"steps\": [{\"tool\": \"noop\"}]}", "60",
	    "task template: unknown queue \"nosuch\"" },
	{ "r", "order.created", "[]", "{\"kind\": \"k\", \"steps\": "
	    "[{\"tool\": \"$.tool\"}]}", "60",
	    "may stand only in kind or a step's input" },
	{ "r", "order.created", "[]", "{\"kind\": \"k\", \"steps\": "
	    "[{\"tool\": \"noop\", \"input\": {\"a\": \"$.nosuch\"}}]}", "60",
	    "\"$.nosuch\" is not a field of event type \"order.created\"" },
	{ "r", "order.created", "[]", "{\"kind\": \"k\", \"steps\": [], "
	    "\"when\": 1}", "60", "task template: unknown field \"when\"" },
	{ "r", "order.created", "[]", "{\"kind\": \"k\", \"steps\": "
	    "[{\"tool\": \"noop\", \"idempotency_key\": \"x\"}]}", "60",
	    "steps carry no idempotency_key" },
	{ "r", "order.created", "[]", NOOP_TEMPLATE, "0",
	    "max_per_minute must be between 1" },
	{ "bad name", "order.created", "[]", NOOP_TEMPLATE, "60",
	    "a rule name is" },
};

/* Classifier answers that fall back to a clarification task. */
static const struct {
	const char	*output;	/* NULL: 70000 bytes of JSON */
	const char	*error;
	const char	*reason;
} bad_answers[] = {
	{ "route: gold", NULL, "classifier output is not JSON" },
	{ "{\"route\": \"nosuch\"}", NULL,
	    "classifier named an unknown route \"nosuch\"" },
	{ "{\"route\": \"other-type\"}", NULL,
	    "classifier named an unknown route \"other-type\"" },
	{ NULL, NULL, "more than the limit of 65536 bytes" },
	{ "[\"gold\"]", NULL, "classifier output must be {\"route\"" },
	{ "{\"route\": 7}", NULL, "classifier output must be {\"route\"" },
	{ "", NULL, "classifier output is not JSON" },
	{ NULL, "timed out after 5000 ms", "classifier failed: timed out" },
	{ "{\"route\": \"gold\"}", "exit status 3",
	    "classifier failed: exit status 3" },
};

static void	 setup_orders(PGconn *);
static char	*submit(PGconn *, const char *, const char *, const char *,
		    const char *);
static long long ingest(PGconn *, int);
static char	*oversize(size_t);
static void	 assert_rejected(PGconn *, const char *, const char *);
static void	 assert_clarified(PGconn *, const char *, const char *,
		    const char *);
static int	 complete_emitting(PGconn *);
static int	 ctl(const char *, const char *, ...);

/* Type order.created (from shop, 300 bytes, window 60 s) and rule gold. */
static void
setup_orders(PGconn *c)
{
	PQclear(th_exec(c, "SELECT eav.event_type_set('order.created', "
	    "$1::jsonb, '{shop}', 300, 60, 'orders', 'operator:test')", 1,
	    ORDER_SCHEMA));
	PQclear(th_exec(c, "SELECT eav.rule_add('gold', 'order.created', "
	    "'shop', '[{\"field\": \"$.tier\", \"op\": \"eq\", \"value\": "
	    "\"gold\"}]', $1::jsonb, 10, 0, 60, 'operator:test')", 1,
	    GOLD_TEMPLATE));
}

/* Submits an event; returns its id (caller frees). */
static char *
submit(PGconn *c, const char *source, const char *key, const char *type,
    const char *body)
{
	return th_str(c, "SELECT eav.event_submit($1, $2, $3, $4, "
	    "'operator:test')::text", 4, source, key, type, body);
}

/* One producer batch; returns the events it handled. */
static long long
ingest(PGconn *c, int classify)
{
	return th_ll(c, "SELECT count(*) FROM eav.inbox_ingest(100, "
	    "'producer:test', $1::boolean)", 1, classify ? "true" : "false");
}

/* A JSON object of n bytes (caller frees). */
static char *
oversize(size_t n)
{
	char	*b = malloc(n + 1);

	ck_assert_ptr_nonnull(b);
	memset(b, 'x', n);
	memcpy(b, "{\"id\": \"", 8);
	memcpy(b + n - 2, "\"}", 3);
	return b;
}

/* Event id was rejected for reason, audited, and left nothing behind. */
static void
assert_rejected(PGconn *c, const char *id, const char *reason)
{
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox WHERE id = "
	    "$1::bigint AND state = 'rejected' AND task_id IS NULL AND "
	    "strpos(error, $2) > 0", 2, id, reason), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.ingested' AND outcome = 'failure' AND "
	    "payload->>'event_id' = $1 AND strpos(payload->>'error', $2) > 0",
	    2, id, reason), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.tasks WHERE "
	    "event_id = $1::bigint", 1, id), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.event_keys WHERE "
	    "event_id = $1::bigint", 1, id), 0);
}

/*
 * Event id is unrouted: one clarification task in queue review whose step
 * waits for an approval, audited audit with the reason.
 */
static void
assert_clarified(PGconn *c, const char *id, const char *audit,
    const char *reason)
{
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id AND t.event_id = i.id JOIN "
	    "eav.steps s ON s.task_id = t.id JOIN eav.approvals a ON "
	    "a.step_id = s.id AND a.state = 'open' WHERE i.id = $1::bigint AND "
	    "i.state = 'unrouted' AND strpos(i.error, $2) > 0 AND t.queue = "
	    "'review' AND t.kind = 'event.clarify' AND s.state = "
	    "'waiting_approval' AND s.input->>'event_id' = $1::text AND "
	    "strpos(s.input->>'reason', $2) > 0", 2, id, reason), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = $2 AND payload->>'event_id' = $1::text AND "
	    "strpos(payload->>'reason', $3) > 0 AND task_id = (SELECT task_id "
	    "FROM eav.inbox WHERE id = $1::bigint)", 3, id, audit, reason), 1);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.tasks WHERE "
	    "event_id = $1::bigint", 1, id), 1);
}

/*
 * Claims every runnable step as worker n1 and completes it succeeded with
 * a result that emits one ping event (source loop, a key of the step);
 * returns how many.
 */
static int
complete_emitting(PGconn *c)
{
	char	*batch;
	int	 n;

	batch = th_str(c, "SELECT coalesce(jsonb_agg(jsonb_build_object("
	    "'id', c.step_id, 'epoch', c.claim_epoch, 'outcome', 'succeeded', "
	    "'result', jsonb_build_object('emit', jsonb_build_array("
	    "jsonb_build_object('source', 'loop', 'type', 'ping', 'event_key', "
	    "'p-' || c.step_id, 'body', jsonb_build_object('n', "
	    "c.step_id)))))),"
	    " '[]')::text FROM eav.claim('n1', 1, 7, 100) c", 0);
	n = (int)th_ll(c, "SELECT jsonb_array_length($1::jsonb)", 1, batch);
	PQclear(th_exec(c, "SELECT * FROM eav.complete_batch('w', $1::jsonb)",
	    1, batch));
	free(batch);
	return n;
}

/* Runs eavctl -d dsn args... (NULL-terminated); returns its exit code. */
static int
ctl(const char *dsn, const char *out, ...)
{
	char	*argv[24];
	va_list	 ap;
	int	 n = 0, st;

	argv[n++] = th_bin("eavctl");
	argv[n++] = "-d";
	argv[n++] = (char *)(uintptr_t)dsn;
	va_start(ap, out);
	while (n < 23 && (argv[n] = va_arg(ap, char *)) != NULL)
		n++;
	va_end(ap);
	argv[n] = NULL;
	st = th_run(argv, out);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Each malformed event: rejected with its reason; its neighbour is not. */
/* FM-087 */
START_TEST(test_bad_events)
{
	struct th_db	 db;
	char		*body, *id, *good;

	th_db_new(&db);
	setup_orders(db.conn);
	body = bad_events[_i].body ? strdup(bad_events[_i].body) :
	    oversize(301);
	id = submit(db.conn, bad_events[_i].source, "k1", bad_events[_i].type,
	    body);
	good = submit(db.conn, "shop", "k2", "order.created",
	    "{\"id\": \"a2\", \"amount\": 2, \"tier\": \"gold\"}");
	ck_assert_int_eq(ingest(db.conn, 0), 2);
	assert_rejected(db.conn, id, bad_events[_i].reason);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id WHERE i.id = $1::bigint AND "
	    "i.state = 'accepted'", 1, good), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    1);
	free(good);
	free(id);
	free(body);
	th_db_free(&db);
}
END_TEST

/* Each bad event type: 22023 (54000 for size) naming why, nothing stored. */
/* FM-088 */
START_TEST(test_bad_types)
{
	struct th_db	 db;
	const char	*err;

	th_db_new(&db);
	err = th_err(db.conn, "SELECT eav.event_type_set($1, $2::jsonb, NULL, "
	    "$3::integer, $4::integer, '', 'operator:test')", 4,
	    bad_types[_i].name, bad_types[_i].schema, bad_types[_i].max_bytes,
	    bad_types[_i].window);
	ck_assert_msg(strncmp(err, "22023: ", 7) == 0 &&
	    strstr(err, bad_types[_i].reason) != NULL, "case %d: got %s", _i,
	    err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.event_types",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type LIKE 'event_type.%'", 0), 0);
	th_db_free(&db);
}
END_TEST

/* Each bad rule: 22023 naming why, nothing stored. */
/* FM-088 */
START_TEST(test_bad_rules)
{
	struct th_db	 db;
	const char	*err;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('order.created', "
	    "$1::jsonb)", 1, ORDER_SCHEMA));
	err = th_err(db.conn, "SELECT eav.rule_add($1, $2, NULL, $3::jsonb, "
	    "$4::jsonb, 100, 0, $5::integer, 'operator:test')", 5,
	    bad_rules[_i].name, bad_rules[_i].type, bad_rules[_i].predicates,
	    bad_rules[_i].tmpl, bad_rules[_i].max_per_minute);
	ck_assert_msg(strncmp(err, "22023: ", 7) == 0 &&
	    strstr(err, bad_rules[_i].reason) != NULL, "case %d: got %s", _i,
	    err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.rules", 0),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type LIKE 'rule.%' OR type LIKE 'task.%'", 0), 0);
	th_db_free(&db);
}
END_TEST

/*
 * Within the window a key is deduped; past it (first_seen moved back, the
 * test user may) a new task is made; window 0 dedupes forever.
 */
/* FM-089 */
START_TEST(test_dedupe_window)
{
	struct th_db	 db;
	char		*a, *b, *c, *d;
	const char	*gold = "{\"id\": \"a1\", \"amount\": 1, \"tier\": "
			    "\"gold\"}";

	th_db_new(&db);
	setup_orders(db.conn);
	a = submit(db.conn, "shop", "k1", "order.created", gold);
	b = submit(db.conn, "shop", "k1", "order.created", gold);
	ck_assert_int_eq(ingest(db.conn, 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox b JOIN "
	    "eav.inbox a ON a.id = $1::bigint AND a.state = 'accepted' WHERE "
	    "b.id = $2::bigint AND b.state = 'deduped' AND b.task_id = "
	    "a.task_id", 2, a, b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.deduped' AND payload->>'event_id' = $1", 1, b),
	    1);
	PQclear(th_exec(db.conn, "UPDATE eav.event_keys SET first_seen = "
	    "first_seen - interval '61 seconds'", 0));
	c = submit(db.conn, "shop", "k1", "order.created", gold);
	ck_assert_int_eq(ingest(db.conn, 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND state = 'accepted' AND task_id <> (SELECT "
	    "task_id FROM eav.inbox WHERE id = $2::bigint)", 2, c, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.event_keys "
	    "WHERE event_id = $1::bigint AND task_id IS NOT NULL", 1, c), 1);
	/* Window 0: forever. */
	PQclear(th_exec(db.conn, "UPDATE eav.event_types SET dedupe_window_s "
	    "= 0 WHERE name = 'order.created'", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.event_keys SET first_seen = "
	    "first_seen - interval '3650 days'", 0));
	d = submit(db.conn, "shop", "k1", "order.created", gold);
	ck_assert_int_eq(ingest(db.conn, 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND state = 'deduped'", 1, d), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    2);
	free(a);
	free(b);
	free(c);
	free(d);
	th_db_free(&db);
}
END_TEST

/*
 * Two producers, one key past its window: the first holds the claim until
 * it commits; the second waits for it and dedupes.  Exactly one task.
 */
/* FM-089 */
START_TEST(test_dedupe_two_producers)
{
	struct th_db	 db;
	PGconn		*p2, *p3;
	PGresult	*res;
	char		*old, *e1, *e2;
	const char	*gold = "{\"id\": \"a1\", \"amount\": 1, \"tier\": "
			    "\"gold\"}";

	th_db_new(&db);
	setup_orders(db.conn);
	old = submit(db.conn, "shop", "k1", "order.created", gold);
	ck_assert_int_eq(ingest(db.conn, 0), 1);
	PQclear(th_exec(db.conn, "UPDATE eav.event_keys SET first_seen = "
	    "first_seen - interval '61 seconds'", 0));
	e1 = submit(db.conn, "shop", "k1", "order.created", gold);
	e2 = submit(db.conn, "shop", "k1", "order.created", gold);
	p2 = th_connect(db.dsn);
	PQclear(th_exec(db.conn, "BEGIN", 0));
	/* Producer 1 takes e1 only (limit 1) and holds the key's row lock. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(1, 'producer:one') WHERE state = 'accepted'", 0),
	    1);
	ck_assert_int_eq(PQsendQueryParams(p2, "SELECT state FROM "
	    "eav.inbox_ingest(10, 'producer:two')", 0, NULL, NULL, NULL, NULL,
	    0), 1);
	/* Producer 2 is blocked on the key (seen from a third session). */
	/* (pg_stat_activity is read once per transaction: a third session.) */
	p3 = th_connect(db.dsn);
	ck_assert_msg(th_wait(p3, TH_TIMEOUT_MS, "SELECT count(*) > 0 "
	    "FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query "
	    "LIKE '%producer:two%'", 0), "producer two did not wait");
	PQclear(th_exec(db.conn, "COMMIT", 0));
	res = PQgetResult(p2);
	ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	ck_assert_int_eq(PQntuples(res), 1);
	ck_assert_str_eq(PQgetvalue(res, 0, 0), "deduped");
	PQclear(res);
	while ((res = PQgetResult(p2)) != NULL)
		PQclear(res);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND state = 'deduped' AND task_id = (SELECT "
	    "task_id FROM eav.inbox WHERE id = $2::bigint)", 2, e2, e1), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    2);
	PQfinish(p3);
	PQfinish(p2);
	free(old);
	free(e1);
	free(e2);
	th_db_free(&db);
}
END_TEST

/*
 * Rules: predicates (eq, in, exists, gt), priority order, the template
 * rendered from the body; no rule: a clarification task, never lost.
 */
/* FM-090 */
START_TEST(test_routing)
{
	struct th_db	 db;
	char		*gold, *big, *vip, *none;

	th_db_new(&db);
	setup_orders(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('big', 'order.created', "
	    "NULL, '[{\"field\": \"$.amount\", \"op\": \"gt\", \"value\": "
	    "100}, "
	    "{\"field\": \"$.tier\", \"op\": \"in\", \"value\": [\"basic\", "
	    "\"gold\"]}]', '{\"kind\": \"big\", \"steps\": [{\"tool\": "
	    "\"noop\"}]}', 5)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('vip', 'order.created', "
	    "NULL, '[{\"field\": \"$.customer.vip\", \"op\": \"exists\"}]', "
	    "'{\"kind\": \"vip\", \"steps\": [{\"tool\": \"noop\", \"input\": "
	    "{\"c\": \"$.customer\"}}]}', 20)", 0));
	gold = submit(db.conn, "shop", "k1", "order.created",
	    "{\"id\": \"a1\", \"amount\": 5, \"tier\": \"gold\"}");
	big = submit(db.conn, "shop", "k2", "order.created",
	    "{\"id\": \"a2\", \"amount\": 500, \"tier\": \"gold\"}");
	vip = submit(db.conn, "shop", "k3", "order.created",
	    "{\"id\": \"a3\", \"amount\": 5, \"customer\": {\"vip\": true}}");
	none = submit(db.conn, "shop", "k4", "order.created",
	    "{\"id\": \"a4\", \"amount\": 5, \"tier\": \"basic\"}");
	ck_assert_int_eq(ingest(db.conn, 0), 4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id JOIN eav.steps s ON s.task_id = "
	    "t.id JOIN eav.rules r ON r.id = i.rule_id AND r.name = 'gold' "
	    "WHERE i.id = $1::bigint AND i.state = 'accepted' AND t.kind = "
	    "'gold' AND s.input = '{\"order\": \"a1\", \"amount\": 5}'", 1,
	    gold), 1);
	/* big (priority 5) comes before gold (10). */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id WHERE i.id = $1::bigint AND "
	    "t.kind = 'big'", 1, big), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.steps s ON s.task_id = i.task_id WHERE i.id = $1::bigint AND "
	    "s.input = '{\"c\": {\"vip\": true}}'", 1, vip), 1);
	assert_clarified(db.conn, none, "event.unrouted",
	    "no rule routes events of type order.created from shop");
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires FROM eav.rules WHERE "
	    "name = 'gold'", 0), 1);
	/* A disabled rule is not tried. */
	PQclear(th_exec(db.conn, "SELECT eav.rule_disable('big')", 0));
	free(big);
	big = submit(db.conn, "shop", "k5", "order.created",
	    "{\"id\": \"a5\", \"amount\": 500, \"tier\": \"gold\"}");
	ck_assert_int_eq(ingest(db.conn, 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id WHERE i.id = $1::bigint AND "
	    "t.kind = 'gold'", 1, big), 1);
	free(gold);
	free(big);
	free(vip);
	free(none);
	th_db_free(&db);
}
END_TEST

/* Each garbage classifier answer: a clarification task with the reason. */
/* FM-091 */
START_TEST(test_classifier_fallback)
{
	struct th_db	 db;
	char		*id, *out = NULL;

	th_db_new(&db);
	setup_orders(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('other', "
	    "'{\"type\": \"object\"}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('other-type', 'other', "
	    "NULL, '[]', $1::jsonb)", 1, NOOP_TEMPLATE));
	id = submit(db.conn, "shop", "k1", "order.created",
	    "{\"id\": \"a1\", \"amount\": 5, \"tier\": \"basic\"}");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(10, 'producer:test', true) WHERE state = "
	    "'classifying'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 5000, 'producer:test') WHERE event_id "
	    "= $1::bigint AND attempt = 1", 1, id), 1);
	if (bad_answers[_i].output == NULL && bad_answers[_i].error == NULL) {
		out = oversize(70000);
	} else if (bad_answers[_i].output != NULL)
		out = strdup(bad_answers[_i].output);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classified($1::bigint, $2, $3, 'producer:test') WHERE "
	    "state = 'unrouted'", 3, id, out, bad_answers[_i].error), 1);
	assert_clarified(db.conn, id, "classifier.fallback",
	    bad_answers[_i].reason);
	/* The answer came once: a second one is refused. */
	ck_assert(strstr(th_err(db.conn, "SELECT * FROM eav.event_classified("
	    "$1::bigint, '{\"route\": \"gold\"}', NULL, 'producer:test')", 1,
	    id), "EA003: ") != NULL);
	free(out);
	free(id);
	th_db_free(&db);
}
END_TEST

/*
 * A good answer routes; a lease its dead producer held is ended by eavd's
 * eav.reconcile_producer, or lapses, and is taken again;
 * after classifier_max_attempts leases the event falls back.
 */
/* FM-091 */
START_TEST(test_classifier_route_and_lease)
{
	struct th_db	 db;
	char		*a, *b;

	th_db_new(&db);
	setup_orders(db.conn);
	a = submit(db.conn, "shop", "k1", "order.created",
	    "{\"id\": \"a1\", \"amount\": 5, \"tier\": \"basic\"}");
	b = submit(db.conn, "shop", "k2", "order.created",
	    "{\"id\": \"a2\", \"amount\": 5, \"tier\": \"basic\"}");
	ck_assert_int_eq(ingest(db.conn, 1), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 60000, 'producer:n1/1/4242')", 0), 2);
	/* Leased: a second producer gets nothing. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 60000, 'producer:two')", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classified($1::bigint, '{\"route\": \"gold\"}', NULL, "
	    "'producer:n1/1/4242') WHERE state = 'accepted'", 1, a), 1);
	/* The gold rule's template, though its predicate does not hold. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id WHERE i.id = $1::bigint AND "
	    "t.event_id = i.id AND t.kind = 'basic'", 1, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'classifier.routed' AND payload->>'rule' = 'gold' "
	    "AND "
	    "payload->>'event_id' = $1", 1, a), 1);
	/*
	 * Its producer died: eavd, reaping it, ends its lease on b at once
	 * (0032), and another takes it.
	 */
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_producer('n1', "
	    "1, 4242)", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'classifier.lease_released' AND actor = "
	    "'supervisor:n1/1' AND payload->>'event_id' = $1", 1, b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT eav.reconcile_producer('n1', "
	    "1, 4242)", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 60000, 'producer:two') WHERE attempt "
	    "= 2", 0), 1);
	PQclear(th_exec(db.conn, "UPDATE eav.inbox SET lease_until = now() - "
	    "interval '1 second' WHERE id = $1::bigint", 1, b));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 60000, 'producer:three')", 0), 1);
	PQclear(th_exec(db.conn, "UPDATE eav.inbox SET lease_until = now() - "
	    "interval '1 second' WHERE id = $1::bigint", 1, b));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 60000, 'producer:four')", 0), 0);
	assert_clarified(db.conn, b, "classifier.fallback",
	    "the classifier did not answer in 3 attempts");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'classifier.started' AND payload->>'event_id' = $1",
	    1, b), 3);
	free(a);
	free(b);
	th_db_free(&db);
}
END_TEST

/*
 * A rule past its rate holds its events (gate.storm_block, rule_storm
 * alarm); an operator releases one (task made) and drops another; a rule
 * with a debounce holds the second of two quick events.
 */
/* FM-092, FM-045 */
START_TEST(test_storm_gate)
{
	struct th_db	 db;
	char		*h1, *h2, key[16];
	int		 i;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('hook', "
	    "'{\"type\": \"object\"}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('hooks', 'hook', NULL, "
	    "'[]', $1::jsonb, 100, 0, 3)", 1, NOOP_TEMPLATE));
	for (i = 0; i < 5; i++) {
		snprintf(key, sizeof(key), "h%d", i);
		free(submit(db.conn, "svc", key, "hook", "{}"));
	}
	ck_assert_int_eq(ingest(db.conn, 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'accepted'", 0), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'held' AND task_id IS NULL AND error LIKE 'storm gate: "
	    "rate: 3 firings this minute%'", 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'gate.storm_block' AND outcome = 'refused' AND "
	    "payload->>'rule' = 'hooks'", 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT raise_count FROM eav.alarms "
	    "WHERE type = 'rule_storm' AND subject = 'rule:hooks' AND state = "
	    "'open'", 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT held * 10 + blocks FROM "
	    "eav.proj_rules WHERE name = 'hooks'", 0), 22);
	h1 = th_str(db.conn, "SELECT min(id)::text FROM eav.inbox WHERE state "
	    "= 'held'", 0);
	h2 = th_str(db.conn, "SELECT max(id)::text FROM eav.inbox WHERE state "
	    "= 'held'", 0);
	ck_assert_int_gt(th_ll(db.conn, "SELECT eav.event_release($1::bigint, "
	    "'operator:test')", 1, h1), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id AND t.event_id = i.id WHERE i.id "
	    "= "
	    "$1::bigint AND i.state = 'accepted'", 1, h1), 1);
	ck_assert_str_eq(th_err(db.conn, "SELECT eav.event_drop($1::bigint, "
	    "'')", 1, h2), "22023: a reason (1 to 1000 characters) is "
	    "required to drop an event");
	PQclear(th_exec(db.conn, "SELECT eav.event_drop($1::bigint, 'storm "
	    "noise', 'operator:test')", 1, h2));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND state = 'dropped' AND task_id IS NULL", 1, h2),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type IN ('event.released', 'event.dropped') AND actor = "
	    "'operator:test'", 0), 2);
	ck_assert(strncmp(th_err(db.conn, "SELECT eav.event_release("
	    "$1::bigint)", 1, h1), "EA003: ", 7) == 0);
	ck_assert(strncmp(th_err(db.conn, "SELECT eav.event_drop(999999, "
	    "'x')", 0), "EA004: ", 7) == 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    4);
	/* Debounce: the second of two events in a moment is held. */
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('slow', 'hook', 'db', "
	    "'[]', $1::jsonb, 1, 60000, 100)", 1, NOOP_TEMPLATE));
	free(submit(db.conn, "db", "d1", "hook", "{}"));
	free(submit(db.conn, "db", "d2", "hook", "{}"));
	ck_assert_int_eq(ingest(db.conn, 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'db' AND state = 'held' AND error LIKE 'storm gate: "
	    "debounce%'", 0), 1);
	free(h1);
	free(h2);
	th_db_free(&db);
}
END_TEST

/*
 * A rule that triggers itself (its task emits the event it routes) is
 * stopped by its storm gate: max_per_minute tasks, then held events, one
 * trace, depth growing by one per round.
 */
/* FM-093 */
START_TEST(test_self_trigger_storm)
{
	struct th_db	 db;
	int		 round;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.node_start('n1', 'h', 1, 't')",
	    0));
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('ping', "
	    "'{\"type\": \"object\", \"properties\": {\"n\": {\"type\": "
	    "\"integer\"}}}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('echo', 'ping', NULL, "
	    "'[]', $1::jsonb, 100, 0, 5)", 1, PING_TEMPLATE));
	free(submit(db.conn, "loop", "start", "ping", "{\"n\": 0}"));
	for (round = 0; round < 10; round++) {
		ingest(db.conn, 0);
		if (complete_emitting(db.conn) == 0)
			break;
	}
	ck_assert_int_lt(round, 10);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT trace_id) FROM "
	    "eav.tasks", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT max(depth) FROM eav.tasks", 0),
	    4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks c JOIN "
	    "eav.tasks p ON p.id = c.parent_task_id AND c.depth = p.depth + 1",
	    0), 4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'held' AND depth = 5 AND parent_task_id IS NOT NULL AND "
	    "trace_id IS NOT NULL", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'rule_storm' AND subject = 'rule:echo'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.received' AND actor LIKE 'worker:n1/%'", 0),
	    5);
	th_db_free(&db);
}
END_TEST

/*
 * The same loop with a generous gate is stopped by the recursion limit:
 * the queue's max_depth refuses the child (loop.blocked, event refused).
 */
/* FM-093 */
START_TEST(test_self_trigger_depth)
{
	struct th_db	 db;
	int		 round;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.node_start('n1', 'h', 1, 't')",
	    0));
	PQclear(th_exec(db.conn, "SELECT eav.queue_set_recursion('default', 3, "
	    "NULL)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('ping', "
	    "'{\"type\": \"object\"}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('echo', 'ping', NULL, "
	    "'[]', $1::jsonb, 100, 0, 1000)", 1, PING_TEMPLATE));
	free(submit(db.conn, "loop", "start", "ping", "{\"n\": 0}"));
	for (round = 0; round < 10; round++) {
		ingest(db.conn, 0);
		if (complete_emitting(db.conn) == 0)
			break;
	}
	ck_assert_int_lt(round, 10);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT max(depth) FROM eav.tasks", 0),
	    3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'refused' AND depth = 4 AND task_id IS NULL AND error "
	    "LIKE "
	    "'recursion limit: depth 4 is more than max_depth 3%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'loop.blocked' AND payload->>'reason' = 'depth'", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.ingested' AND outcome = 'refused'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'loop_blocked' AND state = 'open'", 0), 1);
	/* Fan-out: the trace's task budget refuses the same way. */
	PQclear(th_exec(db.conn, "SELECT eav.queue_set_recursion('default', "
	    "100, 4)", 0));
	PQclear(th_exec(db.conn, "INSERT INTO eav.inbox (source, event_key, "
	    "type, body, trace_id, parent_task_id, depth) SELECT 'loop', "
	    "'fan', "
	    "'ping', '{}', trace_id, id, depth + 1 FROM eav.tasks WHERE depth "
	    "= "
	    "2", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.inbox_ingest(10, 'producer:test') WHERE state = 'refused' AND "
	    "error LIKE 'recursion limit: trace holds 4 tasks%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'loop.blocked' AND payload->>'reason' = "
	    "'fan_out'", 0),
	    1);
	th_db_free(&db);
}
END_TEST

/*
 * A replayed result emits nothing; a malformed emit is refused and
 * audited while the step's success and its good emits stand.
 */
/* FM-093 */
START_TEST(test_emit_replay_and_bad)
{
	struct th_db	 db;
	char		*a, *b, *ea, *eb, batch[1024];
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
	    "\"outcome\": \"succeeded\", \"rec\": true, \"result\": {\"emit\": "
	    "[{\"source\": \"s\", \"type\": \"task\", \"body\": {\"kind\": "
	    "\"k\", \"steps\": [{\"tool\": \"noop\"}]}}, {\"source\": 5}, "
	    "{\"source\": \"s\", \"type\": \"t\", \"when\": 1}]}}]", a, ea);
	PQclear(th_exec(db.conn, "SELECT * FROM eav.complete_batch('w', "
	    "$1::jsonb)", 1, batch));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND state = 'succeeded'", 1, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "event_key = 'step:' || $1 || ':1' AND depth = 1", 1, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'event.emit_refused' AND step_id = $1::bigint", 1, a),
	    2);
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
	    "id = $1::bigint AND state = 'succeeded' AND result ? 'emit'", 1,
	    b), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox", 0),
	    1);
	/* The emitted task event becomes a child task of the emitter. */
	ck_assert_int_eq(ingest(db.conn, 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks c JOIN "
	    "eav.tasks p ON p.id = c.parent_task_id WHERE p.id = $1::bigint / "
	    "128 AND c.depth = 1 AND c.trace_id = p.trace_id", 1, a), 1);
	free(a);
	free(b);
	free(ea);
	free(eb);
	th_db_free(&db);
}
END_TEST

/*
 * A kill switch over a rule's queue keeps its events new (routed events
 * included, not only type task); release and classification wait.
 */
/* FM-094 */
START_TEST(test_kill_switch_routed)
{
	struct th_db	 db;
	char		*a, *b;

	th_db_new(&db);
	setup_orders(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set('gated')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('held', 'order.created', "
	    "NULL, '[{\"field\": \"$.tier\", \"op\": \"eq\", \"value\": "
	    "\"basic\"}]', '{\"queue\": \"gated\", \"kind\": \"k\", \"steps\": "
	    "[{\"tool\": \"noop\"}]}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.kill_switch_engage('queue', "
	    "'gated', 'drill', 'operator:test')", 0));
	a = submit(db.conn, "shop", "k1", "order.created",
	    "{\"id\": \"a1\", \"amount\": 5, \"tier\": \"basic\"}");
	b = submit(db.conn, "shop", "k2", "order.created",
	    "{\"id\": \"a2\", \"amount\": 5, \"tier\": \"gold\"}");
	ck_assert_int_eq(ingest(db.conn, 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND state = 'new'", 1, a), 1);
	/*
	 * The classifier's answer waits too, the lease given back (the event
	 * is put in classifying by hand: its rule would route it).
	 */
	PQclear(th_exec(db.conn, "UPDATE eav.inbox SET state = 'classifying' "
	    "WHERE id = $1::bigint", 1, a));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(1, 60000, 'producer:test')", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classified($1::bigint, '{\"route\": \"held\"}', NULL, "
	    "'producer:test') WHERE state = 'classifying' AND error = 'a kill "
	    "switch covers its task'", 1, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "id = $1::bigint AND lease_until IS NULL AND attempts = 0", 1, a),
	    1);
	PQclear(th_exec(db.conn, "SELECT eav.kill_switch_release('queue', "
	    "'gated', 'drill over', 'operator:test')", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classify_take(1, 60000, 'producer:test')", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.event_classified($1::bigint, '{\"route\": \"held\"}', NULL, "
	    "'producer:test') WHERE state = 'accepted'", 1, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "queue = 'gated'", 0), 1);
	free(a);
	free(b);
	th_db_free(&db);
}
END_TEST

/*
 * The same self-triggering rule with eavd running: a real worker runs an
 * exec tool whose result emits the next ping, the producer routes it, and
 * the storm gate holds the fifth firing.  Nothing runs after it.
 */
/* FM-093 */
START_TEST(test_self_trigger_eavd)
{
	struct th_db	 db;
	struct th_eavd	 e;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('pinger', 'exec', "
	    "jsonb_build_object('argv', jsonb_build_array('/bin/sh', '-c', "
	    "$1::text)), true, 10000)", 1, "cat >/dev/null; printf "
	    "'{\"emit\": [{\"source\": \"loop\", \"type\": \"ping\", "
	    "\"body\": {}}]}'"));
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('ping', "
	    "'{\"type\": \"object\"}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('echo', 'ping', NULL, "
	    "'[]', '{\"kind\": \"echo\", \"steps\": [{\"tool\": "
	    "\"pinger\"}]}', 100, 0, 4)", 0));
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n");
	th_eavd_up(&e, db.conn, 1);
	free(submit(db.conn, "loop", "start", "ping", "{}"));
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = 1 FROM "
	    "eav.inbox WHERE state = 'held'", 0), "no event held; see %s",
	    e.log);
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = 4 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0), "tasks did not finish; "
	    "see %s", e.log);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT max(depth) FROM eav.tasks", 0),
	    3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'held' AND depth = 4 AND error LIKE 'storm gate: rate%'",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'rule_storm' AND state = 'open'", 0), 1);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * The classifier under eavd ([producer] classifier = an exec tool): one
 * event per answer it can give.  A route routes; a classifier that sleeps
 * past its tool's 500 ms time-out is killed and its event clarified
 * within time-out + 1 s; garbage, an unknown route and a failure are
 * clarified with the reason.  Every event ends once.
 */
/* FM-023 */
START_TEST(test_classifier_eavd)
{
	static const char *const script = "in=$(cat); case \"$in\" in "
	    "*'\"id\":\"route\"'*) printf '{\"route\": \"gold\"}' ;; "
	    "*'\"id\":\"slow\"'*) exec sleep 30 ;; "
	    "*'\"id\":\"junk\"'*) printf 'not json' ;; "
	    "*'\"id\":\"fail\"'*) echo oops >&2; exit 3 ;; "
	    "*) printf '{\"route\": \"nosuch\"}' ;; esac";
	static const char *const ids[] = { "route", "slow", "junk", "fail",
	    "other" };
	struct th_db	 db;
	struct th_eavd	 e;
	char		*ev[5], body[128];
	size_t		 i;

	th_db_new(&db);
	setup_orders(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('classifier', "
	    "'exec', jsonb_build_object('argv', jsonb_build_array('/bin/sh', "
	    "'-c', $1::text)), true, 500)", 1, script));
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n[producer]\n"
	    "classifier = classifier\npoll_interval = 1h\n");
	th_eavd_up(&e, db.conn, 1);
	for (i = 0; i < 5; i++) {
		snprintf(body, sizeof(body), "{\"id\": \"%s\", \"amount\": 5, "
		    "\"tier\": \"basic\"}", ids[i]);
		ev[i] = submit(db.conn, "shop", ids[i], "order.created", body);
	}
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT count(*) = 5 FROM "
	    "eav.inbox WHERE state IN ('accepted', 'unrouted')", 0),
	    "events not classified; see %s", e.log);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id AND t.event_id = i.id WHERE "
	    "i.id = $1::bigint AND i.state = 'accepted' AND t.kind = 'basic'",
	    1, ev[0]), 1);
	assert_clarified(db.conn, ev[1], "classifier.fallback",
	    "timed out after 500 ms");
	assert_clarified(db.conn, ev[2], "classifier.fallback",
	    "classifier output is not JSON");
	assert_clarified(db.conn, ev[3], "classifier.fallback",
	    "exited with code 3; stderr: oops");
	assert_clarified(db.conn, ev[4], "classifier.fallback",
	    "unknown route \"nosuch\"");
	/* Started to clarified: the time-out and at most 1 s more. */
	ck_assert_int_le(th_ll(db.conn, "SELECT (extract(epoch FROM f.at - "
	    "s.at) * 1000)::bigint FROM eav.audit_events s JOIN "
	    "eav.audit_events f ON f.payload->>'event_id' = "
	    "s.payload->>'event_id' WHERE s.type = 'classifier.started' AND "
	    "f.type = 'classifier.fallback' AND s.payload->>'event_id' = $1",
	    1, ev[1]), 1500);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    5);
	th_eavd_stop_ok(&e);
	for (i = 0; i < 5; i++)
		free(ev[i]);
	th_db_free(&db);
}
END_TEST

/*
 * A producer SIGKILLed before its COMMIT with routed, gated and unrouted
 * events in its batch: nothing of the batch stays (no task, no firing
 * counted, no held event, no clarification); restarted without the
 * point, each event ends once: 20 routed, 5 fired and 15 held by the
 * gate, 20 clarification tasks.
 */
/* FM-092, FM-090 */
START_TEST(test_crash_mixed_routes)
{
	struct th_db	 db;
	struct th_eavd	 e;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.event_type_set('hook', "
	    "'{\"type\": \"object\", \"required\": [\"k\"]}')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('routed', 'hook', NULL, "
	    "'[{\"field\": \"$.k\", \"op\": \"eq\", \"value\": "
	    "\"r\"}]', $1::jsonb, 100, 0, 1000)", 1, NOOP_TEMPLATE));
	PQclear(th_exec(db.conn, "SELECT eav.rule_add('gated', 'hook', NULL, "
	    "'[{\"field\": \"$.k\", \"op\": \"eq\", \"value\": "
	    "\"g\"}]', $1::jsonb, 100, 0, 5)", 1, NOOP_TEMPLATE));
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n");
	setenv("EAV_INJECT", "producer.after_task_before_ack=crash,count=1",
	    1);
	th_eavd_up(&e, db.conn, 1);
	PQclear(th_exec(db.conn, "INSERT INTO eav.inbox (source, event_key, "
	    "type, body) SELECT 'svc', 'e' || i, 'hook', jsonb_build_object("
	    "'k', (ARRAY['r', 'g', 'u'])[i % 3 + 1])::text FROM "
	    "generate_series(1, 60) i", 0));
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) > 0 FROM "
	    "eav.audit_events WHERE type = 'process.exited' AND "
	    "payload->>'kind' = 'producer' AND payload->>'detail' LIKE "
	    "'%signal 9%'", 0), "the producer was not killed; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state <> 'new'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT (SELECT count(*) FROM "
	    "eav.tasks) + (SELECT sum(fires + blocks) FROM eav.rules) + "
	    "(SELECT count(*) FROM eav.alarms WHERE type = 'rule_storm')", 0),
	    0);
	unsetenv("EAV_INJECT");
	th_eavd_up(&e, db.conn, 1);
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = 0 FROM "
	    "eav.inbox WHERE state = 'new'", 0), "events left; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.rules r ON r.id = i.rule_id AND r.name = 'routed' WHERE "
	    "i.state = 'accepted'", 0), 20);
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires * 100 + blocks FROM "
	    "eav.rules WHERE name = 'gated'", 0), 515);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "state = 'held'", 0), 15);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox i JOIN "
	    "eav.tasks t ON t.id = i.task_id AND t.event_id = i.id WHERE "
	    "i.state = 'unrouted' AND t.kind = 'event.clarify'", 0), 20);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT event_id) FROM "
	    "eav.tasks", 0), 45);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    45);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type IN ('event.ingested', 'event.unrouted', "
	    "'gate.storm_block')", 0), 60);
	th_db_free(&db);
}
END_TEST

/* eavctl event-types, rules and events: list, add, change, release. */
/* FM-088, FM-092 */
START_TEST(test_eavctl_events)
{
	struct th_db	 db;
	char		 out[512];
	char		*held;

	th_db_new(&db);
	snprintf(out, sizeof(out), "%s/%s-ctl.out", th_tmpdir(), db.name);
	ck_assert_int_eq(ctl(db.dsn, out, "event-types", "add", "-s",
	    "svc,db", "-w", "60", "hook", "{\"type\": \"object\"}", NULL), 0);
	ck_assert(th_file_contains(out, "event type hook set"));
	ck_assert_int_eq(ctl(db.dsn, out, "event-types", "add", "bad",
	    "{\"type\": \"string\"}", NULL), 2);
	ck_assert(th_file_contains(out, "an event body is an object"));
	ck_assert_int_eq(ctl(db.dsn, out, "event-types", NULL), 0);
	ck_assert(th_file_contains(out, "svc,db"));
	ck_assert_int_eq(ctl(db.dsn, out, "rules", "add", "-r", "1", "-p",
	    "5", "hooks", "hook", NOOP_TEMPLATE, NULL), 0);
	ck_assert(th_file_contains(out, "rule hooks added"));
	ck_assert_int_eq(ctl(db.dsn, out, "rules", "add", "-w",
	    "[{\"field\": \"x\", \"op\": \"eq\", \"value\": 1}]", "r2", "hook",
	    NOOP_TEMPLATE, NULL), 2);
	ck_assert(th_file_contains(out, "predicate 1: field must be"));
	ck_assert_int_eq(ctl(db.dsn, out, "rules", "disable", "nosuch", NULL),
	    3);
	free(submit(db.conn, "svc", "e1", "hook", "{}"));
	free(submit(db.conn, "svc", "e2", "hook", "{}"));
	ck_assert_int_eq(ingest(db.conn, 0), 2);
	held = th_str(db.conn, "SELECT id::text FROM eav.inbox WHERE state = "
	    "'held'", 0);
	ck_assert_int_eq(ctl(db.dsn, out, "rules", NULL), 0);
	ck_assert(th_file_contains(out, "hooks"));
	ck_assert_int_eq(ctl(db.dsn, out, "events", "-s", "held", NULL), 0);
	ck_assert(th_file_contains(out, "storm gate"));
	ck_assert_int_eq(ctl(db.dsn, out, "events", "show", held, NULL), 0);
	ck_assert(th_file_contains(out, "held"));
	ck_assert_int_eq(ctl(db.dsn, out, "events", "show", "99999", NULL), 3);
	ck_assert_int_eq(ctl(db.dsn, out, "events", "release", held, NULL), 0);
	ck_assert(th_file_contains(out, "released; task"));
	ck_assert_int_eq(ctl(db.dsn, out, "events", "drop", "-r", "x", held,
	    NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, out, "rules", "disable", "hooks", NULL),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.rules WHERE "
	    "state = 'disabled'", 0), 1);
	ck_assert_int_eq(ctl(db.dsn, out, "rules", "enable", "hooks", NULL),
	    0);
	ck_assert_int_eq(ctl(db.dsn, out, "rules", "rm", "hooks", NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.proj_rules",
	    0), 0);
	free(held);
	th_db_free(&db);
}
END_TEST

/*
 * Least privilege: eav_producer may ingest and answer for the classifier
 * but not add rules; eav_operator may manage rules and types and read the
 * inbox through eavctl, but not ingest.
 */
START_TEST(test_roles)
{
	struct th_db	 db;
	char		 pdsn[600], odsn[600], out[512];
	PGconn		*p, *o;
	char		*id;

	th_db_new(&db);
	setup_orders(db.conn);
	snprintf(pdsn, sizeof(pdsn), "%s user=eav_producer", db.dsn);
	snprintf(odsn, sizeof(odsn), "%s user=eav_operator", db.dsn);
	snprintf(out, sizeof(out), "%s/%s-roles.out", th_tmpdir(), db.name);
	p = th_connect(pdsn);
	o = th_connect(odsn);
	id = submit(db.conn, "shop", "k1", "order.created",
	    "{\"id\": \"a1\", \"amount\": 5, \"tier\": \"basic\"}");
	ck_assert_int_eq(th_ll(p, "SELECT count(*) FROM eav.inbox_ingest(10, "
	    "'producer:test', true) WHERE state = 'classifying'", 0), 1);
	ck_assert_int_eq(th_ll(p, "SELECT count(*) FROM "
	    "eav.event_classify_take(10, 60000, 'producer:test')", 0), 1);
	ck_assert_int_eq(th_ll(p, "SELECT count(*) FROM eav.event_classified("
	    "$1::bigint, '{\"route\": \"gold\"}', NULL, 'producer:test') "
	    "WHERE state = 'accepted'", 1, id), 1);
	ck_assert(strncmp(th_err(p, "SELECT eav.rule_add('x', "
	    "'order.created', NULL, '[]', $1::jsonb)", 1, NOOP_TEMPLATE),
	    "42501: ", 7) == 0);
	ck_assert(strncmp(th_err(o, "SELECT count(*) FROM eav.inbox_ingest(1, "
	    "'operator:test')", 0), "42501: ", 7) == 0);
	PQclear(th_exec(o, "SELECT eav.rule_add('any', 'order.created', NULL, "
	    "'[]', $1::jsonb, 500)", 1, NOOP_TEMPLATE));
	PQclear(th_exec(o, "SELECT eav.event_type_set('hook', '{\"type\": "
	    "\"object\"}')", 0));
	ck_assert_int_eq(ctl(odsn, out, "events", NULL), 0);
	ck_assert(th_file_contains(out, "accepted"));
	ck_assert_int_eq(ctl(odsn, out, "rules", "disable", "any", NULL), 0);
	ck_assert_int_eq(ctl(odsn, out, "event-types", NULL), 0);
	ck_assert(th_file_contains(out, "hook"));
	PQfinish(o);
	PQfinish(p);
	free(id);
	th_db_free(&db);
}
END_TEST

Suite *
suite_events(void)
{
	Suite	*s = suite_create("events");
	TCase	*tc = tcase_create("events");
	TCase	*live = tcase_create("events-eavd");

	tcase_add_loop_test(tc, test_bad_events, 0,
	    (int)(sizeof(bad_events) / sizeof(bad_events[0])));
	tcase_add_loop_test(tc, test_bad_types, 0,
	    (int)(sizeof(bad_types) / sizeof(bad_types[0])));
	tcase_add_loop_test(tc, test_bad_rules, 0,
	    (int)(sizeof(bad_rules) / sizeof(bad_rules[0])));
	tcase_add_test(tc, test_dedupe_window);
	tcase_add_test(tc, test_dedupe_two_producers);
	tcase_add_test(tc, test_routing);
	tcase_add_loop_test(tc, test_classifier_fallback, 0,
	    (int)(sizeof(bad_answers) / sizeof(bad_answers[0])));
	tcase_add_test(tc, test_classifier_route_and_lease);
	tcase_add_test(tc, test_storm_gate);
	tcase_add_test(tc, test_self_trigger_storm);
	tcase_add_test(tc, test_self_trigger_depth);
	tcase_add_test(tc, test_emit_replay_and_bad);
	tcase_add_test(tc, test_kill_switch_routed);
	tcase_add_test(tc, test_eavctl_events);
	tcase_add_test(tc, test_roles);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	tcase_add_test(live, test_self_trigger_eavd);
	tcase_add_test(live, test_crash_mixed_routes);
	tcase_add_test(live, test_classifier_eavd);
	tcase_set_timeout(live, 180);
	suite_add_tcase(s, live);
	return s;
}
