/*
 * The mcp tool, for real: eavd's workers run tests/far/mcpd (built into
 * the build directory) as the MCP server of tools registered through
 * eav.tool_register.  One test per outcome mapping (a result, isError,
 * JSON-RPC errors by code, the server crashing mid-call, breaking the
 * protocol, timing out, failing its handshake, listing its tools in
 * pages, answering too much or sending lines over the cap, which the
 * scanner of worker/jscan.c reads past), what the server can see, and
 * SIGKILLs of the worker in the middle of calls: the server's whole group
 * dies before the step is reconciled, an idempotent far side has at most
 * one effect per key, and a non-idempotent call is held, never re-run.
 */
#include <sys/wait.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "harness.h"
#include "../worker/jscan.h"

#define DEADLINE_MS	TH_TOOL_DEADLINE_MS
#define KILLS		50
#define KILL_MS		100000	/* deadline of the kills */
#define KILL_TOTAL_MS	150000	/* and of the drain (timeout 200 s) */
#define HELD_ROUNDS	3	/* kills of a worker with 2 calls in flight */
#define MAX_GROUPS	64
#define GROUP_KILL_MS	5000	/* eavd reaps and kills groups by then */

/* Registers mcpd as the server of tool name (its tool "far"). */
static const char register_sql[] =
    "SELECT eav.tool_register($1, 'mcp', jsonb_build_object('argv',"
    " jsonb_build_array($2::text, '--marker=' || current_database())"
    " || $3::jsonb, 'env', '[\"RECORDER_DSN\"]'::jsonb, 'tool', 'far')"
    " || $4::jsonb, $5::boolean, $6::int)";

/* Registers mcpd; flags: a JSON array of its flags; extra: more config. */
static void
reg(PGconn *c, const char *name, const char *flags, int idempotent,
    int timeout_ms, const char *extra)
{
	char	t[16];

	snprintf(t, sizeof(t), "%d", timeout_ms);
	PQclear(th_exec(c, register_sql, 6, name, th_bin("mcpd"),
	    flags ? flags : "[]", extra ? extra : "{}",
	    idempotent ? "true" : "false", t));
}

/* Counts the unknown outcomes of step with detected_by and a reason. */
static long long
unknowns(PGconn *c, const char *step, const char *by, const char *like)
{
	return th_ll(c, "SELECT count(*) FROM eav.unknown_outcomes u JOIN "
	    "eav.audit_events a ON a.step_id = u.step_id AND a.type = "
	    "'tool_call.unknown' AND a.payload->>'reason' = u.reason AND "
	    "(a.payload->>'epoch')::bigint = u.claim_epoch WHERE "
	    "u.step_id = $1::bigint AND u.detected_by = $2 AND u.reason LIKE "
	    "$3", 3, step, by, like);
}

/* The pid of the server that answered a succeeded step. */
static long long
server_pid(PGconn *c, const char *step)
{
	return th_ll(c, "SELECT (result->'structuredContent'->>'pid')::int "
	    "FROM eav.steps WHERE id = $1::bigint AND state = 'succeeded'", 1,
	    step);
}

/*
 * A result is stored whole: the MCP result object, its structuredContent
 * naming the step's key.  Calls in flight together on one server are
 * answered out of order.
 */
START_TEST(test_mcp_succeeded)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 slow[24], mid[24], fast[24];

	th_far_db(&db);
	reg(db.conn, "far", NULL, 1, 30000, NULL);
	th_far_conf(&e, &db, "mcp1", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(slow, sizeof(slow), "%s", th_enqueue(db.conn, "far",
	    "{\"ms\": 900, \"s\": \"caf\\u00e9\"}", 1));
	snprintf(mid, sizeof(mid), "%s", th_enqueue(db.conn, "far",
	    "{\"ms\": 400}", 1));
	snprintf(fast, sizeof(fast), "%s", th_enqueue(db.conn, "far", "{}",
	    1));
	th_wait_settled(db.conn, &e, "far", DEADLINE_MS);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN far_effects f ON f.key = s.idempotency_key AND f.step = s.id "
	    "WHERE s.state = 'succeeded' AND s.attempt = 1 AND "
	    "s.result->'structuredContent'->>'key' = s.idempotency_key AND "
	    "s.result->'structuredContent'->'arguments' = s.input AND "
	    "s.result->'content'->0->>'type' = 'text' AND "
	    "s.result->>'isError' = 'false'", 0), 3);
	/* One server; the fast call was answered first. */
	ck_assert_int_eq(server_pid(db.conn, slow), server_pid(db.conn, fast));
	ck_assert_int_eq(server_pid(db.conn, mid), server_pid(db.conn, fast));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps a, "
	    "eav.steps b WHERE a.id = $1::bigint AND b.id = $2::bigint AND "
	    "a.finished_at < b.finished_at", 2, fast, slow), 1);
	ck_assert(th_log_contains(&e, "stderr: mcpd: pid"));
	th_eavd_stop_ok(&e);
	ck_assert(th_log_contains(&e, "closing its MCP server"));
	th_db_free(&db);
}
END_TEST

/*
 * The tool's own error (isError) and JSON-RPC errors: -32602 (invalid
 * params) fails at once; -32603 (internal) is retried, and succeeds when
 * the server recovers; a server error that persists fails after
 * max_attempts.  No result is kept for a failure.
 */
/* FM-070 */
START_TEST(test_mcp_errors)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 iserr[24], params[24], flaky[24], down[24];

	th_far_db(&db);
	reg(db.conn, "far", NULL, 1, 30000, NULL);
	th_far_conf(&e, &db, "mcp2", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(iserr, sizeof(iserr), "%s", th_enqueue(db.conn, "far",
	    "{\"mode\": \"tool_error\", \"message\": \"no such customer\"}",
	    3));
	snprintf(params, sizeof(params), "%s", th_enqueue(db.conn, "far",
	    "{\"mode\": \"error\", \"code\": -32602, \"message\": \"bad "
	    "customer id\"}", 3));
	snprintf(flaky, sizeof(flaky), "%s", th_enqueue(db.conn, "far",
	    "{\"mode\": \"error\", \"code\": -32603, \"until_attempt\": 2}",
	    3));
	snprintf(down, sizeof(down), "%s", th_enqueue(db.conn, "far",
	    "{\"mode\": \"error\", \"code\": -32001, \"message\": \"busy\"}",
	    2));
	th_wait_settled(db.conn, &e, "far", DEADLINE_MS);
	th_assert_failed(db.conn, iserr, "the MCP tool reported an error: no "
	    "such customer");
	th_assert_failed(db.conn, params, "MCP error -32602: bad customer id");
	th_assert_failed(db.conn, down, "MCP error -32001: busy");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id IN ($1::bigint, $2::bigint) AND type = "
	    "'step.claimed'", 2, iserr, params), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND state = 'succeeded' AND attempt = 2", 1,
	    flaky), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.retry_scheduled'", 1,
	    down), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * The server dies in the middle of a call, after its effect: unknown
 * (tool_lost).  Idempotent: retried with the same key on a new server
 * (the far side dedupes: one effect); not idempotent: held with an
 * alarm, never called again by itself.
 */
/* FM-043 */
START_TEST(test_mcp_crash)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 again[24], once[24];

	th_far_db(&db);
	reg(db.conn, "far", NULL, 1, 30000, NULL);
	reg(db.conn, "far.once", NULL, 0, 30000, NULL);
	th_far_conf(&e, &db, "mcp3", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(again, sizeof(again), "%s", th_enqueue(db.conn, "far",
	    "{\"mode\": \"crash\", \"until_attempt\": 2}", 3));
	th_wait_state(db.conn, &e, again, "succeeded");
	ck_assert_int_eq(unknowns(db.conn, again, "tool_lost",
	    "the MCP server %"), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN far_deliveries d ON d.step = s.id AND d.key = "
	    "s.idempotency_key WHERE s.id = $1::bigint", 1, again), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_effects", 0),
	    1);
	/* The second attempt ran on a new server. */
	ck_assert_int_ne(server_pid(db.conn, again), th_ll(db.conn, "SELECT "
	    "pid FROM far_deliveries WHERE step = $1::bigint AND attempt = 1",
	    1, again));
	snprintf(once, sizeof(once), "%s", th_enqueue(db.conn, "far.once",
	    "{\"mode\": \"crash\", \"signal\": 9}", 3));
	th_wait_state(db.conn, &e, once, "held");
	ck_assert_int_eq(unknowns(db.conn, once, "tool_lost", "the MCP "
	    "server %"), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.alarms a ON a.subject = 'step:' || s.id WHERE s.id = "
	    "$1::bigint AND s.held_reason = 'unknown_outcome' AND a.state = "
	    "'open' AND s.result IS NULL", 1, once), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_deliveries "
	    "WHERE step = $1::bigint", 1, once), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	th_assert_sound(db.conn);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Protocol breaches in the middle of a call, and the word each gives. */
static const struct {
	const char	*input;
	const char	*reason;
} breaches[] = {
	{ "{\"mode\": \"garbage\"}", "the MCP server sent invalid JSON-RPC: "
	    "%" },
	{ "{\"mode\": \"wrong_id\"}", "the MCP server answered id %, which no "
	    "request in flight has" },
	{ "{\"mode\": \"unsolicited\"}", "the MCP server answered id 999999, "
	    "which no request in flight has" },
	{ "{\"mode\": \"big_garbage\", \"bytes\": 200000}", "the MCP server "
	    "sent invalid JSON-RPC: the end of the text expected at byte % (of "
	    "a message over 131072 bytes)" },
};

/*
 * The server sends a line that is not JSON (short, or over the line cap
 * and spoilt only at its end), answers the wrong id, or answers an id
 * never asked while a call is in flight: the call's
 * outcome is unknown (tool_lost) with the reason audited, nothing of the
 * answer is kept, the server is replaced, and the worker goes on.
 */
/* FM-071 */
START_TEST(test_mcp_protocol_broken)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 step[24];
	long long	 worker;

	th_far_db(&db);
	reg(db.conn, "far.once", NULL, 0, 30000, NULL);
	th_far_conf(&e, &db, "mcp4", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(step, sizeof(step), "%s", th_enqueue(db.conn, "far.once",
	    breaches[_i].input, 3));
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_int_eq(unknowns(db.conn, step, "tool_lost",
	    breaches[_i].reason), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND result IS NULL", 1, step), 1);
	worker = th_ll(db.conn, "SELECT owner_pid FROM eav.unknown_outcomes "
	    "WHERE step_id = $1::bigint", 1, step);
	/* The same worker goes on, on a new server. */
	snprintf(step, sizeof(step), "%s", th_enqueue(db.conn, "far.once",
	    "{}", 1));
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT owner_pid FROM eav.steps WHERE "
	    "id = $1::bigint", 1, step), worker);
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	ck_assert(th_log_contains(&e, "killing its process group"));
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A call past the tool's timeout_ms: unknown (tool_timeout); the server
 * is killed (its late answer could not be trusted), and the retry with
 * the same key runs on a new one; with the attempts spent, held.
 */
/* FM-072 */
START_TEST(test_mcp_timeout)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "far.slow", NULL, 1, 500, NULL);
	th_far_conf(&e, &db, "mcp5", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far.slow", "{\"mode\": \"hang\"}", 2);
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_int_eq(unknowns(db.conn, step, "tool_timeout", "timed out "
	    "after 500 ms%"), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT pid) FROM "
	    "far_deliveries d JOIN eav.steps s ON s.id = d.step AND "
	    "s.idempotency_key = d.key WHERE s.id = $1::bigint", 1, step), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_effects", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND held_reason = 'attempts_exhausted'", 1, step),
	    1);
	th_assert_sound(db.conn);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Servers that never get to a call, and the error each leaves. */
static const struct {
	const char	*flags;
	const char	*config;
	const char	*error;
} no_start[] = {
	{ "[\"--init-error\"]", "{}", "not sent: the MCP server did not "
	    "start: initialize failed: MCP error -32603: initialize refused "
	    "on purpose" },
	{ "[\"--init-hang\"]", "{\"init_timeout_ms\": 300}", "not sent: the "
	    "MCP server did not start: no answer to initialize within 300 ms" },
	{ "[\"--exit-after-init\"]", "{}", "not sent: the MCP server did not "
	    "start: " },
	{ "[]", "{\"argv\": [\"/nonexistent/eav-mcp-server\"]}", "not sent: "
	    "the MCP server did not start: cannot run "
	    "/nonexistent/eav-mcp-server: execve: No such file or directory" },
	{ "[]", "{\"tool\": \"nope\"}", "the MCP server has no tool \"nope\"" },
	{ "[\"--list-bytes=70000\"]", "{\"max_output_bytes\": 1000}", "not "
	    "sent: the MCP server did not start: tools/list got a response "
	    "larger than 66536 bytes" },
};

/*
 * The server cannot start, fails or never answers its initialize (or
 * answers tools/list with more than the line cap), or lacks the tool:
 * the call was never sent, so the step is retried (no unknown outcome)
 * and fails once its attempts are spent; a missing tool fails at once.
 * The far side saw no call.
 */
/* FM-073 */
START_TEST(test_mcp_no_start)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "far", no_start[_i].flags, 1, 30000,
	    no_start[_i].config);
	th_far_conf(&e, &db, "mcp6", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far", "{}", 2);
	th_wait_state(db.conn, &e, step, "failed");
	th_assert_failed(db.conn, step, no_start[_i].error);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_deliveries",
	    0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.claimed'", 1, step),
	    strstr(no_start[_i].error, "no tool") != NULL ? 1 : 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* mcpd listing its tools two a page: far, a; b, c; d, target. */
#define PAGED	"[\"--page-size=2\", \"--tool=a\", \"--tool=b\", " \
		"\"--tool=c\", \"--tool=d\", \"--tool=target\"]"

/* Paged tools/lists, how each call ends and the word it leaves. */
static const struct {
	const char	*flags;
	const char	*config;
	const char	*state;
	const char	*word;		/* in the log, or the step's error */
} pages[] = {
	{ PAGED, "{\"tool\": \"target\"}", "succeeded", "ready (tools/list: "
	    "3 pages)" },
	{ PAGED, "{\"tool\": \"nope\"}", "failed", "the MCP server has no "
	    "tool \"nope\" (not in its tools/list, 3 pages)" },
	{ "[\"--list-loop\"]", "{\"tool\": \"nope\"}", "failed", "not sent: "
	    "the MCP server did not start: tools/list still had a nextCursor "
	    "after 100 pages, none naming the tool \"nope\"" },
};

/*
 * A tools/list in pages is followed by its nextCursor: a tool on page 3
 * is found and called; a tool on no page fails the call at once (it was
 * never sent); a list whose cursor never ends is given up after 100
 * pages, as a server that did not start (retryable, never sent).
 */
/* FM-073 FM-080 */
START_TEST(test_mcp_list_pages)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;
	int		 ok = strcmp(pages[_i].state, "succeeded") == 0;
	int		 lost = strstr(pages[_i].word, "not sent") != NULL;

	th_far_db(&db);
	reg(db.conn, "far", pages[_i].flags, 1, 30000, pages[_i].config);
	th_far_conf(&e, &db, "mcp9", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far", "{}", 2);
	th_wait_state(db.conn, &e, step, pages[_i].state);
	if (ok) {
		ck_assert(th_log_contains(&e, pages[_i].word));
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.steps WHERE id = $1::bigint AND "
		    "result->'structuredContent'->>'name' = 'target'", 1,
		    step), 1);
	} else
		th_assert_failed(db.conn, step, pages[_i].word);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_deliveries",
	    0), ok);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.claimed'", 1, step),
	    lost ? 2 : 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Counts the steps of the test that did not end as want. */
static const char others_sql[] =
    "SELECT count(*) FROM eav.steps WHERE id = ANY($1::bigint[]) AND "
    "state <> $2";

/*
 * A result larger than max_output_bytes fails the call.  A response so
 * large it passes the line cap too (max_output_bytes + 64 KiB) is never
 * held: it is scanned to its end, its id read (first or last in the
 * message), and its call fails: the server did answer, so the outcome is
 * known (no unknown outcome, nothing kept).  The same server goes on,
 * with the call in flight beside the huge answer.
 */
/* FM-074 */
START_TEST(test_mcp_output_cap)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 at[24], over[24], huge[24], last[24], beside[24];
	char		 ids[128];

	th_far_db(&db);
	reg(db.conn, "far.small", NULL, 0, 30000, "{\"max_output_bytes\": "
	    "1000}");
	th_far_conf(&e, &db, "mcp7", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(at, sizeof(at), "%s", th_enqueue(db.conn, "far.small",
	    "{\"mode\": \"big\", \"bytes\": 900}", 1));
	th_wait_state(db.conn, &e, at, "succeeded");
	snprintf(over, sizeof(over), "%s", th_enqueue(db.conn, "far.small",
	    "{\"mode\": \"big\", \"bytes\": 2000}", 1));
	th_wait_state(db.conn, &e, over, "failed");
	th_assert_failed(db.conn, over, "result larger than 1000 bytes");
	snprintf(beside, sizeof(beside), "%s", th_enqueue(db.conn, "far.small",
	    "{\"ms\": 700}", 1));
	snprintf(huge, sizeof(huge), "%s", th_enqueue(db.conn, "far.small",
	    "{\"mode\": \"big\", \"bytes\": 200000, \"ms\": 100}", 1));
	snprintf(last, sizeof(last), "%s", th_enqueue(db.conn, "far.small",
	    "{\"mode\": \"big\", \"bytes\": 300000, \"id_last\": true, "
	    "\"ms\": 200}", 1));
	th_wait_settled(db.conn, &e, "far.small", DEADLINE_MS);
	th_assert_failed(db.conn, huge, "response larger than 66536 bytes "
	    "(2000");
	th_assert_failed(db.conn, last, "response larger than 66536 bytes "
	    "(3000");
	snprintf(ids, sizeof(ids), "{%s,%s}", at, beside);
	ck_assert_int_eq(th_ll(db.conn, others_sql, 2, ids, "succeeded"), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT length(result->'content'->0->>"
	    "'text') FROM eav.steps WHERE id = $1::bigint", 1, at), 900);
	/* Answered, not lost: one server throughout, no unknown outcome. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT pid) FROM "
	    "far_deliveries", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_deliveries",
	    0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	ck_assert(th_log_contains(&e, "with a response larger than 66536 "
	    "bytes"));
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A notification or a request from the server over the line cap is
 * dropped (logged; the request answered with an error, so the server
 * need not wait), and the call it came with goes on, on the same server.
 */
/* FM-081 */
START_TEST(test_mcp_oversize_message)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 notify[24], request[24], ids[64];

	th_far_db(&db);
	reg(db.conn, "far.once", NULL, 0, 30000, NULL);
	th_far_conf(&e, &db, "mcp10", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(notify, sizeof(notify), "%s", th_enqueue(db.conn, "far.once",
	    "{\"mode\": \"big_notify\", \"bytes\": 200000}", 1));
	snprintf(request, sizeof(request), "%s", th_enqueue(db.conn,
	    "far.once", "{\"mode\": \"big_request\", \"bytes\": 300000}",
	    1));
	th_wait_settled(db.conn, &e, "far.once", DEADLINE_MS);
	snprintf(ids, sizeof(ids), "{%s,%s}", notify, request);
	ck_assert_int_eq(th_ll(db.conn, others_sql, 2, ids, "succeeded"), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND result->'structuredContent'->"
	    "'client_answer'->'error'->>'code' = '-32600' AND "
	    "result->'structuredContent'->'client_answer'->'error'->>"
	    "'message' = 'request larger than 131072 bytes, not read'", 1,
	    request), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT pid) FROM "
	    "far_deliveries", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	ck_assert(th_log_contains(&e, "sent a notification "
	    "notifications/message of 2000"));
	ck_assert(th_log_contains(&e, "sent a request sampling/createMessage "
	    "of 3000"));
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A server that writes a line without end is read past, a slice at a
 * time, without holding the worker's loop: the call's timeout_ms still
 * fires (unknown, tool_timeout) and the server is killed.
 */
/* FM-072 */
START_TEST(test_mcp_endless_line)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "far.slow", NULL, 1, 500, NULL);
	th_far_conf(&e, &db, "mcp11", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far.slow", "{\"mode\": \"endless\"}", 1);
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_int_eq(unknowns(db.conn, step, "tool_timeout", "timed out "
	    "after 500 ms%"), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND result IS NULL", 1, step), 1);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Texts the scanner is held to jansson's parser on, and mutated. */
static const char *const jscan_texts[] = {
	"{}", "  {\"a\":{}}  \r", "[1]", "", "   ", "{\"id\":1,\"result\":{}}",
	"{\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"xx\"}]},"
	    "\"id\":42,\"jsonrpc\":\"2.0\"}",
	"{\"method\":\"notifications/x\",\"params\":{\"p\":[true,false,"
	    "null]}}",
	"{\"a\":[1,2,{\"b\":null}],\"id\":-0.5e+3,\"error\":{\"code\":1}}",
	"{\"id\":\"x\\u00e9\\ud83d\\ude00\\n\\\"\"}", "{\"\\u0069d\":7}",
	"{\"s\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}",
	"{\"id\":1,\"id\":2}", "{\"a\":tru}", "{\"a\":01}", "{\"a\":1.}",
	"{\"a\":1e}", "{\"a\":-}", "{\"a\":1E+2,\"b\":0.25e-1}",
	"{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\u0000\"}",
	"{\"a\":\"\x01\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}",
	"{\"a\":\"\xf4\x90\x80\x80\"}", "{\"a\":\"\\x\"}", "{\"a\":1}}",
	"{\"a\":1,}", "{,}", "{\"a\" 1}", "{\"a\":[1,]}", "{\"a\":[]}",
};

/* jscan's verdict on a text fed step bytes at a time (jscan_end's). */
static int
scan(struct jscan *js, const char *text, size_t len, size_t step)
{
	static const char *const names[] = { "id", "method", "result",
		"error", NULL };
	size_t			 i;

	jscan_init(js, names);
	for (i = 0; i < len; i += step)
		if (jscan_feed(js, text + i, len - i < step ? len - i : step) ==
		    -1)
			return -1;
	return jscan_end(js);
}

/*
 * Asserts jscan judges text as jansson does (fed whole and a byte at a
 * time), but for what it does not check (the range of numbers, keys
 * twice below the top level), and keeps the named members' values.
 */
static void
agree(const char *text, size_t len)
{
	const char *const	 names[] = { "id", "method", "result",
				    "error" };
	const struct jscan_member *m;
	struct jscan		 js;
	json_error_t		 jerr;
	json_t			*v, *kept;
	int			 rc = scan(&js, text, len, len > 0 ? len : 1);
	size_t			 i;

	ck_assert_int_eq(scan(&js, text, len, 1), rc);
	v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (rc == 1 || (v == NULL && rc == 0 && (strstr(jerr.text, "too big")
	    || strstr(jerr.text, "overflow") || strstr(jerr.text,
	    "duplicate")))) {
		ck_assert_ptr_null(v);
		return;
	}
	ck_assert_msg((rc == 0) == json_is_object(v), "jscan %d (%s), jansson "
	    "%s: %.*s", rc, js.err, v != NULL ? "ok" : jerr.text, (int)len,
	    text);
	for (i = 0; v != NULL && i < sizeof(names) / sizeof(names[0]); i++) {
		m = jscan_member(&js, names[i]);
		ck_assert_int_eq(m->seen, json_object_get(v, names[i]) != NULL);
		if (!m->seen || m->len > JSCAN_RAW)
			continue;
		kept = json_loadb(m->raw, m->len, JSON_DECODE_ANY, NULL);
		ck_assert(json_equal(kept, json_object_get(v, names[i])));
		json_decref(kept);
	}
	json_decref(v);
}

/* Changes, adds or drops a random byte of buf, 3 times; its new length. */
static size_t
mutate(char *buf, size_t len, unsigned long long *x)
{
	static const char	alpha[] = "{}[]\":,019-+.eEtrulsn \\u\x01"
				    "\xc3\xa9\xed\xf0\x9fidmethodresult";
	size_t			pos;
	char			c;
	int			k;

	for (k = 0; k < 3; k++) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		pos = (size_t)(*x >> 8) % (len + 1);
		c = alpha[(*x >> 40) % (sizeof(alpha) - 1)];
		if (*x % 3 == 0 && pos < len)
			buf[pos] = c;
		else if (*x % 3 == 1) {
			memmove(buf + pos + 1, buf + pos, len - pos);
			buf[pos] = c;
			len++;
		} else if (pos < len) {
			memmove(buf + pos, buf + pos + 1, len - pos - 1);
			len--;
		}
	}
	return len;
}

/*
 * The scanner that judges a line over the cap agrees with jansson, which
 * judges every other line: on texts made to break each rule, on random
 * mutations of them, and at jansson's nesting limit.
 */
/* FM-074 */
START_TEST(test_mcp_jscan)
{
	const size_t		 ntexts = sizeof(jscan_texts) /
				    sizeof(jscan_texts[0]);
	unsigned long long	 x = 88172645463325252ULL;
	static char		 buf[2 * JSCAN_DEPTH + 64];
	size_t			 i, len;
	int			 k;

	for (i = 0; i < ntexts; i++)
		agree(jscan_texts[i], strlen(jscan_texts[i]));
	for (i = 0; i < 200000; i++) {
		len = strlen(jscan_texts[i % ntexts]);
		memcpy(buf, jscan_texts[i % ntexts], len);
		agree(buf, mutate(buf, len, &x));
	}
	for (k = JSCAN_DEPTH - 1; k <= JSCAN_DEPTH; k++) {
		len = (size_t)snprintf(buf, sizeof(buf), "{\"a\":");
		memset(buf + len, '[', (size_t)k);
		memset(buf + len + k, ']', (size_t)k);
		len += 2 * (size_t)k;
		buf[len++] = '}';
		agree(buf, len);
	}
}
END_TEST

/* Asserts the server's environment is empty. */
static void
assert_environ(pid_t pid)
{
	char	path[64], buf[16384];
	ssize_t	n;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	ck_assert_int_ge(n = th_read_file(path, buf, sizeof(buf)), 0);
	ck_assert_msg(n == 0, "the MCP server got %s", buf);
}

/*
 * What the server sees: fds 0-2 only (not the worker's libpq socket),
 * its allowlist only (not EAV_DSN, PGPASSWORD or an EAV_* secret, even
 * if a hand-edited config names them: here its environment is empty,
 * so it records nothing and opens no descriptor of its own), a process
 * group of its own.
 */
/* FM-075 */
START_TEST(test_mcp_isolation)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;
	char		 state;
	pid_t		 pid, pg;

	th_far_db(&db);
	reg(db.conn, "far.iso", NULL, 1, 30000, NULL);
	PQclear(th_exec(db.conn, "UPDATE eav.tools SET config = jsonb_set("
	    "config, '{env}', '[\"EAV_DSN\", \"PGPASSWORD\", "
	    "\"EAV_TEST_CANARY\"]') WHERE name = 'far.iso'", 0));
	th_far_conf(&e, &db, "mcp8", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far.iso", "{}", 1);
	th_wait_state(db.conn, &e, step, "succeeded");
	pid = (pid_t)server_pid(db.conn, step);
	th_assert_fds(pid);
	assert_environ(pid);
	ck_assert_int_eq(th_proc_stat(pid, &state, &pg), 0);
	ck_assert_int_eq(pg, pid);
	ck_assert_int_ne(pg, getpgrp());
	ck_assert(th_log_contains(&e, "not passing EAV_DSN"));
	ck_assert(th_log_contains(&e, "not passing PGPASSWORD"));
	th_eavd_stop_ok(&e);
	ck_assert(th_wait_gone(pid, "--marker=", 5000));
	th_db_free(&db);
}
END_TEST

/*
 * The process groups of pid's children (a worker's MCP servers).  A
 * child still in pid's own group (forked a moment ago, not yet moved to
 * its own, so not yet able to exec) is left out: its group is eavd's,
 * whose other members are no server's.
 */
static int
child_groups(pid_t parent, pid_t *groups, int max)
{
	DIR		*d = opendir("/proc");
	struct dirent	*de;
	char		 path[64], buf[1024], *p, state;
	int		 n = 0, pid, ppid, pg;
	pid_t		 own;

	ck_assert_int_eq(th_proc_stat(parent, &state, &own), 0);
	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL && n < max) {
		if ((pid = atoi(de->d_name)) <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
		if (th_read_file(path, buf, sizeof(buf)) <= 0 ||
		    (p = strrchr(buf, ')')) == NULL ||
		    sscanf(p + 1, " %c %d %d", &state, &ppid, &pg) != 3)
			continue;
		if ((pid_t)ppid == parent && state != 'Z' && (pid_t)pg != own)
			groups[n++] = (pid_t)pg;
	}
	closedir(d);
	return n;
}

/* Live processes (of mcpd, by its marker) in any of the groups. */
static int
live_in_groups(const pid_t *groups, int n, const char *mark, int loud)
{
	DIR		*d = opendir("/proc");
	struct dirent	*de;
	char		 state;
	pid_t		 pid, pg;
	int		 i, live = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL) {
		if ((pid = (pid_t)atoi(de->d_name)) <= 0 ||
		    th_proc_stat(pid, &state, &pg) == -1 || th_gone(pid, mark))
			continue;
		for (i = 0; i < n; i++)
			if (pg == groups[i]) {
				if (loud)
					printf("survivor: pid %d state %c "
					    "group %d\n", (int)pid, state,
					    (int)pg);
				live++;
			}
	}
	closedir(d);
	return live;
}

/*
 * SIGKILLs the worker of call k and waits until its attempt is closed;
 * the groups of its servers must be dead by then (eavd kills them before
 * it reconciles).  Returns 1 if the call was interrupted.
 */
static int
kill_call(PGconn *c, const struct th_eavd *e, const struct th_call *k,
    const char *mark, int *survivors)
{
	pid_t		groups[MAX_GROUPS];
	int		n = child_groups(k->owner, groups, MAX_GROUPS);
	long long	until;

	ck_assert_int_eq(kill(k->owner, SIGKILL), 0);
	ck_assert_msg(th_wait(c, DEADLINE_MS, "SELECT NOT (state = 'running' "
	    "AND claim_epoch = $2::bigint) FROM eav.steps WHERE id = "
	    "$1::bigint", 2, k->step, k->epoch), "step %s was not reconciled "
	    "(log %s)", k->step, e->log);
	/*
	 * A step that completed just before the kill is "not running" before
	 * eavd has even reaped the worker and killed its groups: give eavd a
	 * deadline, then count what is still alive.
	 */
	until = th_now_ms() + GROUP_KILL_MS;
	while (live_in_groups(groups, n, mark, 0) > 0 && th_now_ms() < until)
		th_pause_ms(5);
	*survivors += live_in_groups(groups, n, mark, 1);
	return th_ll(c, "SELECT count(*) FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint AND claim_epoch = $2::bigint AND "
	    "detected_by = 'worker_exit'", 2, k->step, k->epoch) > 0;
}

/* Calls that record after a random pause and answer a random while on. */
static const char record_sql[] =
    "SELECT count(eav.enqueue($1, jsonb_build_object('before_ms',"
    " floor(random() * 150)::int, 'ms', floor(random() * 150)::int),"
    " 'default', 'k', 1000)) FROM generate_series(1, $2::int)";

/*
 * SIGKILLs of workers in the middle of MCP calls of an idempotent tool
 * whose far side dedupes by the _meta key: after each, no process of the
 * worker's servers' groups is alive once the step is reconciled; at the
 * end every step succeeded with exactly one effect for its key.
 */
/* FM-076 */
START_TEST(test_mcp_kill_idempotent)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct th_call	 k;
	char		 mark[128], age[16];
	long long	 start = th_now_ms(), steps, deliveries, effects;
	int		 kills = 0, interrupted = 0, survivors = 0;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	srandom((unsigned)getpid());
	reg(db.conn, "far", NULL, 1, 30000, NULL);
	th_far_conf(&e, &db, "mcpk1", 3, 2);
	th_eavd_up(&e, db.conn, 3);
	while (interrupted < KILLS) {
		ck_assert_msg(th_now_ms() - start < KILL_MS, "only %d of %d "
		    "kills interrupted a call (log %s)", interrupted, kills,
		    e.log);
		if (th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
		    "state IN ('pending', 'running')", 0) < 8)
			PQclear(th_exec(db.conn, record_sql, 2, "far", "8"));
		snprintf(age, sizeof(age), "%ld", 30 + random() % 220);
		if (!th_pick_call(db.conn, e.pid, "far", age, &k)) {
			th_pause_ms(5);
			continue;
		}
		kills++;
		interrupted += kill_call(db.conn, &e, &k, mark, &survivors);
		th_pause_ms(10 + random() % 30);
	}
	ck_assert_int_eq(survivors, 0);
	th_wait_settled(db.conn, &e, "far", (int)(start + KILL_TOTAL_MS -
	    th_now_ms()));
	steps = th_ll(db.conn, "SELECT count(*) FROM eav.steps", 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state <> 'succeeded'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "WHERE (SELECT count(*) FROM far_effects f WHERE f.key = "
	    "s.idempotency_key) <> 1", 0), 0);
	effects = th_ll(db.conn, "SELECT count(*) FROM far_effects", 0);
	ck_assert_int_eq(effects, steps);
	deliveries = th_ll(db.conn, "SELECT count(*) FROM far_deliveries", 0);
	ck_assert_int_ge(deliveries, effects);
	th_assert_sound(db.conn);
	printf("mcp kills: %d kills, %d calls interrupted, %lld steps, "
	    "%lld deliveries, %lld effects, deliveries/effects %.3f\n", kills,
	    interrupted, steps, deliveries, effects,
	    (double)deliveries / (double)effects);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* A step whose non-idempotent call is held, its attempt unknown. */
static const char held_sql[] =
    "SELECT count(*) FROM eav.steps s WHERE s.id = $1::bigint AND"
    " s.state = 'held' AND s.held_reason = 'unknown_outcome' AND"
    " s.result IS NULL AND EXISTS (SELECT 1 FROM eav.unknown_outcomes u"
    " WHERE u.step_id = s.id AND u.detected_by = 'worker_exit') AND"
    " EXISTS (SELECT 1 FROM eav.alarms a WHERE a.subject = 'step:' || s.id"
    " AND a.state = 'open')";

/* Times step was claimed, and called (the far side records each call). */
static const char runs_sql[] =
    "SELECT (SELECT count(*) FROM eav.audit_events WHERE step_id = "
    "$1::bigint AND type = 'step.claimed') * 1000 + (SELECT count(*) FROM "
    "far_deliveries WHERE step = $1::bigint)";

/*
 * Enqueues two calls of far.once that reach the far side, then hold
 * their answers; waits until both are recorded there.  Fills steps.
 */
static void
two_calls(PGconn *c, const struct th_eavd *e, char steps[2][24])
{
	int	i;

	for (i = 0; i < 2; i++)
		snprintf(steps[i], sizeof(steps[i]), "%s", th_enqueue(c,
		    "far.once", "{\"ms\": 60000}", 3));
	ck_assert_msg(th_wait(c, DEADLINE_MS, "SELECT count(DISTINCT step) = 2 "
	    "FROM far_deliveries WHERE step IN ($1::bigint, $2::bigint)", 2,
	    steps[0], steps[1]), "calls %s and %s never reached the far side "
	    "(log %s)", steps[0], steps[1], e->log);
}

/*
 * SIGKILLs of a worker with two calls of a non-idempotent tool in flight
 * on its MCP server, after the far side ran them: once eavd has
 * reconciled them (a poll with a deadline), no process of the server's
 * group is alive (/proc), and each step is held with an unknown outcome
 * (worker_exit) and an open alarm.  It is never run again by itself:
 * after the last kill a new worker runs a call of the same tool, and
 * still each held step was claimed once and reached the far side once.
 */
/* FM-076 */
START_TEST(test_mcp_kill_non_idempotent)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct th_call	 k;
	char		 mark[128], steps[HELD_ROUNDS][2][24];
	const char	*after;
	int		 r, i, survivors = 0;
	pid_t		 server;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	reg(db.conn, "far.once", "[\"--every\"]", 0, 120000, NULL);
	th_far_conf(&e, &db, "mcpk3", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	for (r = 0; r < HELD_ROUNDS; r++) {
		two_calls(db.conn, &e, steps[r]);
		server = (pid_t)th_ll(db.conn, "SELECT pid FROM far_deliveries "
		    "WHERE step = $1::bigint", 1, steps[r][0]);
		ck_assert(th_pick_call(db.conn, e.pid, "far.once", "0", &k));
		ck_assert_int_eq(kill_call(db.conn, &e, &k, mark, &survivors),
		    1);
		ck_assert_msg(th_gone(server, mark), "MCP server %d outlived "
		    "the reconcile of its worker %d", (int)server,
		    (int)k.owner);
		for (i = 0; i < 2; i++) {
			th_wait_state(db.conn, &e, steps[r][i], "held");
			ck_assert_int_eq(th_ll(db.conn, held_sql, 1,
			    steps[r][i]), 1);
		}
	}
	ck_assert_int_eq(survivors, 0);
	/* A new worker works the same tool; the held steps stay as they are. */
	after = th_enqueue(db.conn, "far.once", "{}", 1);
	th_wait_state(db.conn, &e, after, "succeeded");
	for (r = 0; r < HELD_ROUNDS; r++)
		for (i = 0; i < 2; i++) {
			ck_assert_int_eq(th_ll(db.conn, runs_sql, 1,
			    steps[r][i]), 1001);
			ck_assert_int_eq(th_ll(db.conn, held_sql, 1,
			    steps[r][i]), 1);
		}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_deliveries",
	    0), 2 * HELD_ROUNDS + 1);
	th_assert_sound(db.conn);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A worker SIGKILLed while its server holds a call and a grandchild in
 * its group: eavd kills the group before it reconciles the step, so
 * neither survives (by pid, and by a scan of /proc for mcpd's marker).
 */
/* FM-076 */
START_TEST(test_mcp_kill_no_grandchild)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct th_call	 k;
	const char	*step;
	char		 input[640], path[256], mark[128], state;
	pid_t		 pid, child, pg;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	reg(db.conn, "far.once", NULL, 0, 60000, NULL);
	th_far_conf(&e, &db, "mcpk2", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(path, sizeof(path), "%s/%s.pid", th_tmpdir(), db.name);
	snprintf(input, sizeof(input), "{\"mode\": \"grandchild\", \"ms\": "
	    "60000, \"pidfile\": \"%s\"}", path);
	step = th_enqueue(db.conn, "far.once", input, 5);
	ck_assert_int_eq(th_read_pidfile(path, &pid, &child), 0);
	ck_assert_int_eq(th_proc_stat(child, &state, &pg), 0);
	ck_assert_int_eq(pg, pid);
	ck_assert_int_eq(th_count_live(mark, NULL, NULL), 2);
	ck_assert(th_pick_call(db.conn, e.pid, "far.once", "0", &k));
	ck_assert_str_eq(k.step, step);
	ck_assert_int_eq(kill_call(db.conn, &e, &k, mark, &(int){ 0 }), 1);
	ck_assert_msg(th_gone(pid, mark) && th_gone(child, mark), "server %d "
	    "or its child %d outlived the worker's reconcile", (int)pid,
	    (int)child);
	ck_assert_int_eq(th_count_live(mark, NULL, NULL), 0);
	th_wait_state(db.conn, &e, step, "held");
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

Suite *
suite_mcp(void)
{
	Suite	*s = suite_create("mcp");
	TCase	*tc = tcase_create("mcp");
	TCase	*kills = tcase_create("kills");

	tcase_add_test(tc, test_mcp_succeeded);
	tcase_add_test(tc, test_mcp_errors);
	tcase_add_test(tc, test_mcp_crash);
	tcase_add_loop_test(tc, test_mcp_protocol_broken, 0,
	    (int)(sizeof(breaches) / sizeof(breaches[0])));
	tcase_add_test(tc, test_mcp_timeout);
	tcase_add_loop_test(tc, test_mcp_no_start, 0,
	    (int)(sizeof(no_start) / sizeof(no_start[0])));
	tcase_add_loop_test(tc, test_mcp_list_pages, 0,
	    (int)(sizeof(pages) / sizeof(pages[0])));
	tcase_add_test(tc, test_mcp_jscan);
	tcase_add_test(tc, test_mcp_output_cap);
	tcase_add_test(tc, test_mcp_oversize_message);
	tcase_add_test(tc, test_mcp_endless_line);
	tcase_add_test(tc, test_mcp_isolation);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	tcase_add_test(kills, test_mcp_kill_no_grandchild);
	tcase_add_test(kills, test_mcp_kill_non_idempotent);
	tcase_add_test(kills, test_mcp_kill_idempotent);
	tcase_set_timeout(kills, 200);
	suite_add_tcase(s, kills);
	return s;
}
