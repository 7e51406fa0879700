/*
 * The exec tool, for real: eavd runs tests/far/recorder (built into the
 * build directory) as exec tools registered through eav.tool_register.
 * One test per outcome mapping (exit 0 with JSON, output that is not
 * JSON or over the cap, exit 75, other exits, a program that cannot
 * start, time-out and signal: unknown), what the program can see (only
 * fds 0-2, only its allowlisted environment, its own process group, its
 * rlimits), and SIGKILLs of the worker in the middle of calls: the
 * program and its grandchildren die before the step is reconciled, an
 * idempotent far side has at most one effect per key, a non-idempotent
 * one is never called again by itself.
 */
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define DEADLINE_MS	30000
#define KILLS		50
#define KILL_MS		150000	/* deadline of the kills */
#define KILL_TOTAL_MS	200000	/* and of the drain (timeout 240 s) */
#define HELD_KILLS	10

/* Registers the recorder as tool name; flag: NULL or "--every". */
static const char register_sql[] =
    "SELECT eav.tool_register($1, 'exec', jsonb_build_object('argv',"
    " jsonb_build_array($2::text, '--marker=' || current_database())"
    " || CASE WHEN $3::text IS NULL THEN '[]' ELSE jsonb_build_array($3::text)"
    " END, 'env',"
    " '[\"RECORDER_DSN\"]'::jsonb) || $4::jsonb, $5::boolean, $6::int)";

/* Registers the recorder; extra is more config (a JSON object). */
static void
reg(PGconn *c, const char *name, int every, int idempotent, int timeout_ms,
    const char *extra)
{
	char	t[16];

	snprintf(t, sizeof(t), "%d", timeout_ms);
	PQclear(th_exec(c, register_sql, 6, name, th_bin("recorder"),
	    every ? "--every" : NULL, extra ? extra : "{}",
	    idempotent ? "true" : "false", t));
}

/*
 * exit 0 with JSON on stdout: succeeded with that result.  The program
 * got the step's input on stdin and the call's identity in EAV_*; in
 * record mode its far side has the effect, keyed by the step's key.
 */
START_TEST(test_exec_succeeded)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "exec1", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "rec", "{\"mode\": \"echo\", \"n\": 42, "
	    "\"s\": \"caf\\u00e9 \\u2603\"}", 1);
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.tasks t ON t.id = s.task_id WHERE s.id = $1::bigint "
	    "AND s.result->'input' = s.input "
	    "AND s.result->'env'->>'EAV_IDEMPOTENCY_KEY' = s.idempotency_key "
	    "AND s.result->'env'->>'EAV_STEP_ID' = s.id::text "
	    "AND s.result->'env'->>'EAV_TASK_ID' = s.task_id::text "
	    "AND s.result->'env'->>'EAV_ATTEMPT' = '1' "
	    "AND s.result->'env'->>'EAV_TRACE_ID' = s.trace_id::text "
	    "AND t.state = 'succeeded'", 1, step), 1);
	step = th_enqueue(db.conn, "rec", "{}", 1);
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN far_effects f ON f.key = s.idempotency_key AND f.step = s.id "
	    "WHERE s.id = $1::bigint AND s.result->>'effect' = 'true' AND "
	    "s.result->>'key' = s.idempotency_key", 1, step), 1);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Outputs of exit 0 that are not one JSON value in UTF-8. */
static const char *const not_json[] = {
	"{\"mode\": \"text\", \"text\": \"not json\"}",
	"{\"mode\": \"text\", \"text\": \"\"}",
	"{\"mode\": \"text\", \"text\": \"  \\n\"}",
	"{\"mode\": \"text\", \"text\": \"{\\\"a\\\": 1, \\\"a\\\": 2}\"}",
	"{\"mode\": \"text\", \"text\": \"{}{}\"}",
	"{\"mode\": \"text\", \"text\": \"{\\\"a\\\": 1,}\"}",
	"{\"mode\": \"text\", \"text\": \"NaN\"}",
	"{\"mode\": \"text\", \"text\": \"0012\"}",
	"{\"mode\": \"text\", \"text\": \"\\\"\\\\u0000\\\"\"}",
	"{\"mode\": \"text\", \"text\": \"\\\"\\\\ud800\\\"\"}",
	"{\"mode\": \"text\", \"text\": \"\\ufeff{}\"}",
	"{\"mode\": \"text\", \"text\": \"99999999999999999999999\"}",
	"{\"mode\": \"hex\", \"hex\": \"22ff22\"}",
	"{\"mode\": \"hex\", \"hex\": \"22c0af22\"}",
	"{\"mode\": \"hex\", \"hex\": \"22eda08022\"}",
	"{\"mode\": \"hex\", \"hex\": \"22e28222\"}",
	"{\"mode\": \"hex\", \"hex\": \"22f490808022\"}",
};

/*
 * exit 0 whose stdout is not JSON (empty, garbage, duplicate keys,
 * trailing data, NaN, NUL, lone surrogate, BOM, overflow, invalid UTF-8,
 * nesting 10,000 deep): failed with a clear message, no result kept, the
 * worker unharmed.
 */
/* FM-052 */
START_TEST(test_exec_not_json)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 steps[24][24];
	size_t		 i, n = sizeof(not_json) / sizeof(not_json[0]);

	th_far_db(&db);
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "exec2", 1, 8);
	th_eavd_up(&e, db.conn, 1);
	for (i = 0; i < n; i++)
		snprintf(steps[i], sizeof(steps[i]), "%s",
		    th_enqueue(db.conn, "rec", not_json[i], 1));
	snprintf(steps[n], sizeof(steps[n]), "%lld", th_ll(db.conn, "SELECT "
	    "eav.step_id(eav.enqueue('rec', jsonb_build_object('mode', "
	    "'text', 'text', repeat('[', 10000))), 1)", 0));
	th_wait_settled(db.conn, &e, "rec", DEADLINE_MS);
	for (i = 0; i <= n; i++)
		th_assert_failed(db.conn, steps[i], "stdout is ");
	th_assert_failed(db.conn, steps[1], "stdout is empty");
	th_assert_failed(db.conn, steps[3], "duplicate object key");
	th_assert_failed(db.conn, steps[12], "stdout is not valid JSON: unable "
	    "to decode byte 0xff");
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * stdout at the cap is kept; one byte over, or 2 MB over, fails the call
 * ("output larger than N bytes") and kills the program at once.
 */
/* FM-053 */
START_TEST(test_exec_output_cap)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 at[24], over[24], huge[24];

	th_far_db(&db);
	reg(db.conn, "rec.small", 0, 1, 30000, "{\"max_output_bytes\": 100}");
	ck_assert_int_eq(th_ll(db.conn, "SELECT max_output_bytes FROM "
	    "eav.tools WHERE name = 'rec.small'", 0), 100);
	th_far_conf(&e, &db, "exec3", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(at, sizeof(at), "%s", th_enqueue(db.conn, "rec.small",
	    "{\"mode\": \"big\", \"bytes\": 100}", 1));
	snprintf(over, sizeof(over), "%s", th_enqueue(db.conn, "rec.small",
	    "{\"mode\": \"big\", \"bytes\": 101}", 1));
	snprintf(huge, sizeof(huge), "%s", th_enqueue(db.conn, "rec.small",
	    "{\"mode\": \"big\", \"bytes\": 2000000}", 1));
	th_wait_settled(db.conn, &e, "rec.small", DEADLINE_MS);
	ck_assert_int_eq(th_ll(db.conn, "SELECT length(result #>> '{}') FROM "
	    "eav.steps WHERE id = $1::bigint AND state = 'succeeded'", 1, at),
	    97);
	th_assert_failed(db.conn, over, "output larger than 100 bytes");
	th_assert_failed(db.conn, huge, "output larger than 100 bytes");
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * exit 75 (EX_TEMPFAIL) is retryable: retried with back-off until
 * max_attempts, then failed; a program that succeeds on its second
 * attempt ends succeeded.
 */
/* FM-054 */
START_TEST(test_exec_tempfail_retried)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 flaky[24], down[24];

	th_far_db(&db);
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "exec4", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(flaky, sizeof(flaky), "%s", th_enqueue(db.conn, "rec",
	    "{\"mode\": \"exit\", \"code\": 75, \"succeed_from\": 2}", 3));
	snprintf(down, sizeof(down), "%s", th_enqueue(db.conn, "rec",
	    "{\"mode\": \"exit\", \"code\": 75, \"stderr\": \"busy\"}", 3));
	th_wait_settled(db.conn, &e, "rec", DEADLINE_MS);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND state = 'succeeded' AND attempt = 2", 1,
	    flaky), 1);
	th_assert_failed(db.conn, down, "exited with code 75 (temporary "
	    "failure); stderr: busy");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.retry_scheduled' AND "
	    "outcome = 'failure'", 1, down), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.claimed'", 1, down),
	    3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * Any other exit code fails at once, naming the code and the start of
 * stderr (made printable: invalid UTF-8 and newlines escaped).
 */
/* FM-054 */
START_TEST(test_exec_exit_failed)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "exec5", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "rec", "{\"mode\": \"exit\", \"code\": 3, "
	    "\"stderr\": \"boom \\u00e9\", \"stderr_hex\": \"ff0a00\"}", 5);
	th_wait_state(db.conn, &e, step, "failed");
	th_assert_failed(db.conn, step, "exited with code 3; stderr: boom "
	    "\xc3\xa9\\xff\\n\\x00");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.claimed'", 1, step),
	    1);
	ck_assert(th_log_contains(&e, "stderr: boom"));
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A program that cannot be executed fails, saying why; nothing ran.  A
 * message cut to fit (a 4000-byte path of two-byte characters) stays
 * valid UTF-8, and the worker goes on.
 */
/* FM-054 */
START_TEST(test_exec_cannot_start)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 step[24];

	th_far_db(&db);
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('missing', "
	    "'exec', '{\"argv\": [\"/nonexistent/eav-test-program\"]}', "
	    "true)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('long', 'exec', "
	    "jsonb_build_object('argv', jsonb_build_array('/' || "
	    "repeat('\u00e9', 2000))), true)", 0));
	th_far_conf(&e, &db, "exec6", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(step, sizeof(step), "%s", th_enqueue(db.conn, "missing", "{}",
	    5));
	th_wait_state(db.conn, &e, step, "failed");
	th_assert_failed(db.conn, step, "cannot run /nonexistent/eav-test-"
	    "program: execve: No such file or directory");
	snprintf(step, sizeof(step), "%s", th_enqueue(db.conn, "long", "{}",
	    5));
	th_wait_state(db.conn, &e, step, "failed");
	th_assert_failed(db.conn, step, "cannot run /\u00e9\u00e9");
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * The tool's timeout_ms: the program's whole group is SIGKILLed and the
 * outcome is unknown (tool_timeout).  Idempotent: back to pending with
 * the same key, so the far side dedupes the second delivery; with the
 * attempts spent, held with an alarm.
 */
/* FM-055 */
START_TEST(test_exec_timeout_retried)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "rec.slow", 0, 1, 400, NULL);
	th_far_conf(&e, &db, "exec7", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "rec.slow", "{\"after_ms\": 60000}", 2);
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND "
	    "detected_by = 'tool_timeout' AND reason LIKE 'timed out after "
	    "400 ms%'", 1, step), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND "
	    "((attempt = 1 AND decision = 'retry') OR (attempt = 2 AND "
	    "decision = 'held'))", 1, step), 2);
	/* Both attempts reached the far side with the same key; one effect. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_deliveries d "
	    "JOIN eav.steps s ON s.id = d.step AND s.idempotency_key = d.key "
	    "WHERE s.id = $1::bigint AND d.attempt IN (1, 2)", 1, step), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM far_effects", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "a JOIN eav.steps s ON s.id = a.step_id WHERE s.id = $1::bigint "
	    "AND a.type = 'step.retry_scheduled' AND a.outcome = 'unknown' AND "
	    "a.payload->>'idempotency_key' = s.idempotency_key", 1, step), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.alarms a ON a.subject = 'step:' || s.id WHERE s.id = "
	    "$1::bigint AND s.held_reason = 'attempts_exhausted' AND "
	    "a.state = 'open'", 1, step), 1);
	th_assert_sound(db.conn);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A time-out of a non-idempotent tool: held with an alarm, never claimed
 * again; the program and the grandchild it left in its group are dead.
 */
/* FM-055 */
START_TEST(test_exec_timeout_held)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;
	char		 input[512], path[256], mark[128];
	pid_t		 pid, child;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	reg(db.conn, "rec.once", 0, 0, 500, NULL);
	th_far_conf(&e, &db, "exec8", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(path, sizeof(path), "%s/%s.pid", th_tmpdir(), db.name);
	snprintf(input, sizeof(input), "{\"mode\": \"grandchild\", \"ms\": "
	    "60000, \"pidfile\": \"%s\"}", path);
	step = th_enqueue(db.conn, "rec.once", input, 5);
	ck_assert_int_eq(th_read_pidfile(path, &pid, &child), 0);
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_msg(th_wait_gone(pid, mark, 2000) && th_wait_gone(child, mark,
	    2000), "program %d or its child %d outlived the time-out",
	    (int)pid, (int)child);
	ck_assert_int_eq(th_count_live(mark, NULL, NULL), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND "
	    "detected_by = 'tool_timeout' AND decision = 'held'", 1, step), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.alarms a ON a.subject = 'step:' || s.id WHERE s.id = "
	    "$1::bigint AND s.held_reason = 'unknown_outcome' AND "
	    "a.type = 'unknown_outcome_held' AND a.state = 'open'", 1, step),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'step.claimed'", 1, step),
	    1);
	th_assert_sound(db.conn);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* A program killed by a signal: unknown (tool_signal), as for a time-out. */
/* FM-056 */
START_TEST(test_exec_signal_unknown)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;

	th_far_db(&db);
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "exec9", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "rec", "{\"mode\": \"signal\", "
	    "\"signal\": 9}",
	    2);
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND "
	    "detected_by = 'tool_signal' AND reason = 'killed by signal 9 "
	    "(Killed)'", 1, step), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events "
	    "WHERE step_id = $1::bigint AND type = 'tool_call.unknown' AND "
	    "payload->>'detected_by' = 'tool_signal'", 1, step), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND held_reason = 'attempts_exhausted' AND "
	    "result IS NULL", 1, step), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT sum(restarts) FROM "
	    "eav.processes", 0), 0);
	th_assert_sound(db.conn);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Asserts the program's environment: these names, and no secret. */
static void
assert_environ(pid_t pid)
{
	static const char *const names[] = { "RECORDER_DSN=",
	    "EAV_IDEMPOTENCY_KEY=", "EAV_TASK_ID=", "EAV_STEP_ID=",
	    "EAV_ATTEMPT=1", "EAV_TRACE_ID=" };
	char	path[64], buf[16384];
	ssize_t	n, i;
	size_t	k;
	int	count = 0, ok;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	ck_assert_int_gt(n = th_read_file(path, buf, sizeof(buf)), 0);
	for (i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) {
		count++;
		ck_assert_msg(strstr(buf + i, "canary") == NULL, "a secret "
		    "reached the program: %s", buf + i);
		for (ok = 0, k = 0; k < sizeof(names) / sizeof(names[0]); k++)
			ok |= strncmp(buf + i, names[k], strlen(names[k])) ==
			    0;
		ck_assert_msg(ok, "the program got %s", buf + i);
	}
	ck_assert_int_eq(count, 6);
}

/* Asserts one line of /proc/<pid>/limits: soft and hard are value. */
static void
assert_limit(pid_t pid, const char *name, const char *value)
{
	char	path[64], buf[4096], *p;

	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	ck_assert_int_gt(th_read_file(path, buf, sizeof(buf)), 0);
	ck_assert_ptr_nonnull(p = strstr(buf, name));
	p += strlen(name);
	/* Columns are padded with blanks. */
	while (*p == ' ')
		p++;
	ck_assert_msg(strncmp(p, value, strlen(value)) == 0, "%s: %.40s",
	    name, p);
	p += strlen(value);
	while (*p == ' ')
		p++;
	ck_assert_msg(strncmp(p, value, strlen(value)) == 0, "%s hard: %.40s",
	    name, p);
}

/*
 * What the program sees: only fds 0-2 (not the worker's libpq socket),
 * only the allowlist and the call's EAV_* (not EAV_DSN, PGPASSWORD or
 * EAV_* secrets, even if a hand-edited config allowlists them), a process
 * group of its own, and its rlimits.
 */
/* FM-057 */
START_TEST(test_exec_isolation)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;
	char		 input[512], path[256], state;
	pid_t		 pid, pg;

	th_far_db(&db);
	reg(db.conn, "rec.iso", 0, 1, 30000, "{\"rlimits\": {\"cpu_s\": 7, "
	    "\"nofile\": 64, \"as_mb\": 512}}");
	/* Past the SQL check, as an UPDATE by hand could be. */
	PQclear(th_exec(db.conn, "UPDATE eav.tools SET config = jsonb_set("
	    "config, '{env}', '[\"RECORDER_DSN\", \"EAV_DSN\", \"PGPASSWORD\", "
	    "\"EAV_TEST_CANARY\"]') WHERE name = 'rec.iso'", 0));
	th_far_conf(&e, &db, "exec10", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(path, sizeof(path), "%s/%s.pid", th_tmpdir(), db.name);
	snprintf(input, sizeof(input), "{\"mode\": \"hold\", \"ms\": 3000, "
	    "\"pidfile\": \"%s\"}", path);
	step = th_enqueue(db.conn, "rec.iso", input, 1);
	ck_assert_int_eq(th_read_pidfile(path, &pid, NULL), 0);
	th_assert_fds(pid);
	assert_environ(pid);
	ck_assert_int_eq(th_proc_stat(pid, &state, &pg), 0);
	ck_assert_int_eq(pg, pid);
	ck_assert_int_ne(pg, getpgrp());
	assert_limit(pid, "Max cpu time", "7");
	assert_limit(pid, "Max open files", "64");
	assert_limit(pid, "Max address space", "536870912");
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert(th_log_contains(&e, "not passing EAV_DSN"));
	ck_assert(th_log_contains(&e, "not passing PGPASSWORD"));
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* Waits (bounded) until the first attempt of step has a live program. */
static int
wait_live(const char *mark, const char *step, int timeout_ms)
{
	long long	deadline = th_now_ms() + timeout_ms;

	while (th_count_live(mark, step, "1") == 0) {
		if (th_now_ms() > deadline)
			return 0;
		th_pause_ms(5);
	}
	return 1;
}

/*
 * SIGKILLs the worker of call k and waits until its attempt is closed.
 * Returns 1 if the call was interrupted (an unknown outcome was
 * recorded), 0 if it had completed first.  An interrupted call's
 * program must already be dead: its group was killed before reconcile.
 */
static int
kill_call(PGconn *c, const struct th_eavd *e, const struct th_call *k,
    const char *mark, int *survivors)
{
	ck_assert_int_eq(kill(k->owner, SIGKILL), 0);
	ck_assert_msg(th_wait(c, DEADLINE_MS, "SELECT NOT (state = 'running' "
	    "AND claim_epoch = $2::bigint) FROM eav.steps WHERE id = "
	    "$1::bigint", 2, k->step, k->epoch), "step %s was not reconciled "
	    "(log %s)", k->step, e->log);
	if (th_ll(c, "SELECT count(*) FROM eav.unknown_outcomes WHERE "
	    "step_id = $1::bigint AND claim_epoch = $2::bigint AND "
	    "detected_by = 'worker_exit'", 2, k->step, k->epoch) == 0)
		return 0;
	*survivors += th_count_live(mark, k->step, k->attempt);
	return 1;
}

/* Calls that record after a random pause and linger a random while. */
static const char record_sql[] =
    "SELECT count(eav.enqueue($1, jsonb_build_object('mode', 'record',"
    " 'before_ms', floor(random() * 150)::int, 'after_ms',"
    " floor(random() * 150)::int), 'default', 'k', 1000))"
    " FROM generate_series(1, $2::int)";

/*
 * 50 SIGKILLs of workers in the middle of calls of an idempotent tool
 * whose far side dedupes by EAV_IDEMPOTENCY_KEY: after each, the
 * interrupted program is dead before its step is reconciled; at the end
 * every step succeeded with exactly one effect for its key, however many
 * deliveries the kills caused.
 */
/* FM-058 */
START_TEST(test_exec_kill_idempotent)
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
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "execk1", 4, 1);
	th_eavd_up(&e, db.conn, 4);
	while (interrupted < KILLS) {
		ck_assert_msg(th_now_ms() - start < KILL_MS, "only %d of %d "
		    "kills interrupted a call (log %s)", interrupted, kills,
		    e.log);
		if (th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
		    "state IN ('pending', 'running')", 0) < 8)
			PQclear(th_exec(db.conn, record_sql, 2, "rec", "8"));
		/* Some kills land before the effect, some after it. */
		snprintf(age, sizeof(age), "%ld", 30 + random() % 220);
		if (!th_pick_call(db.conn, e.pid, "rec", age, &k)) {
			th_pause_ms(5);
			continue;
		}
		kills++;
		interrupted += kill_call(db.conn, &e, &k, mark, &survivors);
		th_pause_ms(10 + random() % 30);
	}
	ck_assert_int_eq(survivors, 0);
	th_wait_settled(db.conn, &e, "rec", (int)(start + KILL_TOTAL_MS -
	    th_now_ms()));
	steps = th_ll(db.conn, "SELECT count(*) FROM eav.steps", 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state <> 'succeeded'", 0), 0);
	/* One effect per key, for every step, and none for anything else. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "WHERE (SELECT count(*) FROM far_effects f WHERE f.key = "
	    "s.idempotency_key) <> 1", 0), 0);
	effects = th_ll(db.conn, "SELECT count(*) FROM far_effects", 0);
	ck_assert_int_eq(effects, steps);
	deliveries = th_ll(db.conn, "SELECT count(*) FROM far_deliveries", 0);
	ck_assert_int_ge(deliveries, effects);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE detected_by = 'worker_exit'", 0),
	    KILLS);
	th_assert_sound(db.conn);
	printf("exec kills: %d kills, %d calls interrupted, %lld steps, "
	    "%lld deliveries, %lld effects, deliveries/effects %.3f\n", kills,
	    interrupted, steps, deliveries, effects,
	    (double)deliveries / (double)effects);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * SIGKILLs of workers in the middle of calls of a non-idempotent tool:
 * each interrupted step is held with an alarm, reached the far side at
 * most once, and is never called again by itself while the workers go on
 * with other work.
 */
/* FM-058 */
START_TEST(test_exec_kill_non_idempotent)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct th_call	 k;
	char		 mark[128], age[16];
	long long	 start = th_now_ms();
	int		 interrupted = 0, survivors = 0;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	srandom((unsigned)getpid());
	reg(db.conn, "rec.every", 1, 0, 30000, NULL);
	th_far_conf(&e, &db, "execk2", 3, 1);
	th_eavd_up(&e, db.conn, 3);
	while (interrupted < HELD_KILLS) {
		ck_assert_msg(th_now_ms() - start < KILL_MS, "only %d calls "
		    "interrupted (log %s)", interrupted, e.log);
		if (th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
		    "state IN ('pending', 'running')", 0) < 3)
			PQclear(th_exec(db.conn, record_sql, 2, "rec.every",
			    "3"));
		snprintf(age, sizeof(age), "%ld", 30 + random() % 220);
		if (!th_pick_call(db.conn, e.pid, "rec.every", age, &k)) {
			th_pause_ms(5);
			continue;
		}
		interrupted += kill_call(db.conn, &e, &k, mark, &survivors);
	}
	ck_assert_int_eq(survivors, 0);
	th_wait_settled(db.conn, &e, "rec.every", DEADLINE_MS);
	/* Workers keep working; the held steps stay held, claimed once. */
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop', '{}', "
	    "'default', 'after') FROM generate_series(1, 20)", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 20 FROM "
	    "eav.tasks WHERE kind = 'after' AND state = 'succeeded'", 0));
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'held'", 0), HELD_KILLS);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "WHERE s.tool = 'rec.every' AND ((s.state = 'held') <> EXISTS ("
	    "SELECT 1 FROM eav.unknown_outcomes u WHERE u.step_id = s.id) "
	    "OR (SELECT count(*) FROM eav.audit_events a WHERE "
	    "a.step_id = s.id "
	    "AND a.type = 'step.claimed') <> 1 OR (SELECT count(*) FROM "
	    "far_deliveries d WHERE d.step = s.id) > 1 OR (s.state = 'held' "
	    "AND NOT EXISTS (SELECT 1 FROM eav.alarms a WHERE a.subject = "
	    "'step:' || s.id AND a.state = 'open')))", 0), 0);
	th_assert_sound(db.conn);
	printf("exec non-idempotent kills: %d calls interrupted, %lld held, "
	    "%lld deliveries to them\n", interrupted, th_ll(db.conn,
	    "SELECT count(*) FROM eav.steps WHERE state = 'held'", 0),
	    th_ll(db.conn, "SELECT count(*) FROM far_deliveries d JOIN "
	    "eav.steps s ON s.id = d.step WHERE s.state = 'held'", 0));
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * A worker SIGKILLed while its program runs with a grandchild in its
 * process group: eavd kills the group before it reconciles the step, so
 * neither survives (found by pid, and by a scan of /proc for the
 * recorders' marker).
 */
/* FM-058 */
START_TEST(test_exec_kill_no_grandchild)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct th_call	 k;
	const char	*step;
	char		 input[512], path[256], mark[128], state;
	pid_t		 pid, child, pg;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	reg(db.conn, "rec.once", 0, 0, 60000, NULL);
	th_far_conf(&e, &db, "execk3", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	snprintf(path, sizeof(path), "%s/%s.pid", th_tmpdir(), db.name);
	snprintf(input, sizeof(input), "{\"mode\": \"grandchild\", \"ms\": "
	    "60000, \"pidfile\": \"%s\"}", path);
	step = th_enqueue(db.conn, "rec.once", input, 5);
	ck_assert_int_eq(th_read_pidfile(path, &pid, &child), 0);
	ck_assert_int_eq(th_proc_stat(child, &state, &pg), 0);
	ck_assert_int_eq(pg, pid);
	ck_assert_int_eq(th_count_live(mark, NULL, NULL), 2);
	ck_assert(th_pick_call(db.conn, e.pid, "rec.once", "0", &k));
	ck_assert_str_eq(k.step, step);
	ck_assert_int_eq(kill_call(db.conn, &e, &k, mark, &(int){ 0 }), 1);
	ck_assert_msg(th_gone(pid, mark) && th_gone(child, mark), "program %d "
	    "or its child %d outlived the worker's reconcile", (int)pid,
	    (int)child);
	ck_assert_int_eq(th_count_live(mark, NULL, NULL), 0);
	ck_assert(th_log_contains(&e, "of its tool (exec program"));
	th_wait_state(db.conn, &e, step, "held");
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * SIGTERM while a program runs: an exec call cannot be interrupted
 * without making its outcome unknown, so the worker waits for it (within
 * shutdown_grace) and completes it; eavd exits 0.
 */
/* FM-013 */
START_TEST(test_exec_shutdown_waits)
{
	struct th_db	 db;
	struct th_eavd	 e;
	const char	*step;
	char		 mark[128];
	int		 status;

	th_far_db(&db);
	th_marker(&db, mark, sizeof(mark));
	reg(db.conn, "rec", 0, 1, 30000, NULL);
	th_far_conf(&e, &db, "exec11", 1, 4);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "rec", "{\"mode\": \"sleep\", \"ms\": 1500}",
	    1);
	th_wait_state(db.conn, &e, step, "running");
	ck_assert_msg(wait_live(mark, step, DEADLINE_MS), "the program of "
	    "step %s never ran (log %s)", step, e.log);
	status = th_eavd_stop(&e, SIGTERM, DEADLINE_MS);
	ck_assert_msg(status != -1 && WIFEXITED(status) &&
	    WEXITSTATUS(status) == 0, "eavd did not stop cleanly (log %s)",
	    e.log);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND state = 'succeeded' AND attempt = 1", 1, step),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	th_db_free(&db);
}
END_TEST

/* Exec tool configs that must be refused, and a word the error holds. */
static const struct {
	const char	*config;
	const char	*want;
} bad_configs[] = {
	{ "{}", "\"argv\"" },
	{ "[]", "must be a JSON object" },
	{ "{\"argv\": []}", "\"argv\"" },
	{ "{\"argv\": \"/bin/true\"}", "\"argv\"" },
	{ "{\"argv\": [1]}", "\"argv\"" },
	{ "{\"argv\": [\"\"]}", "\"argv\"" },
	{ "{\"argv\": null}", "\"argv\"" },
	{ "{\"argv\": [\"bin/true\"]}", "absolute path" },
	{ "{\"argv\": [\"true\", \"x\"]}", "absolute path" },
	{ "{\"argv\": [\"/bin/true\"], \"shell\": true}", "unknown field "
	    "\"shell\"" },
	{ "{\"argv\": [\"/bin/true\"], \"Argv\": []}", "unknown field" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": \"HOME\"}", "\"env\"" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [1]}", "\"env\"" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": null}", "\"env\"" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"A-B\"]}", "not a variable "
	    "name" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"A=B\"]}", "not a variable "
	    "name" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"EAV_DSN\"]}", "must not "
	    "pass \"EAV_DSN\"" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"eav_dsn\"]}", "must not "
	    "pass" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"PGPASSWORD\"]}", "must not "
	    "pass \"PGPASSWORD\"" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"PGPASSFILE\"]}", "must not "
	    "pass" },
	{ "{\"argv\": [\"/bin/true\"], \"env\": [\"HOME\", \"HOME\"]}",
	    "twice" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": 0}",
	    "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": -1}",
	    "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": 1048577}",
	    "\"max_output_bytes\" must be an integer from 1 to 1048576" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": \"100\"}",
	    "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": 3.5}",
	    "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": 1e309}",
	    "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": true}",
	    "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"max_output_bytes\": "
	    "9223372036854775808}", "\"max_output_bytes\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": []}", "\"rlimits\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"cpu\": 1}}",
	    "unknown field \"rlimits.cpu\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"cpu_s\": 0}}",
	    "\"rlimits.cpu_s\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"cpu_s\": 86401}}",
	    "\"rlimits.cpu_s\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"as_mb\": 8}}",
	    "\"rlimits.as_mb\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"nofile\": 2}}",
	    "\"rlimits.nofile\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"nofile\": \"64\"}}",
	    "\"rlimits.nofile\"" },
	{ "{\"argv\": [\"/bin/true\"], \"rlimits\": {\"as_mb\": null}}",
	    "\"rlimits.as_mb\"" },
};

/* Rows that a refused registration must leave alone. */
static const char counts_sql[] =
    "SELECT (SELECT count(*) FROM eav.tools) || '/' ||"
    " (SELECT count(*) FROM eav.audit_events) || '/' ||"
    " (SELECT coalesce(max(updated_at)::text, '') FROM eav.tools)";

/* Asserts a registration is refused with 22023 naming want, storing nothing. */
static void
assert_refused(PGconn *c, const char *sql, const char *config,
    const char *want)
{
	const char	*err;
	char		*before, *after;

	before = th_str(c, counts_sql, 0);
	err = config != NULL ? th_err(c, sql, 1, config) : th_err(c, sql, 0);
	ck_assert_msg(strncmp(err, "22023: ", 7) == 0 && strstr(err, want) !=
	    NULL, "%s: got \"%s\", want 22023 with \"%s\"",
	    config ? config : sql, err, want);
	after = th_str(c, counts_sql, 0);
	ck_assert_str_eq(before, after);
	free(before);
	free(after);
}

/* A bad exec config is refused (22023 naming the field), nothing stored. */
/* FM-051 */
START_TEST(test_exec_config_refused)
{
	struct th_db	db;

	th_db_new(&db);
	/* An existing tool must not be changed by a refused update either. */
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('bad.tool', "
	    "'exec', '{\"argv\": [\"/bin/true\"]}', true)", 0));
	assert_refused(db.conn, "SELECT eav.tool_register('bad.tool', 'exec', "
	    "$1::jsonb, true)", bad_configs[_i].config, bad_configs[_i].want);
	assert_refused(db.conn, "SELECT eav.tool_register('new.tool', 'exec', "
	    "$1::jsonb, true)", bad_configs[_i].config, bad_configs[_i].want);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'bad.tool' AND config - 'health' = '{\"argv\": "
	    "[\"/bin/true\"], \"env\": [], \"rlimits\": {}, "
	    "\"max_output_bytes\": 65536}'", 0),
	    1);
	th_db_free(&db);
}
END_TEST

/*
 * The bounds (64 argv strings of at most 4096 bytes, 64 env names of at
 * most 128 characters), other kinds and bad timeouts are refused; a good
 * config is stored with its defaults and audited.
 */
/* FM-051 */
START_TEST(test_exec_config_bounds)
{
	struct th_db	db;

	th_db_new(&db);
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'exec', "
	    "jsonb_build_object('argv', (SELECT jsonb_agg('/bin/true'::text) "
	    "FROM generate_series(1, 65))), true)", NULL, "\"argv\"");
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'exec', "
	    "jsonb_build_object('argv', jsonb_build_array('/bin/true', "
	    "repeat('x', 4097))), true)", NULL, "\"argv\"");
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'exec', "
	    "jsonb_build_object('argv', jsonb_build_array('/bin/true'), "
	    "'env', (SELECT jsonb_agg('V' || i) FROM generate_series(1, 65) "
	    "i)), true)", NULL, "\"env\"");
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'exec', "
	    "jsonb_build_object('argv', jsonb_build_array('/bin/true'), "
	    "'env', jsonb_build_array(repeat('V', 129))), true)", NULL,
	    "not a variable name");
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'ftp', "
	    "'{\"url\": \"ftp://127.0.0.1/\"}', true)", NULL, "not supported");
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'exec', "
	    "'{\"argv\": [\"/bin/true\"]}', true, 0)", NULL, "timeout_ms");
	assert_refused(db.conn, "SELECT eav.tool_register('x', 'exec', "
	    "'{\"argv\": [\"/bin/true\"]}', NULL)", NULL, "idempotent");
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('ok.tool', 'exec', "
	    "jsonb_build_object('argv', (SELECT jsonb_agg(repeat('/', 4096)) "
	    "FROM generate_series(1, 64)), 'env', (SELECT jsonb_agg('V' || i) "
	    "FROM generate_series(1, 64) i), 'max_output_bytes', 1048576, "
	    "'rlimits', '{\"cpu_s\": 86400, \"as_mb\": 16, \"nofile\": 3}'::"
	    "jsonb), false, 86400000)", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools t JOIN "
	    "eav.audit_events a ON a.type = 'tool.registered' AND "
	    "a.payload->>'tool' = t.name AND a.payload->'config' = t.config "
	    "WHERE t.name = 'ok.tool' AND t.kind = 'exec' AND "
	    "t.max_output_bytes = 1048576 AND t.timeout_ms = 86400000 AND "
	    "NOT t.idempotent", 0), 1);
	th_db_free(&db);
}
END_TEST

Suite *
suite_exec(void)
{
	Suite	*s = suite_create("exec");
	TCase	*tc = tcase_create("exec");
	TCase	*kills = tcase_create("kills");

	tcase_add_loop_test(tc, test_exec_config_refused, 0,
	    (int)(sizeof(bad_configs) / sizeof(bad_configs[0])));
	tcase_add_test(tc, test_exec_config_bounds);
	tcase_add_test(tc, test_exec_succeeded);
	tcase_add_test(tc, test_exec_not_json);
	tcase_add_test(tc, test_exec_output_cap);
	tcase_add_test(tc, test_exec_tempfail_retried);
	tcase_add_test(tc, test_exec_exit_failed);
	tcase_add_test(tc, test_exec_cannot_start);
	tcase_add_test(tc, test_exec_timeout_retried);
	tcase_add_test(tc, test_exec_timeout_held);
	tcase_add_test(tc, test_exec_signal_unknown);
	tcase_add_test(tc, test_exec_isolation);
	tcase_add_test(tc, test_exec_shutdown_waits);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	tcase_add_test(kills, test_exec_kill_no_grandchild);
	tcase_add_test(kills, test_exec_kill_non_idempotent);
	tcase_add_test(kills, test_exec_kill_idempotent);
	tcase_set_timeout(kills, 240);
	suite_add_tcase(s, kills);
	return s;
}
