/*
 * Claiming: concurrent claimers in separate processes never share a step
 * and lose none; a row locked elsewhere is skipped, not waited for; steps
 * not yet due and steps of other queues stay pending; and end to end, the
 * workers of a real eavd claim every step exactly once.  Every count is
 * checked against the database, including the step.claimed audit trail.
 */
#include <sys/wait.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define NCLAIMERS	4
#define NTASKS		"10000"
#define CLAIM_LIMIT	"50"
#define BATCH_MAX	8192

static long long	start_node(PGconn *);
static char		*enqueue_step(PGconn *);
static int		claim_round(PGconn *, const char *, const char *,
			    const char *, long long *);
static void		claimer_main(const char *, long long, int)
			    __attribute__((noreturn));
static pid_t		claimer_spawn(const char *, long long, int *);

/* Starts incarnation of node "n1" as a worker-less eavd would. */
static long long
start_node(PGconn *c)
{
	return th_ll(c, "SELECT eav.node_start('n1', 'test', 1, 'test')", 0);
}

/* Enqueues a one-step noop task; returns its step id (caller frees). */
static char *
enqueue_step(PGconn *c)
{
	char	*task, *step;

	task = th_str(c, "SELECT eav.enqueue('noop')::text", 0);
	step = th_str(c, "SELECT id::text FROM eav.steps WHERE task_id = "
	    "$1::bigint", 1, task);
	free(task);
	return step;
}

/*
 * Claims one batch as worker pid and completes it as succeeded; adds the
 * number claimed to *total.  Returns that number, or -1 on any error.
 */
static int
claim_round(PGconn *c, const char *inc, const char *pid, const char *actor,
    long long *total)
{
	const char	*cp[3] = { inc, pid, CLAIM_LIMIT };
	const char	*dp[2] = { actor, NULL };
	PGresult	*res;
	char		 batch[BATCH_MAX];
	size_t		 off = 0;
	int		 i, n;

	res = PQexecParams(c, "SELECT step_id, claim_epoch FROM eav.claim("
	    "'n1', $1::bigint, $2::integer, $3::integer, NULL)", 3, NULL, cp,
	    NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		PQclear(res);
		return -1;
	}
	n = PQntuples(res);
	off += snprintf(batch + off, sizeof(batch) - off, "[");
	for (i = 0; i < n && off < sizeof(batch); i++)
		off += snprintf(batch + off, sizeof(batch) - off,
		    "%s{\"id\": %s, \"epoch\": %s, \"outcome\": "
		    "\"succeeded\"}", i ? ", " : "", PQgetvalue(res, i, 0),
		    PQgetvalue(res, i, 1));
	PQclear(res);
	if (off + 2 > sizeof(batch))
		return -1;
	snprintf(batch + off, sizeof(batch) - off, "]");
	if (n == 0)
		return 0;
	dp[1] = batch;
	res = PQexecParams(c, "SELECT count(*) FILTER (WHERE status = "
	    "'succeeded') FROM eav.complete_batch($1, $2::jsonb)", 2, NULL, dp,
	    NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK ||
	    atoi(PQgetvalue(res, 0, 0)) != n) {
		PQclear(res);
		return -1;
	}
	PQclear(res);
	*total += n;
	return n;
}

/*
 * A claimer process: its own connection, claim and complete until a
 * claim comes back empty, then the count on the pipe.  Exit 0 or 1.
 */
static void
claimer_main(const char *dsn, long long inc, int fd)
{
	PGconn		*c = PQconnectdb(dsn);
	char		 sinc[24], spid[16], actor[64];
	long long	 total = 0;
	int		 n;

	if (PQstatus(c) != CONNECTION_OK)
		_exit(1);
	snprintf(sinc, sizeof(sinc), "%lld", inc);
	snprintf(spid, sizeof(spid), "%d", (int)getpid());
	snprintf(actor, sizeof(actor), "worker:n1/%lld/%d", inc,
	    (int)getpid());
	while ((n = claim_round(c, sinc, spid, actor, &total)) > 0)
		;
	PQfinish(c);
	if (n < 0 || write(fd, &total, sizeof(total)) != sizeof(total))
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

/* Four processes claim 10,000 steps: none shared, none lost. */
/* FM-014 */
START_TEST(test_concurrent_claimers)
{
	struct th_db	 db;
	long long	 inc, n, sum = 0;
	pid_t		 pids[NCLAIMERS];
	int		 fds[NCLAIMERS], i, status;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop') FROM "
	    "generate_series(1, " NTASKS ")", 0));
	inc = start_node(db.conn);
	for (i = 0; i < NCLAIMERS; i++)
		pids[i] = claimer_spawn(db.dsn, inc, &fds[i]);
	for (i = 0; i < NCLAIMERS; i++) {
		status = th_waitpid(pids[i], 100000);
		ck_assert_msg(status != -1, "claimer %d did not finish", i);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "claimer %d failed (status %d)", i, status);
		ck_assert_int_eq(read(fds[i], &n, sizeof(n)), sizeof(n));
		close(fds[i]);
		ck_assert_int_ge(n, 0);
		sum += n;
	}
	ck_assert_int_eq(sum, 10000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'succeeded' AND attempt = 1 AND claim_epoch = 1",
	    0), 10000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps", 0),
	    10000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.claimed'", 0), 10000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT step_id) FROM "
	    "eav.audit_events WHERE type = 'step.claimed'", 0), 10000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks "
	    "WHERE state = 'succeeded'", 0), 10000);
	/* Each claimer really took part, and owns what its audit says. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps s "
	    "JOIN eav.audit_events a ON a.step_id = s.id AND a.type = "
	    "'step.claimed' WHERE a.actor <> format('worker:n1/%s/%s', "
	    "s.owner_incarnation, s.owner_pid)", 0), 0);
	th_db_free(&db);
}
END_TEST

/* A step locked by another transaction is skipped, then claimed. */
/* FM-014 */
START_TEST(test_locked_row_skipped)
{
	struct th_db	 db;
	PGconn		*other;
	char		 inc[24], *a, *b, *got;

	th_db_new(&db);
	a = enqueue_step(db.conn);
	b = enqueue_step(db.conn);
	snprintf(inc, sizeof(inc), "%lld", start_node(db.conn));
	other = th_connect(db.dsn);
	PQclear(th_exec(other, "BEGIN", 0));
	PQclear(th_exec(other, "SELECT id FROM eav.steps WHERE id = $1 "
	    "FOR UPDATE", 1, a));
	/* A claim that waited for the lock would fail here, not hang. */
	PQclear(th_exec(db.conn, "SET statement_timeout = '20s'", 0));
	got = th_str(db.conn, "SELECT string_agg(step_id::text, ',') FROM "
	    "eav.claim('n1', $1::bigint, 7, 10, NULL)", 1, inc);
	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, b);
	free(got);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE id = $1 AND state = 'pending' AND attempt = 0", 1, a), 1);
	PQclear(th_exec(other, "COMMIT", 0));
	got = th_str(db.conn, "SELECT string_agg(step_id::text, ',') FROM "
	    "eav.claim('n1', $1::bigint, 7, 10, NULL)", 1, inc);
	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, a);
	free(got);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.claimed' AND step_id = $1",
	    1, a), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'running' AND owner_pid = 7", 0), 2);
	PQfinish(other);
	free(a);
	free(b);
	th_db_free(&db);
}
END_TEST

/* Steps due later, and steps of queues not asked for, are not claimed. */
START_TEST(test_future_and_other_queue)
{
	struct th_db	 db;
	char		 inc[24], *now_id, *later_id, *demo_id, *got;

	th_db_new(&db);
	now_id = th_str(db.conn, "SELECT eav.enqueue('noop')::text", 0);
	later_id = th_str(db.conn, "SELECT eav.task_enqueue('default', "
	    "'later', '[{\"tool\": \"noop\"}]', p_run_at => now() + "
	    "interval '1 hour')::text", 0);
	demo_id = th_str(db.conn, "SELECT eav.enqueue('noop', "
	    "p_queue => 'demo')::text", 0);
	snprintf(inc, sizeof(inc), "%lld", start_node(db.conn));
	got = th_str(db.conn, "SELECT string_agg(task_id::text, ',') FROM "
	    "eav.claim('n1', $1::bigint, 7, 100, ARRAY['default'])", 1, inc);
	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, now_id);
	free(got);
	/* Nothing else for this worker's queues, however often it asks. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim('n1', "
	    "$1::bigint, 7, 100, ARRAY['default'])", 1, inc), 0);
	/* A worker of every queue gets the demo step, still not the later. */
	got = th_str(db.conn, "SELECT string_agg(task_id::text, ',') FROM "
	    "eav.claim('n1', $1::bigint, 8, 100, NULL)", 1, inc);
	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, demo_id);
	free(got);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND state = 'pending' AND attempt = 0 AND "
	    "claim_epoch = 0", 1, later_id), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.claimed' AND task_id = "
	    "$1::bigint", 1, later_id), 0);
	free(now_id);
	free(later_id);
	free(demo_id);
	th_db_free(&db);
}
END_TEST

/* With eavd running, 2,000 tasks all succeed, each step claimed once. */
START_TEST(test_eavd_end_to_end)
{
	struct th_db	db;
	struct th_eavd	e;
	int		status;

	th_db_new(&db);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 2\n");
	th_eavd_start(&e);
	ck_assert_msg(th_eavd_wait_up(&e, db.conn, 2, 60000),
	    "eavd did not come up; see %s", e.log);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('noop') FROM "
	    "generate_series(1, 2000)", 0));
	ck_assert_msg(th_wait(db.conn, 90000, "SELECT count(*) = 2000 FROM "
	    "eav.tasks WHERE state = 'succeeded'", 0),
	    "only %lld of 2000 tasks succeeded", th_ll(db.conn,
	    "SELECT count(*) FROM eav.tasks WHERE state = 'succeeded'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'succeeded' AND attempt = 1 AND claim_epoch = 1",
	    0), 2000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.claimed'", 0), 2000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT step_id) FROM "
	    "eav.audit_events WHERE type = 'step.claimed'", 0), 2000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'step.succeeded'", 0), 2000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'fence.rejected'", 0), 0);
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
suite_claim(void)
{
	Suite	*s = suite_create("claim");
	TCase	*tc = tcase_create("claim");
	TCase	*slow = tcase_create("claim-load");

	tcase_add_test(tc, test_locked_row_skipped);
	tcase_add_test(tc, test_future_and_other_queue);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	tcase_add_test(slow, test_concurrent_claimers);
	tcase_add_test(slow, test_eavd_end_to_end);
	tcase_set_timeout(slow, 180);
	suite_add_tcase(s, slow);
	return s;
}
