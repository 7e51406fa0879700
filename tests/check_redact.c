/*
 * Redaction (sql/0014_redaction.sql): a canary corpus of fake secrets,
 * each sent into every place text from outside enters stored data, must
 * end up nowhere in the database, with a critical secret_leak alarm and
 * a secret.leak audit row naming the field and the rule; data that
 * drives a call (step input, inbox body, tool config) with a secret is
 * refused with 22023 and nothing is stored; a false-positive corpus
 * (ids, hashes, keys, ordinary words) survives byte for byte; a pattern
 * that does not compile is refused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define NITEMS(a)	(sizeof(a) / sizeof((a)[0]))

/* A fake secret and a part of it that nothing else contains. */
struct canary {
	const char	*secret;
	const char	*marker;
};

static const struct canary canaries[] = {
	{ "AKIACANARY0000000001", "CANARY0000000001" },
	{ "ASIACANARY0000000002", "CANARY0000000002" },
	{ "aws_secret_access_key=CanaryCanaryCanaryCanaryCanaryCanary0003",
	    "CanaryCanaryCanaryCanaryCanaryCanary0003" },
	{ "ghp_CANARYcanaryCANARYcanaryCANARY000004",
	    "CANARYcanaryCANARYcanaryCANARY000004" },
	{ "github_pat_CANARY0000005_canarycanarycanary",
	    "CANARY0000005_canary" },
	{ "xoxb-000000000006-canaryslacktoken", "000000000006-canary" },
	{ "sk_live_CANARYcanary0000007", "CANARYcanary0000007" },
	{ "rk_test_CANARYcanary0000008", "CANARYcanary0000008" },
	{ "AIzaCANARYcanaryCANARYcanary00000000009",
	    "CANARYcanaryCANARYcanary00000000009" },
	{ "sk-proj-CANARYcanaryCANARY0000010", "CANARYcanaryCANARY0000010" },
	{ "sk-ant-api03-CANARYcanaryCANARY0000011",
	    "CANARYcanaryCANARY0000011" },
	{ "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkxMiJ9.c2lnbmF0dXJlMTI",
	    "eyJzdWIiOiJjYW5hcnkxMiJ9" },
	{ "Bearer canary13.token-value_xyz", "canary13.token" },
	{ "postgres://app:canary14pass@db.internal:5432/eav",
	    "canary14pass" },
	{ "host=db user=app password=canary15pw dbname=eav", "canary15pw" },
	{ "-----BEGIN RSA PRIVATE KEY-----\nMIIcanary16AAAKCAQEA\n"
	    "-----END RSA PRIVATE KEY-----", "MIIcanary16AAAKCAQEA" },
	{ "Authorization: Basic Y2FuYXJ5MTc6cGFzcw==",
	    "Y2FuYXJ5MTc6cGFzcw" },
	{ "https://hook:canary18secret@example.com/in", "canary18secret" },
};

/* Secrets found by the name of the key they are under. */
static const char *const key_canaries[] = {
	"{\"password\": \"canary-k1-hunter2\"}",
	"{\"client_secret\": \"canary-k2-value\"}",
	"{\"api_key\": \"canary-k3-value\"}",
	"{\"headers\": {\"Cookie\": \"sid=canary-k4-value\"}}",
	"{\"auth\": {\"access_token\": \"canary-k5-value\"}}",
	"{\"private_key\": \"canary-k6-value\"}",
	"{\"list\": [{\"Authorization\": \"canary-k7-value\"}]}",
};

/* Must survive everywhere, unchanged. */
static const char *const harmless[] = {
	"0b3f6a0e-8c6e-4c1e-9a53-3d7f1b2c9e11",
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	"eav:12:1",
	"order-7",
	"aGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGEgc2VjcmV0",
	"tokenizer",
	"password_reset_requested",
	"https://api.example.com/v1/orders?id=7&page=2",
	"postgres://db.internal:5432/eav",
	"deadbeef",
	"task-risk-assessment-customer-0001",
	"ASIAN markets closed",
	"passenger 7 bypassed the gate",
	"the bearer of this note",
	"sha256:9f86d081884c7d659a2feaa0c55ad015"
	    "a3bf4f1b2b0b822cd15d6c15b0f00a08",
	"idem-2024-01-01T00:00:00Z-42",
};

/* A JSON string literal of s (which holds no quote or backslash). */
static char *
json_str(const char *s)
{
	char	*out;
	size_t	 i, n = 0, len = strlen(s);

	out = malloc(len * 2 + 3);
	ck_assert_ptr_nonnull(out);
	out[n++] = '"';
	for (i = 0; i < len; i++) {
		if (s[i] == '\n') {
			out[n++] = '\\';
			out[n++] = 'n';
		} else
			out[n++] = s[i];
	}
	out[n++] = '"';
	out[n] = '\0';
	return out;
}

/* A worker's incarnation for completing steps by hand. */
static char *
worker_start(PGconn *c)
{
	return th_str(c, "SELECT eav.node_start('redact', 'h', 1, 'test')"
	    "::text", 0);
}

/*
 * Enqueues a noop step, claims it as a worker would and completes it with
 * one batch element {outcome, error, result}; returns the step id.
 */
static char *
step_complete(PGconn *c, const char *inc, const char *outcome,
    const char *error, const char *result)
{
	char		*step;
	PGresult	*res;

	step = th_str(c, "SELECT (eav.enqueue('noop') * 128 + 1)::text", 0);
	res = th_exec(c, "SELECT step_id, claim_epoch FROM "
	    "eav.claim('redact', $1::bigint, 1, 1, '{default}')", 1, inc);
	ck_assert_int_eq(PQntuples(res), 1);
	ck_assert_str_eq(PQgetvalue(res, 0, 0), step);
	PQclear(th_exec(c, "SELECT * FROM eav.complete_batch('worker:redact/'"
	    " || $1, jsonb_build_array(jsonb_strip_nulls(jsonb_build_object("
	    "'id', $2::bigint, 'epoch', $3::bigint, 'outcome', $4::text, "
	    "'error', $5::text, 'result', $6::jsonb))))", 6, inc, step,
	    PQgetvalue(res, 0, 1), outcome, error, result));
	PQclear(res);
	return step;
}

/* Rows of eav's tables whose text holds s anywhere. */
static long long
stored(PGconn *c, const char *s)
{
	return th_ll(c, "SELECT (SELECT count(*) FROM eav.audit_events a "
	    "WHERE a::text LIKE '%' || $1 || '%') + (SELECT count(*) FROM "
	    "eav.alarms a WHERE a::text LIKE '%' || $1 || '%') + (SELECT "
	    "count(*) FROM eav.steps s WHERE s::text LIKE '%' || $1 || '%') + "
	    "(SELECT count(*) FROM eav.inbox i WHERE i::text LIKE '%' || $1 || "
	    "'%') + (SELECT count(*) FROM eav.tools t WHERE t::text LIKE '%' "
	    "|| $1 || '%') + (SELECT count(*) FROM eav.tasks t WHERE t::text "
	    "LIKE '%' || $1 || '%')", 1, s);
}

static long long
leak_alarm(PGconn *c, const char *subject)
{
	return th_ll(c, "SELECT count(*) FROM eav.alarms WHERE type = "
	    "'secret_leak' AND severity = 'critical' AND state = 'open' AND "
	    "subject = $1", 1, subject);
}

/* Sends one secret (as text) into every place it can enter. */
static void
send_everywhere(PGconn *c, const char *inc, const char *secret)
{
	char		*js, *obj;
	const char	*e;
	size_t		 len;
	long long	 tasks;

	js = json_str(secret);
	len = strlen(js) + 32;
	obj = malloc(len);
	ck_assert_ptr_nonnull(obj);
	snprintf(obj, len, "{\"echo\": %s}", js);
	/* A step's error and result, from a worker's completion batch. */
	free(step_complete(c, inc, "failed", secret, NULL));
	free(step_complete(c, inc, "succeeded", NULL, obj));
	/* The error the producer gives an inbox event. */
	PQclear(th_exec(c, "INSERT INTO eav.inbox (source, event_key, type, "
	    "body) VALUES ('crm', md5($1), 'task', '{}')", 1, secret));
	PQclear(th_exec(c, "UPDATE eav.inbox SET state = 'rejected', error = "
	    "'cannot route: ' || $1 WHERE event_key = md5($1)", 1, secret));
	/* An alarm's message and details; an audit payload; a tool's error. */
	PQclear(th_exec(c, "SELECT eav.alarm_raise('test_alarm', 'warning', "
	    "'test', 'tool said ' || $1, $2::jsonb)", 2, secret, obj));
	PQclear(th_exec(c, "SELECT eav.audit('test.event', 'failure', "
	    "'operator:test', NULL, NULL, NULL, jsonb_build_object('detail', "
	    "$1::text))", 1, secret));
	PQclear(th_exec(c, "UPDATE eav.tools SET last_error = $1 WHERE name "
	    "= 'noop'", 1, secret));
	/* Step input: refused, nothing stored. */
	tasks = th_ll(c, "SELECT count(*) FROM eav.tasks", 0);
	e = th_err(c, "SELECT eav.enqueue('noop', $1::jsonb)", 1, obj);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "input.echo"), "%s", e);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.tasks", 0), tasks);
	free(obj);
	free(js);
}

/*
 * Every canary sent everywhere is stored nowhere; each place has its
 * critical alarm and audit row naming the field, never the value.
 */
/* FM-028 */
START_TEST(test_redact_canaries)
{
	struct th_db	 db;
	char		*inc, *step, *r;
	size_t		 i;

	th_db_new(&db);
	inc = worker_start(db.conn);
	for (i = 0; i < NITEMS(canaries); i++) {
		send_everywhere(db.conn, inc, canaries[i].secret);
		ck_assert_msg(stored(db.conn, canaries[i].marker) == 0,
		    "canary %zu (%s) is stored", i, canaries[i].marker);
	}
	for (i = 0; i < NITEMS(key_canaries); i++) {
		step = step_complete(db.conn, inc, "succeeded", NULL,
		    key_canaries[i]);
		PQclear(th_exec(db.conn, "SELECT eav.audit('test.keyed', "
		    "'failure', 'operator:test', NULL, NULL, NULL, $1::jsonb)",
		    1, key_canaries[i]));
		r = th_str(db.conn, "SELECT result::text FROM eav.steps WHERE "
		    "id = $1::bigint", 1, step);
		ck_assert_msg(strstr(r, "[REDACTED:") && !strstr(r, "canary-k"),
		    "%s", r);
		free(r);
		free(step);
	}
	ck_assert_int_eq(stored(db.conn, "canary-k"), 0);
	ck_assert_int_eq(leak_alarm(db.conn, "steps.error"), 1);
	ck_assert_int_eq(leak_alarm(db.conn, "steps.result.echo"), 1);
	ck_assert_int_eq(leak_alarm(db.conn, "steps.result.password"), 1);
	ck_assert_int_eq(leak_alarm(db.conn,
	    "steps.result.list[0].Authorization"), 1);
	ck_assert_int_eq(leak_alarm(db.conn, "inbox.error"), 1);
	ck_assert_int_eq(leak_alarm(db.conn, "alarms.message"), 1);
	ck_assert_int_eq(leak_alarm(db.conn, "alarms.details.echo"), 1);
	ck_assert_int_eq(leak_alarm(db.conn,
	    "audit:test.event:payload.detail"), 1);
	ck_assert_int_eq(leak_alarm(db.conn,
	    "audit:test.keyed:payload.headers.Cookie"), 1);
	ck_assert_int_eq(leak_alarm(db.conn, "tools.last_error"), 1);
	/* Counted per leak: one alarm per field, raised once per canary. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT raise_count FROM eav.alarms "
	    "WHERE type = 'secret_leak' AND subject = 'steps.error'", 0),
	    (long long)NITEMS(canaries));
	/* The audit names field and rule; the step's error is redacted. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'secret.leak' AND outcome = "
	    "'failure' AND payload->>'field' = 'steps.error' AND "
	    "payload->>'rule' = 'aws_access_key'", 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE error = '[REDACTED:aws_access_key]'", 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE error LIKE 'host=db user=app "
	    "[REDACTED:password_assignment] dbname=eav'", 0), 1);
	free(inc);
	th_db_free(&db);
}
END_TEST

/* Ids, hashes, keys and ordinary words survive every place untouched. */
/* FM-028 */
START_TEST(test_redact_false_positives)
{
	struct th_db	 db;
	char		*inc, *js, *obj, *step, *v;
	size_t		 i, len;

	th_db_new(&db);
	inc = worker_start(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set('parked')", 0));
	for (i = 0; i < NITEMS(harmless); i++) {
		js = json_str(harmless[i]);
		len = strlen(js) * 3 + 128;
		obj = malloc(len);
		ck_assert_ptr_nonnull(obj);
		snprintf(obj, len, "{\"v\": %s, \"list\": [%s], "
		    "\"tokenizer\": %s, \"max_tokens\": 5, "
		    "\"password_reset_requested\": true}", js, js, js);
		step = step_complete(db.conn, inc, "failed", harmless[i],
		    NULL);
		v = th_str(db.conn, "SELECT error FROM eav.steps WHERE id = "
		    "$1::bigint", 1, step);
		ck_assert_str_eq(v, harmless[i]);
		free(v);
		free(step);
		step = step_complete(db.conn, inc, "succeeded", NULL, obj);
		ck_assert_int_eq(th_ll(db.conn, "SELECT (result = $2::jsonb)"
		    "::int FROM eav.steps WHERE id = $1::bigint", 2, step, obj),
		    1);
		free(step);
		/* Input is accepted, with a client's idempotency key. */
		step = th_str(db.conn, "SELECT (eav.enqueue('noop', $1::jsonb, "
		    "'parked', p_idempotency_key => $2) * 128 + 1)::text", 2,
		    obj, harmless[i]);
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.steps WHERE id = $1::bigint AND input = $2::jsonb AND "
		    "idempotency_key = $3", 3, step, obj, harmless[i]), 1);
		free(step);
		PQclear(th_exec(db.conn, "SELECT eav.audit('test.harmless', "
		    "'success', 'operator:test', NULL, NULL, NULL, $1::jsonb)",
		    1, obj));
		PQclear(th_exec(db.conn, "SELECT eav.alarm_raise('test_alarm',"
		    " 'info', $1, $1)", 1, harmless[i]));
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.audit_events WHERE type = 'test.harmless' AND payload "
		    "= $1::jsonb", 1, obj), 1);
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.alarms WHERE message = $1", 1, harmless[i]), 1);
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.redact($1::jsonb) WHERE findings IS NOT NULL", 1, obj),
		    0);
		free(obj);
		free(js);
	}
	/* A http tool names its secrets: that is not a leak. */
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('far', 'http', "
	    "'{\"url\": \"http://127.0.0.1:9/x\", \"secret_headers\": "
	    "{\"Authorization\": \"BILLING_TOKEN\"}}', true)", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools "
	    "WHERE config->'secret_headers'->>'Authorization' = "
	    "'BILLING_TOKEN'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE payload::text LIKE '%REDACTED%'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'secret_leak'", 0), 0);
	free(inc);
	th_db_free(&db);
}
END_TEST

/*
 * Data that drives a call is refused, not altered: step input, an inbox
 * body (it becomes step input) and a tool's config, each 22023 naming the
 * field and the rule, never the value, and nothing stored.
 */
/* FM-028 */
START_TEST(test_redact_refuses_call_data)
{
	struct th_db	 db;
	const char	*e;

	th_db_new(&db);
	e = th_err(db.conn, "SELECT eav.task_enqueue('default', 'pay', "
	    "'[{\"tool\": \"noop\"}, {\"tool\": \"noop\", \"input\": "
	    "{\"db\": \"postgres://u:canary-in1@h/db\"}}]')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "step 2") &&
	    strstr(e, "input.db") && strstr(e, "url_credentials") &&
	    !strstr(e, "canary"), "%s", e);
	e = th_err(db.conn, "SELECT * FROM eav.enqueue_many('noop', "
	    "'[{}, {\"auth\": {\"refresh_token\": \"canary-in2\"}}]')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "input.auth."
	    "refresh_token") && !strstr(e, "canary"), "%s", e);
	e = th_err(db.conn, "INSERT INTO eav.inbox (source, event_key, type, "
	    "body) VALUES ('crm', 'o-1', 'task', '{\"kind\": \"k\", "
	    "\"steps\": [{\"tool\": \"noop\", \"input\": {\"password\": "
	    "\"canary-in3\"}}]}')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "event crm/o-1") &&
	    strstr(e, "body.steps[0].input.password") && !strstr(e,
	    "canary"), "%s", e);
	e = th_err(db.conn, "SELECT eav.tool_register('far', 'http', "
	    "'{\"url\": \"http://127.0.0.1:9/x\", \"headers\": "
	    "{\"Authorization\": \"Bearer canary-in4-token\"}}', true)", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "tool far") &&
	    strstr(e, "config.headers.Authorization") && !strstr(e,
	    "canary"), "%s", e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT (SELECT count(*) FROM "
	    "eav.tasks) + (SELECT count(*) FROM eav.steps) + (SELECT count(*) "
	    "FROM eav.inbox) + (SELECT count(*) FROM eav.tools WHERE name = "
	    "'far')", 0), 0);
	ck_assert_int_eq(stored(db.conn, "canary"), 0);
	th_db_free(&db);
}
END_TEST

/*
 * The policy is a table changed through audited functions: a pattern
 * that does not compile (or would redact everything) is refused with
 * 22023 naming it and nothing stored; a new rule applies at once, a
 * disabled one no longer does.
 */
/* FM-028 */
START_TEST(test_redact_rules)
{
	struct th_db	 db;
	const char	*e;
	long long	 rules;
	char		*r;

	th_db_new(&db);
	rules = th_ll(db.conn, "SELECT count(*) FROM eav.redaction_rules", 0);
	e = th_err(db.conn, "SELECT eav.redaction_rule_add('value', 'acme', "
	    "'acme_[0-9a-f{12}(')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "acme_[0-9a-f{12}(")
	    && strstr(e, "does not compile"), "%s", e);
	e = th_err(db.conn, "SELECT eav.redaction_rule_add('key', 'acme', "
	    "'(x')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "\"(x\""), "%s", e);
	e = th_err(db.conn, "SELECT eav.redaction_rule_add('value', 'acme', "
	    "'.*')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "empty"), "%s", e);
	e = th_err(db.conn, "SELECT eav.redaction_rule_add('value', 'jwt', "
	    "'acme')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "exists"), "%s", e);
	e = th_err(db.conn, "SELECT eav.redaction_rule_add('value', 'acme', "
	    "'acme_[0-9a-f]{12}', '{Acme}')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "hints"), "%s", e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.redaction_rules", 0), rules);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type LIKE 'redaction.%'", 0), 0);

	/* A new rule, with and without hints, applies at once. */
	PQclear(th_exec(db.conn, "SELECT eav.redaction_rule_add('value', "
	    "'acme_key', 'acme_[0-9a-f]{12}', '{acme_}', 'ACME keys', "
	    "'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.redaction_rule_add('key', "
	    "'vault', 'x-vault-.*')", 0));
	r = th_str(db.conn, "SELECT redacted::text FROM eav.redact("
	    "'{\"e\": \"key acme_0123456789ab\", \"X-Vault-Id\": \"v\"}')", 0);
	ck_assert_str_eq(r, "{\"e\": \"key [REDACTED:acme_key]\", "
	    "\"X-Vault-Id\": \"[REDACTED:vault]\"}");
	free(r);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'redaction.rule_added' AND actor = "
	    "'operator:test' AND payload->>'label' = 'acme_key'", 0), 1);

	/* Disabled (a reason is required): no longer applied, kept. */
	e = th_err(db.conn, "SELECT eav.redaction_rule_disable('acme_key', "
	    "' ')", 0);
	ck_assert_msg(strstr(e, "22023") && strstr(e, "reason"), "%s", e);
	PQclear(th_exec(db.conn, "SELECT eav.redaction_rule_disable("
	    "'acme_key', 'false positives', 'operator:test')", 0));
	e = th_err(db.conn, "SELECT eav.redaction_rule_disable('acme_key', "
	    "'again')", 0);
	ck_assert_msg(strstr(e, "EA003"), "%s", e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.redact("
	    "'\"acme_0123456789ab\"') WHERE findings IS NULL", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'redaction.rule_disabled' AND "
	    "payload->>'reason' = 'false positives'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.redaction_rules WHERE label = 'acme_key' AND NOT enabled", 0),
	    1);
	e = th_err(db.conn, "DELETE FROM eav.redaction_rules", 0);
	ck_assert_msg(strstr(e, "EA003"), "%s", e);
	th_db_free(&db);
}
END_TEST

Suite *
suite_redact(void)
{
	Suite	*s = suite_create("redact");
	TCase	*tc = tcase_create("redact");

	tcase_add_test(tc, test_redact_canaries);
	tcase_add_test(tc, test_redact_false_positives);
	tcase_add_test(tc, test_redact_refuses_call_data);
	tcase_add_test(tc, test_redact_rules);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}
