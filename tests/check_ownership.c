/*
 * Ownership of resources (sql/0018_ownership.sql): a step whose resource
 * key is owned by another queue is refused at the claim with
 * authority.conflict and an alarm, never called; at most one step per
 * resource key runs at a time, under concurrent claimers in separate
 * processes, which the audit log's order proves afterwards; bad keys,
 * patterns, queues and reasons are refused with nothing stored.
 */
#include <sys/wait.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define NCLAIMERS	4
#define NKEYS		"8"
#define NKEYED		"320"	/* steps with a resource key */
#define NPLAIN		"320"	/* steps without one */
#define NSTEPS		640
#define CLAIM_LIMIT	"6"
#define BATCH_MAX	4096
#define RUN_DEADLINE_MS	120000

static long long	start_node(PGconn *);
static int		complete_all(PGconn *, PGresult *, const char *);
static int		claim_round(PGconn *, const char *, const char *,
			    const char *);
static void		claimer_main(const char *, long long, int)
			    __attribute__((noreturn));
static pid_t		claimer_spawn(const char *, long long, int *);
static long long	sample_running(PGconn *, long long *);

static const char overlap_sql[] =
    /*
     * Audit ids come from a sequence, drawn while each transaction runs:
     * a claim that saw the key free (after the previous step's
     * completion committed) draws its id after that completion's.  So in
     * id order, per key, every claim must follow the close of the one
     * before it, and every close must follow its own step's claim.
     */
    "WITH e AS (SELECT s.resource_key AS k, a.id, a.type, a.step_id "
    "  FROM eav.audit_events a JOIN eav.steps s ON s.id = a.step_id "
    "  WHERE s.resource_key IS NOT NULL "
    "    AND a.type IN ('step.claimed', 'step.succeeded')), "
    "l AS (SELECT e.*, lag(type) OVER w AS pt, lag(step_id) OVER w AS ps "
    "  FROM e WINDOW w AS (PARTITION BY k ORDER BY id)) "
    "SELECT count(*) FROM l "
    "WHERE type = 'step.claimed' AND pt IS NOT NULL "
    "      AND pt <> 'step.succeeded' "
    "   OR type = 'step.succeeded' "
    "      AND (pt IS DISTINCT FROM 'step.claimed' OR ps <> step_id)";

/* Starts incarnation of node "n1" as a worker-less eavd would. */
static long long
start_node(PGconn *c)
{
	return th_ll(c, "SELECT eav.node_start('n1', 'test', 1, 'test')", 0);
}

/* Completes every step of a claim's result as succeeded. */
static int
complete_all(PGconn *c, PGresult *claimed, const char *actor)
{
	const char	*dp[2] = { actor, NULL };
	char		 batch[BATCH_MAX];
	size_t		 off = 0;
	PGresult	*res;
	int		 i, n = PQntuples(claimed), ok;

	off += snprintf(batch, sizeof(batch), "[");
	for (i = 0; i < n && off < sizeof(batch); i++)
		off += snprintf(batch + off, sizeof(batch) - off,
		    "%s{\"id\": %s, \"epoch\": %s, \"outcome\": "
		    "\"succeeded\"}", i ? ", " : "",
		    PQgetvalue(claimed, i, 0), PQgetvalue(claimed, i, 1));
	if (off + 2 > sizeof(batch))
		return -1;
	snprintf(batch + off, sizeof(batch) - off, "]");
	dp[1] = batch;
	res = PQexecParams(c, "SELECT count(*) FILTER (WHERE status = "
	    "'succeeded') FROM eav.complete_batch($1, $2::jsonb)", 2, NULL, dp,
	    NULL, NULL, 0);
	ok = PQresultStatus(res) == PGRES_TUPLES_OK &&
	    atoi(PQgetvalue(res, 0, 0)) == n;
	PQclear(res);
	return ok ? 0 : -1;
}

/*
 * Claims one batch, holds it a moment (the steps "run"), completes it.
 * Returns the number claimed, or -1 on any error (a unique violation of
 * steps_resource_running_idx included).
 */
static int
claim_round(PGconn *c, const char *inc, const char *pid, const char *actor)
{
	const char	*cp[3] = { inc, pid, CLAIM_LIMIT };
	PGresult	*res;
	int		 n;

	res = PQexecParams(c, "SELECT step_id, claim_epoch FROM eav.claim("
	    "'n1', $1::bigint, $2::integer, $3::integer, NULL)", 3, NULL, cp,
	    NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		fprintf(stderr, "claim: %s", PQerrorMessage(c));
		PQclear(res);
		return -1;
	}
	n = PQntuples(res);
	if (n > 0) {
		/* Pacing to keep steps running, not a wait for a condition. */
		usleep(1000 + (unsigned)(rand() % 2000));
		if (complete_all(c, res, actor) != 0)
			n = -1;
	}
	PQclear(res);
	return n;
}

/*
 * A claimer process: claims and completes until no step is left (an
 * empty claim may only mean the keys left are busy elsewhere), then
 * writes its count on the pipe.  Exit 0 or 1.
 */
static void
claimer_main(const char *dsn, long long inc, int fd)
{
	PGconn		*c = PQconnectdb(dsn);
	char		 sinc[24], spid[16], actor[64];
	long long	 total = 0, deadline = th_now_ms() + RUN_DEADLINE_MS;
	PGresult	*res;
	int		 n, left = 1;

	if (PQstatus(c) != CONNECTION_OK)
		_exit(1);
	srand((unsigned)getpid());
	snprintf(sinc, sizeof(sinc), "%lld", inc);
	snprintf(spid, sizeof(spid), "%d", (int)getpid());
	snprintf(actor, sizeof(actor), "worker:n1/%lld/%d", inc,
	    (int)getpid());
	while (left && th_now_ms() < deadline) {
		if ((n = claim_round(c, sinc, spid, actor)) < 0)
			_exit(1);
		total += n;
		if (n > 0)
			continue;
		res = PQexec(c, "SELECT count(*) FROM eav.steps "
		    "WHERE state <> 'succeeded'");
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			_exit(1);
		left = atoi(PQgetvalue(res, 0, 0)) > 0;
		PQclear(res);
		usleep(1000);
	}
	PQfinish(c);
	if (left || write(fd, &total, sizeof(total)) != sizeof(total))
		_exit(1);
	_exit(0);
}

/* Forks a claimer; *rfd gets the read end of its pipe. */
static pid_t
claimer_spawn(const char *dsn, long long inc, int *rfd)
{
	int	p[2];
	pid_t	pid;

	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(p[0]);
		claimer_main(dsn, inc, p[1]);
	}
	close(p[1]);
	*rfd = p[0];
	return pid;
}

/*
 * One sample of the running steps: returns the number of keys with more
 * than one running step; *keys gets how many keys have one running.
 */
static long long
sample_running(PGconn *c, long long *keys)
{
	PGresult	*res;
	long long	 dup;

	res = th_exec(c, "SELECT count(*) FILTER (WHERE n > 1), count(*) "
	    "FROM (SELECT resource_key, count(*) AS n FROM eav.steps "
	    "WHERE state = 'running' AND resource_key IS NOT NULL "
	    "GROUP BY 1) x", 0);
	dup = atoll(PQgetvalue(res, 0, 0));
	*keys = atoll(PQgetvalue(res, 0, 1));
	PQclear(res);
	return dup;
}

/* The state of task t's only step, in a static buffer. */
static const char *
step_state(PGconn *c, const char *task)
{
	static char	 buf[32];
	char		*v;

	v = th_str(c, "SELECT state FROM eav.steps WHERE task_id = "
	    "$1::bigint", 1, task);
	ck_assert_ptr_nonnull(v);
	snprintf(buf, sizeof(buf), "%s", v);
	free(v);
	return buf;
}

/* eavd's workers: the wrong queue is refused, the owner's step runs. */
/* FM-048 */
START_TEST(test_authority_conflict)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*wrong, *right, *unowned, *err;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.queue_set('billing')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.resource_owner_set('customer:', "
	    "'billing', 'billing mutates customers', 'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.resource_owner_set("
	    "'customer:vip:', 'default', 'the VIP desk', 'operator:test')", 0));
	wrong = th_str(db.conn, "SELECT eav.task_enqueue('default', 'upd', "
	    "'[{\"tool\": \"noop\", \"resource\": \"customer:42\"}]')::text",
	    0);
	right = th_str(db.conn, "SELECT eav.task_enqueue('billing', 'upd', "
	    "'[{\"tool\": \"noop\", \"resource\": \"customer:43\"}, "
	    "{\"tool\": \"noop\", \"resource\": \"customer:vip:1\"}]')::text",
	    0);
	unowned = th_str(db.conn, "SELECT eav.task_enqueue('default', 'upd', "
	    "'[{\"tool\": \"noop\", \"resource\": \"order:7\"}]')::text", 0);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_up(&e, db.conn, 2);
	ck_assert_msg(th_wait(db.conn, TH_TIMEOUT_MS, "SELECT count(*) = 3 "
	    "FROM eav.tasks WHERE state IN ('succeeded', 'failed')", 0),
	    "tasks did not finish; see %s", e.log);
	th_eavd_stop_ok(&e);
	/* Refused before any call: claimed once, failed, never succeeded. */
	ck_assert_str_eq(step_state(db.conn, wrong), "failed");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks "
	    "WHERE id = $1::bigint AND state = 'failed'", 1, wrong), 1);
	err = th_str(db.conn, "SELECT error FROM eav.steps WHERE task_id = "
	    "$1::bigint", 1, wrong);
	ck_assert_ptr_nonnull(strstr(err, "belongs to queue billing"));
	free(err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'authority.conflict' AND outcome = "
	    "'refused' AND task_id = $1::bigint AND payload->>'owner' = "
	    "'billing' AND payload->>'queue' = 'default' AND "
	    "payload->>'resource' = 'customer:42'", 1, wrong), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE task_id = $1::bigint AND type IN "
	    "('step.succeeded', 'step.retry_scheduled')", 1, wrong), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'authority_conflict' AND state = 'open' AND "
	    "subject = 'resource:customer:42'", 0), 1);
	/* The owner's steps ran (the longest pattern decides customer:vip:1),
	 * and a key nobody owns is free to any queue. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE task_id = $1::bigint AND state = 'succeeded'", 1, right),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks "
	    "WHERE id = $1::bigint AND state = 'failed'", 1, right), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'authority.conflict' AND "
	    "payload->>'resource' = 'customer:vip:1' AND payload->>'owner' = "
	    "'default'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'authority_conflict'", 0), 2);
	ck_assert_str_eq(step_state(db.conn, unowned), "succeeded");
	free(wrong);
	free(right);
	free(unowned);
	th_db_free(&db);
}
END_TEST

/*
 * A step whose key has a running step, or is locked by a claim in
 * flight, or comes second in one batch, is not claimed; it is once the
 * key is free.
 */
/* FM-048 */
START_TEST(test_claim_skips_busy_key)
{
	struct th_db	 db;
	PGconn		*other;
	char		 inc[24], *got;

	th_db_new(&db);
	snprintf(inc, sizeof(inc), "%lld", start_node(db.conn));
	PQclear(th_exec(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "jsonb_build_array(jsonb_build_object('tool', 'noop', "
	    "'resource', r))) FROM unnest(ARRAY['a:1', 'a:1', 'b:1', 'a:1']) "
	    "r", 0));
	/* Tasks 1..4: the batch takes a:1 once (task 1) and b:1. */
	got = th_str(db.conn, "SELECT string_agg(task_id::text, ',' ORDER BY "
	    "task_id) FROM eav.claim('n1', $1::bigint, 7, 10, NULL)", 1, inc);
	ck_assert_str_eq(got, "1,3");
	free(got);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE task_id IN (2, 4) AND state = 'pending' AND attempt = 0",
	    0), 2);
	/* a:1 runs: nothing more, however often a worker asks. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim('n1', "
	    "$1::bigint, 7, 10, NULL)", 1, inc), 0);
	/* Finished; but a claim in flight elsewhere holds a:1's lock. */
	PQclear(th_exec(db.conn, "SELECT eav.complete_batch('w', "
	    "jsonb_agg(jsonb_build_object('id', id, 'epoch', claim_epoch, "
	    "'outcome', 'succeeded'))) FROM eav.steps WHERE state = "
	    "'running'", 0));
	other = th_connect(db.dsn);
	PQclear(th_exec(other, "BEGIN", 0));
	ck_assert_int_eq(th_ll(other, "SELECT eav.resource_take('a:1')::int",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim('n1', "
	    "$1::bigint, 7, 10, NULL)", 1, inc), 0);
	PQclear(th_exec(other, "COMMIT", 0));
	got = th_str(db.conn, "SELECT string_agg(task_id::text, ',') FROM "
	    "eav.claim('n1', $1::bigint, 7, 10, NULL)", 1, inc);
	ck_assert_str_eq(got, "2");
	free(got);
	/* The database refuses a second running step of a key outright. */
	ck_assert_ptr_nonnull(strstr(th_err(db.conn, "UPDATE eav.steps SET "
	    "state = 'running', owner_incarnation = $1::bigint, owner_pid = "
	    "7 WHERE task_id = 4", 1, inc), "23505"));
	PQfinish(other);
	th_db_free(&db);
}
END_TEST

/*
 * Four claimer processes drain keyed and plain steps: no sample ever
 * shows two running steps of one key, no claim errs on the unique
 * index, and the audit log shows each key's claim→close intervals one
 * after another.
 */
/* FM-048 */
START_TEST(test_one_running_per_key)
{
	struct th_db	 db;
	long long	 inc, n, sum = 0, keys, most = 0, samples = 0, dup = 0;
	pid_t		 pids[NCLAIMERS];
	int		 fds[NCLAIMERS], st[NCLAIMERS], i, running;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "jsonb_build_array(jsonb_build_object('tool', 'noop', 'resource', "
	    "'customer:' || (i % " NKEYS ")))), eav.enqueue('noop') FROM "
	    "generate_series(1, " NKEYED ") i", 0));
	inc = start_node(db.conn);
	for (i = 0; i < NCLAIMERS; i++)
		pids[i] = claimer_spawn(db.dsn, inc, &fds[i]);
	do {
		dup += sample_running(db.conn, &keys);
		samples++;
		if (keys > most)
			most = keys;
		for (running = 0, i = 0; i < NCLAIMERS; i++) {
			if (pids[i] > 0 && waitpid(pids[i], &st[i],
			    WNOHANG) == pids[i])
				pids[i] = 0;
			running += pids[i] > 0;
		}
	} while (running > 0);
	ck_assert_int_eq(dup, 0);
	for (i = 0; i < NCLAIMERS; i++) {
		ck_assert_msg(WIFEXITED(st[i]) && WEXITSTATUS(st[i]) == 0,
		    "claimer %d failed (status %d)", i, st[i]);
		ck_assert_int_eq(read(fds[i], &n, sizeof(n)), sizeof(n));
		close(fds[i]);
		sum += n;
	}
	ck_assert_int_eq(sum, NSTEPS);
	/* It really ran in parallel: several keys busy at once. */
	ck_assert_msg(most >= 2, "at most %lld key(s) busy in %lld samples",
	    most, samples);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'succeeded' AND attempt = 1", 0), NSTEPS);
	ck_assert_int_eq(th_ll(db.conn, overlap_sql, 0), 0);
	th_db_free(&db);
}
END_TEST

/* Bad keys, patterns, queues and reasons: a clear error, nothing stored. */
START_TEST(test_bad_input)
{
	static const char *const bad_steps[][2] = {
		{ "54000", NULL },	/* the long key below */
		{ "22023", "\"Customer:1\"" },
		{ "22023", "\"customer 1\"" },
		{ "22023", "\"customer:\"" },
		{ "22023", "\"c:\\u00e9\"" },
		{ "22023", "42" },
		{ "22023", "\"\"" },
	};
	struct th_db	 db;
	char		 long_key[256], quoted[260], spec[512];
	const char	*err;
	size_t		 i;

	th_db_new(&db);
	memset(long_key, 'x', 199);
	long_key[199] = '\0';		/* "c:" + 199 = 201 bytes */
	snprintf(quoted, sizeof(quoted), "\"c:%s\"", long_key);
	for (i = 0; i < sizeof(bad_steps) / sizeof(bad_steps[0]); i++) {
		snprintf(spec, sizeof(spec), "{\"tool\": \"noop\", "
		    "\"resource\": %s}", bad_steps[i][1] ? bad_steps[i][1] :
		    quoted);
		err = th_err(db.conn, "SELECT eav.task_enqueue('default', 'k', "
		    "jsonb_build_array('{\"tool\": \"noop\"}'::jsonb, "
		    "$1::jsonb))", 1, spec);
		ck_assert_msg(strncmp(err, bad_steps[i][0], 5) == 0,
		    "%s: %s", spec, err);
		ck_assert_msg(strstr(err, "step 2: \"resource\"") != NULL,
		    "%s: %s", spec, err);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT (SELECT count(*) FROM "
	    "eav.tasks) + (SELECT count(*) FROM eav.steps) + (SELECT count(*) "
	    "FROM eav.audit_events WHERE type = 'task.enqueued')", 0), 0);
	/* 200 bytes is the limit, not over it. */
	long_key[198] = '\0';
	snprintf(spec, sizeof(spec), "{\"tool\": \"noop\", \"resource\": "
	    "\"c:%s\"}", long_key);
	PQclear(th_exec(db.conn, "SELECT eav.task_enqueue('default', 'k', "
	    "jsonb_build_array($1::jsonb))", 1, spec));
	ck_assert_int_eq(th_ll(db.conn, "SELECT octet_length(resource_key) "
	    "FROM eav.steps", 0), 200);
	err = th_err(db.conn, "SELECT eav.resource_owner_set('customer:', "
	    "'nope', 'why')", 0);
	ck_assert_msg(strncmp(err, "22023", 5) == 0, "%s", err);
	ck_assert_ptr_nonnull(strstr(err, "unknown queue"));
	err = th_err(db.conn, "SELECT eav.resource_owner_set('customer:', "
	    "'default', NULL)", 0);
	ck_assert_msg(strncmp(err, "22023", 5) == 0, "%s", err);
	err = th_err(db.conn, "SELECT eav.resource_owner_set('customer:', "
	    "'default', '  ')", 0);
	ck_assert_msg(strncmp(err, "22023", 5) == 0, "%s", err);
	err = th_err(db.conn, "SELECT eav.resource_owner_set('customer', "
	    "'default', 'why')", 0);
	ck_assert_msg(strncmp(err, "22023", 5) == 0, "%s", err);
	err = th_err(db.conn, "SELECT eav.resource_owner_set(repeat('c', "
	    "250) || ':', 'default', 'why')", 0);
	ck_assert_msg(strncmp(err, "54000", 5) == 0, "%s", err);
	err = th_err(db.conn, "SELECT eav.resource_owner_clear('customer:', "
	    "'why')", 0);
	ck_assert_msg(strncmp(err, "EA003", 5) == 0, "%s", err);
	/* Nothing stored: no owner, no audit of one. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT (SELECT count(*) FROM "
	    "eav.resource_owners) + (SELECT count(*) FROM eav.audit_events "
	    "WHERE type LIKE 'resource_owner.%')", 0), 0);
	th_db_free(&db);
}
END_TEST

/* eavctl owner set, list and clear, each change audited with its reason. */
START_TEST(test_ctl_owner)
{
	struct th_db	 db;
	char		 out[256];
	char		*set[] = { th_bin("eavctl"), "-d", NULL, "owner", "set",
	    "customer:", "default", "--reason", "crm owns them", NULL };
	char		*noreason[] = { th_bin("eavctl"), "-d", NULL, "owner",
	    "clear", "customer:", NULL };
	char		*clear[] = { th_bin("eavctl"), "-d", NULL, "owner",
	    "clear", "--reason", "moved", "customer:", NULL };
	char		*list[] = { th_bin("eavctl"), "-d", NULL, "owner",
	    "list", NULL };
	int		 status;

	th_db_new(&db);
	set[2] = noreason[2] = clear[2] = list[2] = db.dsn;
	snprintf(out, sizeof(out), "%s/%s-owner.out", th_tmpdir(), db.name);
	status = th_run(set, out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "owner set: status %d", status);
	status = th_run(list, out);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert(th_file_contains(out, "crm owns them"));
	status = th_run(noreason, out);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2);
	ck_assert(th_file_contains(out, "needs --reason"));
	status = th_run(clear, out);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.resource_owners", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'resource_owner.set' AND "
	    "payload->>'reason' = 'crm owns them' AND actor LIKE "
	    "'operator:%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'resource_owner.cleared' AND "
	    "payload->>'reason' = 'moved' AND payload->>'queue' = 'default'",
	    0), 1);
	th_db_free(&db);
}
END_TEST

Suite *
suite_ownership(void)
{
	Suite	*s = suite_create("ownership");
	TCase	*tc = tcase_create("ownership");

	tcase_add_test(tc, test_bad_input);
	tcase_add_test(tc, test_ctl_owner);
	tcase_add_test(tc, test_claim_skips_busy_key);
	tcase_add_test(tc, test_authority_conflict);
	tcase_add_test(tc, test_one_running_per_key);
	tcase_set_timeout(tc, 180);
	suite_add_tcase(s, tc);
	return s;
}
