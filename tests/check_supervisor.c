/*
 * The supervisor as systemd and an operator see it: READY=1 and STATUS=
 * on NOTIFY_SOCKET, a graceful SIGTERM that leaves nothing running,
 * SIGHUP with a bad file (kept) and a good one (children replaced one at
 * a time, no task lost), the restart-intensity limit, and a bad
 * configuration refused by name.  Every test runs the real eavd against
 * its own database and judges by the database; waits are polls with
 * deadlines.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "exitcode.h"
#include "harness.h"

#define DEADLINE_MS	30000
#define MAX_PIDS	16
#define RELAXED		"restart_backoff_min = 10ms\n" \
			"restart_backoff_max = 100ms\nrestart_intensity = 0\n"

/* Milliseconds on the monotonic clock. */
static long long
now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Pauses for ms milliseconds: pacing between polls, never a wait. */
static void
pause_ms(long ms)
{
	struct timespec	ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/*
 * Writes eavd's configuration (again: the pid of a running eavd is
 * kept, so this also serves to edit the file before a SIGHUP).
 */
static void
conf(struct th_eavd *e, const struct th_db *db, const char *node,
    int workers, const char *policy)
{
	char	text[1024];
	pid_t	pid = e->pid;

	snprintf(text, sizeof(text), "[supervisor]\nnode_name = %s\n"
	    "workers = %d\nshutdown_grace = 20s\n%s\n[worker]\n"
	    "poll_interval = 100ms\n", node, workers, policy);
	th_eavd_conf(e, db, text);
	e->pid = pid;
}

/* Polls eavd's log for needle until the deadline; 1 if found. */
static int
wait_log(const struct th_eavd *e, const char *needle, int timeout_ms)
{
	long long	deadline = now_ms() + timeout_ms;

	while (!th_log_contains(e, needle)) {
		if (now_ms() > deadline)
			return 0;
		pause_ms(5);
	}
	return 1;
}

/* Reads the pids of the up children of one kind; returns how many. */
static int
up_pids(PGconn *c, const char *kind, pid_t *pids, int max)
{
	PGresult	*res;
	int		 i, n;

	res = th_exec(c, "SELECT pid FROM eav.proj_processes WHERE kind = $1 "
	    "AND state = 'up' AND pid IS NOT NULL ORDER BY slot", 1, kind);
	n = PQntuples(res);
	ck_assert_int_le(n, max);
	for (i = 0; i < n; i++)
		pids[i] = (pid_t)atoi(PQgetvalue(res, i, 0));
	PQclear(res);
	return n;
}

/* Formats pids as an integer[] literal. */
static const char *
pids_literal(const pid_t *pids, int n, char *buf, size_t len)
{
	size_t	off;
	int	i;

	off = (size_t)snprintf(buf, len, "{");
	for (i = 0; i < n && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s%d",
		    i ? "," : "", (int)pids[i]);
	if (off < len)
		snprintf(buf + off, len - off, "}");
	return buf;
}

/*
 * True if pid no longer runs one of this test's processes: no such
 * process (ESRCH), or the pid was reused by a process whose command line
 * does not name our configuration file (pid_max may be as low as 32768).
 */
static int
child_gone(pid_t pid, const char *confpath)
{
	char	path[64], buf[4096];
	FILE	*fp;
	size_t	n, i;

	if (kill(pid, 0) == -1 && errno == ESRCH)
		return 1;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if ((fp = fopen(path, "r")) == NULL)
		return 1;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	for (i = 0; i < n; i++)
		if (buf[i] == '\0')
			buf[i] = ' ';
	buf[n] = '\0';
	return strstr(buf, confpath) == NULL;
}

/* Starts eavd and waits until nworkers workers and the producer are up. */
static void
start_up(struct th_eavd *e, struct th_db *db, int nworkers)
{
	th_eavd_start(e);
	ck_assert_msg(th_eavd_wait_up(e, db->conn, nworkers, DEADLINE_MS),
	    "eavd did not bring up %d workers and the producer (log %s)",
	    nworkers, e->log);
}

/*
 * Stops eavd with SIGTERM and asserts it exited 0, and that no sanitizer
 * complained in eavd or any child (they all write to the same log).
 */
static void
stop_ok(struct th_eavd *e)
{
	int	status = th_eavd_stop(e, SIGTERM, DEADLINE_MS);

	ck_assert_msg(status != -1, "eavd did not stop within %d ms",
	    DEADLINE_MS);
	ck_assert_msg(!th_log_contains(e, "Sanitizer") &&
	    !th_log_contains(e, "runtime error"), "a sanitizer reported an "
	    "error (log %s)", e->log);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "eavd stopped with status 0x%x", status);
}

/* Enqueues n noop tasks of the given kind. */
static void
enqueue_noops(PGconn *c, int n, const char *kind)
{
	char		 num[16];
	PGresult	*res;

	snprintf(num, sizeof(num), "%d", n);
	res = th_exec(c, "SELECT eav.enqueue('noop', '{}', 'default', $2) "
	    "FROM generate_series(1, $1::int)", 2, num, kind);
	PQclear(res);
}

/* Binds a datagram socket at path for sd_notify. */
static int
notify_socket(const char *path)
{
	struct sockaddr_un	sun;
	int			fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	ck_assert_uint_lt(strlen(path), sizeof(sun.sun_path));
	memcpy(sun.sun_path, path, strlen(path) + 1);
	(void)unlink(path);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	return fd;
}

/*
 * Reads datagrams until one contains needle (1) or the deadline (0);
 * *status is set when a STATUS= line went by.
 */
static int
notify_wait(int fd, const char *needle, int timeout_ms, int *status)
{
	long long	 deadline = now_ms() + timeout_ms;
	struct pollfd	 pfd = { fd, POLLIN, 0 };
	char		 buf[4096];
	ssize_t		 n;
	int		 left;

	for (;;) {
		if ((left = (int)(deadline - now_ms())) < 0)
			return 0;
		if (poll(&pfd, 1, left) <= 0)
			continue;
		if ((n = recv(fd, buf, sizeof(buf) - 1, 0)) <= 0)
			continue;
		buf[n] = '\0';
		if (strstr(buf, "STATUS=") != NULL)
			*status = 1;
		if (strstr(buf, needle) != NULL)
			return 1;
	}
}

/* READY=1 (and STATUS=) reach NOTIFY_SOCKET once every child is up. */
START_TEST(test_notify_ready)
{
	struct th_db	db;
	struct th_eavd	e;
	char		path[512];
	pid_t		pids[MAX_PIDS];
	int		fd, status = 0;

	th_db_new(&db);
	conf(&e, &db, "sup1", 2, RELAXED);
	snprintf(path, sizeof(path), "%s/notify-%d.sock", th_tmpdir(),
	    (int)getpid());
	fd = notify_socket(path);
	setenv("NOTIFY_SOCKET", path, 1);
	th_eavd_start(&e);
	ck_assert_msg(notify_wait(fd, "READY=1", DEADLINE_MS, &status),
	    "no READY=1 on NOTIFY_SOCKET (log %s)", e.log);
	ck_assert_msg(status, "no STATUS= line before READY=1");
	ck_assert(!th_log_contains(&e, "reporting ready anyway"));
	/* READY=1 follows the ready lines; their rows are written async. */
	ck_assert(th_eavd_wait_up(&e, db.conn, 2, DEADLINE_MS));
	ck_assert_int_eq(up_pids(db.conn, "worker", pids, MAX_PIDS), 2);
	ck_assert_int_eq(kill(pids[0], 0), 0);
	ck_assert_int_eq(kill(pids[1], 0), 0);
	ck_assert_int_eq(up_pids(db.conn, "producer", pids, MAX_PIDS), 1);
	ck_assert_int_eq(kill(pids[0], 0), 0);
	kill(e.pid, SIGTERM);
	ck_assert_msg(notify_wait(fd, "STOPPING=1", DEADLINE_MS, &status),
	    "no STOPPING=1 after SIGTERM");
	stop_ok(&e);
	close(fd);
	unlink(path);
	th_db_free(&db);
}
END_TEST

/*
 * SIGTERM: running sleeps are released (attempt refunded), noops finish,
 * every child is gone, the clean stop is recorded, exit 0.
 */
/* FM-013 */
START_TEST(test_sigterm_graceful)
{
	struct th_db	db;
	struct th_eavd	e;
	pid_t		pids[MAX_PIDS];
	char		lit[256];
	int		i, n;

	th_db_new(&db);
	conf(&e, &db, "sup2", 2, RELAXED);
	start_up(&e, &db, 2);
	n = up_pids(db.conn, "worker", pids, MAX_PIDS);
	n += up_pids(db.conn, "producer", pids + n, MAX_PIDS - n);
	ck_assert_int_eq(n, 3);
	PQclear(th_exec(db.conn, "SELECT eav.enqueue('sleep', '{\"ms\": "
	    "600000}') FROM generate_series(1, 4)", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 4 FROM "
	    "eav.steps WHERE tool = 'sleep' AND state = 'running'", 0));
	enqueue_noops(db.conn, 50, "noop");

	stop_ok(&e);
	ck_assert_msg(!th_log_contains(&e, "stragglers"),
	    "children had to be killed at the end of the grace period");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE state = 'running'", 0), 0);
	for (i = 0; i < n; i++)
		ck_assert_msg(child_gone(pids[i], e.conf),
		    "child pid %d outlived eavd", (int)pids[i]);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'process.stopping' AND "
	    "(payload->>'pid')::int = ANY ($1::int[])", 1, pids_literal(pids,
	    n, lit, sizeof(lit))), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'node.stopped'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.incarnations "
	    "WHERE stop_reason = 'clean'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE tool = 'sleep' AND state = 'pending' AND attempt = 0", 0),
	    4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT a.step_id) "
	    "FROM eav.audit_events a JOIN eav.steps s ON s.id = a.step_id "
	    "WHERE a.type = 'step.released' AND s.tool = 'sleep'", 0), 4);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps "
	    "WHERE tool = 'noop' AND state NOT IN ('succeeded', 'pending')",
	    0), 0);
	th_db_free(&db);
}
END_TEST

/*
 * Children get the configuration eavd validated, not the file: a file
 * broken while eavd runs (no SIGHUP) does not stop a restarted worker.
 */
/* FM-033 */
START_TEST(test_children_get_validated_config)
{
	struct th_db	db;
	struct th_eavd	e;
	pid_t		pids[MAX_PIDS];
	FILE		*fp;
	char		pid[16];

	th_db_new(&db);
	conf(&e, &db, "sup9", 2, RELAXED);
	start_up(&e, &db, 2);
	ck_assert_int_eq(up_pids(db.conn, "worker", pids, MAX_PIDS), 2);
	fp = fopen(e.conf, "w");
	ck_assert_ptr_nonnull(fp);
	fputs("[worker]\nconcurrency = 0\n", fp);
	fclose(fp);
	ck_assert_int_eq(kill(pids[0], SIGKILL), 0);
	snprintf(pid, sizeof(pid), "%d", (int)pids[0]);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 2 FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'up' AND "
	    "pid <> $1::int", 1, pid), "the worker was not replaced (log %s)",
	    e.log);
	ck_assert(!th_log_contains(&e, "worker.concurrency"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.processes "
	    "WHERE state = 'failed'", 0), 0);
	enqueue_noops(db.conn, 10, "after");
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 10 FROM "
	    "eav.tasks WHERE kind = 'after' AND state = 'succeeded'", 0));
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * SIGTERM while PostgreSQL is down, with a dead worker's reconciliation
 * still queued: eavd exits 0 within its exit deadline instead of waiting
 * for the database; the next start reconciles the incarnation.
 */
/* FM-034 */
START_TEST(test_sigterm_database_down)
{
	struct th_db	db;
	struct th_eavd	e;
	pid_t		pids[MAX_PIDS];
	int		status;

	th_db_new(&db);
	conf(&e, &db, "sup10", 1, RELAXED);
	start_up(&e, &db, 1);
	ck_assert_int_eq(up_pids(db.conn, "worker", pids, MAX_PIDS), 1);
	th_db_free(&db);
	th_pg_ctl("stop");
	ck_assert_int_eq(kill(pids[0], SIGKILL), 0);
	ck_assert(wait_log(&e, "was terminated by signal 9", DEADLINE_MS));
	status = th_eavd_stop(&e, SIGTERM, DEADLINE_MS);
	th_pg_ctl("start");
	ck_assert_msg(status != -1, "eavd did not exit with the database "
	    "down (log %s)", e.log);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "eavd exited with status 0x%x", status);
	ck_assert(th_log_contains(&e, "database unreachable at exit"));
}
END_TEST

/* SIGHUP with workers = 0: refused, the old configuration keeps running. */
/* FM-012 */
START_TEST(test_sighup_bad_config)
{
	struct th_db	db;
	struct th_eavd	e;
	pid_t		pids[MAX_PIDS];
	char		lit[256];
	int		n;

	th_db_new(&db);
	conf(&e, &db, "sup3", 2, RELAXED);
	start_up(&e, &db, 2);
	n = up_pids(db.conn, "worker", pids, MAX_PIDS);
	ck_assert_int_eq(n, 2);
	conf(&e, &db, "sup3", 0, RELAXED);
	ck_assert_int_eq(kill(e.pid, SIGHUP), 0);
	ck_assert_msg(wait_log(&e, "has errors; not reloading", DEADLINE_MS),
	    "eavd did not refuse the bad file (log %s)", e.log);
	ck_assert(th_log_contains(&e, "supervisor.workers"));
	ck_assert_int_eq(waitpid(e.pid, NULL, WNOHANG), 0);
	ck_assert(!th_log_contains(&e, "configuration reloaded"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'up' AND "
	    "pid = ANY ($1::int[])", 1, pids_literal(pids, n, lit,
	    sizeof(lit))), 2);
	ck_assert_int_eq(kill(pids[0], 0), 0);
	ck_assert_int_eq(kill(pids[1], 0), 0);
	enqueue_noops(db.conn, 10, "after");
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 10 FROM "
	    "eav.tasks WHERE kind = 'after' AND state = 'succeeded'", 0));
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * Rolling reload: when the next old worker is asked to stop, the one
 * stopped before it has been replaced by a ready process, so never are
 * two old workers stopping (or down) at once.  Counts the violations.
 */
static const char rolling_sql[] =
    "WITH r AS ("
    "  SELECT id, type, (payload->>'slot')::int AS slot,"
    "         (payload->>'pid')::int AS pid FROM eav.audit_events"
    "  WHERE type LIKE 'process.%' AND payload->>'kind' = 'worker'"
    "    AND id > $1::bigint"
    "), st AS ("
    "  SELECT id, slot, lead(id) OVER (ORDER BY id) AS next_id FROM r"
    "  WHERE type = 'process.stopping' AND pid = ANY ($2::int[])"
    ") SELECT count(*) FROM st WHERE next_id IS NOT NULL AND NOT EXISTS ("
    "  SELECT 1 FROM r WHERE r.type = 'process.ready' AND r.slot = st.slot"
    "    AND r.id > st.id AND r.id < st.next_id)";

/*
 * SIGHUP with workers 2 -> 3: three workers up, the old ones replaced one
 * at a time, and the tasks enqueued meanwhile all succeed.
 */
START_TEST(test_sighup_rolling)
{
	struct th_db	 db;
	struct th_eavd	 e;
	pid_t		 old[MAX_PIDS];
	char		 lit[256], mark[32], total[16];
	long long	 deadline;
	int		 n, sent = 0;

	th_db_new(&db);
	conf(&e, &db, "sup4", 2, RELAXED);
	start_up(&e, &db, 2);
	n = up_pids(db.conn, "worker", old, MAX_PIDS);
	ck_assert_int_eq(n, 2);
	pids_literal(old, n, lit, sizeof(lit));
	snprintf(mark, sizeof(mark), "%lld", th_ll(db.conn, "SELECT "
	    "coalesce(max(id), 0) FROM eav.audit_events", 0));

	conf(&e, &db, "sup4", 3, RELAXED);
	ck_assert_int_eq(kill(e.pid, SIGHUP), 0);
	deadline = now_ms() + DEADLINE_MS;
	while (!th_log_contains(&e, "reload complete")) {
		ck_assert_msg(now_ms() < deadline, "reload did not complete "
		    "(log %s)", e.log);
		enqueue_noops(db.conn, 5, "reload");
		sent += 5;
		pause_ms(10);
	}
	enqueue_noops(db.conn, 5, "reload");
	sent += 5;

	ck_assert(th_eavd_wait_up(&e, db.conn, 3, DEADLINE_MS));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'up' AND "
	    "pid <> ALL ($1::int[])", 1, lit), 3);
	ck_assert_msg(child_gone(old[0], e.conf) && child_gone(old[1],
	    e.conf), "an old worker is still running");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type IN ('process.stopping', "
	    "'process.exited') AND id > $1::bigint AND "
	    "(payload->>'pid')::int = ANY ($2::int[])", 2, mark, lit), 4);
	ck_assert_int_eq(th_ll(db.conn, rolling_sql, 2, mark, lit), 0);
	snprintf(total, sizeof(total), "%d", sent);
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = $1::int "
	    "FROM eav.tasks WHERE kind = 'reload' AND state = 'succeeded'", 1,
	    total), "tasks enqueued during the reload did not all succeed");
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * SIGHUP while the workers are still starting (each takes a second to
 * come up): the reload waits for them, then replaces them too.
 */
START_TEST(test_sighup_while_starting)
{
	struct th_db	db;
	struct th_eavd	e;
	pid_t		old[MAX_PIDS];
	char		lit[256];
	PGresult	*res;
	int		i, n;

	th_db_new(&db);
	conf(&e, &db, "sup6", 2, RELAXED);
	setenv("EAV_INJECT", "worker.startup=delay:1000", 1);
	th_eavd_start(&e);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 2 FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'starting' "
	    "AND pid IS NOT NULL", 0));
	res = th_exec(db.conn, "SELECT pid FROM eav.proj_processes WHERE "
	    "kind = 'worker'", 0);
	n = PQntuples(res);
	for (i = 0; i < n; i++)
		old[i] = (pid_t)atoi(PQgetvalue(res, i, 0));
	PQclear(res);
	pids_literal(old, n, lit, sizeof(lit));
	ck_assert_int_eq(kill(e.pid, SIGHUP), 0);
	ck_assert_msg(wait_log(&e, "reload complete", DEADLINE_MS),
	    "a reload begun while children were starting never completed "
	    "(log %s)", e.log);
	ck_assert(th_eavd_wait_up(&e, db.conn, 2, DEADLINE_MS));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'up' AND "
	    "pid <> ALL ($1::int[])", 1, lit), 2);
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/*
 * Every worker dies at start: after restart_intensity crashes the worker
 * kind is failed with an alarm; the producer and eavd carry on.
 */
/* FM-010 */
START_TEST(test_restart_intensity)
{
	struct th_db	db;
	struct th_eavd	e;
	PGresult	*res;
	char		mark[32];

	th_db_new(&db);
	conf(&e, &db, "sup5", 2, "restart_intensity = 3\n"
	    "restart_period = 60s\nrestart_backoff_min = 10ms\n"
	    "restart_backoff_max = 100ms\n");
	setenv("EAV_INJECT", "worker.startup=crash", 1);
	th_eavd_start(&e);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT EXISTS (SELECT 1 "
	    "FROM eav.alarms WHERE type = 'restart_storm' AND state = 'open' "
	    "AND subject = 'node:sup5/worker')", 0),
	    "no restart_storm alarm (log %s)", e.log);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 2 FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'failed'",
	    0), "the worker slots did not end failed");
	snprintf(mark, sizeof(mark), "%lld", th_ll(db.conn, "SELECT "
	    "max(id) FROM eav.audit_events", 0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 1 FROM "
	    "eav.proj_processes WHERE kind = 'producer' AND state = 'up'", 0));
	res = th_exec(db.conn, "SELECT eav.event_submit('test', 'k1', 'task', "
	    "'{\"kind\": \"storm\", \"steps\": [{\"tool\": \"noop\"}]}')", 0);
	PQclear(res);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT state = 'accepted' "
	    "AND task_id IS NOT NULL FROM eav.inbox WHERE event_key = 'k1'",
	    0), "the producer did not ingest the event");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks "
	    "WHERE kind = 'storm'", 0), 1);
	/* Failed means failed: nothing was spawned since. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'process.spawned' AND "
	    "payload->>'kind' = 'worker' AND id > $1::bigint", 1, mark), 0);
	ck_assert_int_eq(waitpid(e.pid, NULL, WNOHANG), 0);
	/* A reload restarts the kind and resolves its alarm (audited). */
	ck_assert_int_eq(kill(e.pid, SIGHUP), 0);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT EXISTS (SELECT 1 "
	    "FROM eav.audit_events a JOIN eav.alarms l ON l.id = "
	    "(a.payload->>'alarm_id')::bigint WHERE a.type = 'alarm.resolved' "
	    "AND l.type = 'restart_storm' AND l.subject = 'node:sup5/worker')",
	    0), "the reload did not resolve the storm alarm (log %s)", e.log);
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* A bad value: eavd exits EX_CONFIG naming the option. */
/* FM-011 */
START_TEST(test_bad_config_refused)
{
	char	 path[512], out[512];
	char	*argv[] = { th_bin("eavd"), "-f", path, NULL };
	FILE	*fp;
	int	 status;

	snprintf(path, sizeof(path), "%s/bad-%d.conf", th_tmpdir(),
	    (int)getpid());
	snprintf(out, sizeof(out), "%s/bad-%d.out", th_tmpdir(),
	    (int)getpid());
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	fputs("[supervisor]\nworkers = 0\n", fp);
	fclose(fp);
	status = th_run(argv, out);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), EAV_EXIT_CONFIG);
	ck_assert(th_file_contains(out, "supervisor.workers"));
}
END_TEST

/* Copies systemd/eavd.service with eavd's path replaced by the build's. */
static void
unit_copy(const char *src, const char *dst, const char *eavd)
{
	static const char	 installed[] = "/usr/local/sbin/eavd";
	char			 line[1024], *p;
	FILE			*in, *out;

	in = fopen(src, "r");
	ck_assert_msg(in != NULL, "cannot open %s", src);
	out = fopen(dst, "w");
	ck_assert_ptr_nonnull(out);
	while (fgets(line, sizeof(line), in) != NULL) {
		if ((strncmp(line, "ExecStart=", 10) == 0 ||
		    strncmp(line, "ExecReload=", 11) == 0) &&
		    (p = strstr(line, installed)) != NULL) {
			*p = '\0';
			fprintf(out, "%s%s%s", line, eavd,
			    p + sizeof(installed) - 1);
		} else
			fputs(line, out);
	}
	fclose(in);
	fclose(out);
}

/* systemd-analyze verify accepts the unit file. */
START_TEST(test_unit_verifies)
{
	static char		 sa[] = "/usr/bin/systemd-analyze";
	char			 src[512], dir[512], unit[600], out[600];
	char			*argv[] = { sa, "verify", unit, NULL };
	int			 status;

	ck_assert_msg(access(sa, X_OK) == 0, "%s is missing: install systemd "
	    "(scripts/deps.sh check)", sa);
	snprintf(src, sizeof(src), "%s/systemd/eavd.service", th_root());
	snprintf(dir, sizeof(dir), "%s/unit-%d", th_tmpdir(), (int)getpid());
	ck_assert(mkdir(dir, 0755) == 0 || errno == EEXIST);
	snprintf(unit, sizeof(unit), "%s/eavd.service", dir);
	snprintf(out, sizeof(out), "%s/verify.out", dir);
	unit_copy(src, unit, th_bin("eavd"));
	status = th_run(argv, out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "systemd-analyze verify failed: see %s", out);
	ck_assert_msg(!th_file_contains(out, "Unknown"), "systemd-analyze "
	    "reports an unknown key or section");
	ck_assert_msg(!th_file_contains(out, "ignoring"), "systemd-analyze "
	    "ignores part of the unit");
}
END_TEST

/*
 * The same storm with the default policy (back-off from 100 ms doubling
 * to 30 s, more than 10 crashes in 5 minutes): about 80 s of back-off,
 * then the alarm, the worker kind stopped, the producer still running.
 * The back-off between spawns really doubles.
 */
/* FM-010 */
START_TEST(test_restart_storm_defaults)
{
	struct th_db	db;
	struct th_eavd	e;

	th_db_new(&db);
	conf(&e, &db, "sup6", 1, "");
	setenv("EAV_INJECT", "worker.startup=crash", 1);
	th_eavd_start(&e);
	unsetenv("EAV_INJECT");
	ck_assert_msg(th_wait(db.conn, 150000, "SELECT EXISTS (SELECT 1 "
	    "FROM eav.alarms WHERE type = 'restart_storm' AND state = 'open' "
	    "AND subject = 'node:sup6/worker')", 0),
	    "no restart_storm alarm (log %s)", e.log);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 1 FROM "
	    "eav.proj_processes WHERE kind = 'worker' AND state = 'failed'",
	    0));
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT count(*) = 1 FROM "
	    "eav.proj_processes WHERE kind = 'producer' AND state = 'up'", 0));
	/* 11 deaths: the first spawn and 10 restarts. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'process.spawned' AND "
	    "payload->>'kind' = 'worker'", 0), 11);
	/* Each gap at least the doubled back-off: 100 ms, 200 ms, ... */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM (SELECT at - "
	    "lag(at) OVER (ORDER BY id) AS gap, row_number() OVER (ORDER BY "
	    "id) AS n FROM eav.audit_events WHERE type = 'process.spawned' "
	    "AND payload->>'kind' = 'worker') g WHERE n > 1 AND gap < "
	    "least(interval '30 s', interval '100 ms' * 2 ^ (n - 2))", 0), 0);
	ck_assert_int_eq(waitpid(e.pid, NULL, WNOHANG), 0);
	stop_ok(&e);
	th_db_free(&db);
}
END_TEST

Suite *
suite_supervisor(void)
{
	Suite	*s = suite_create("supervisor");
	TCase	*tc = tcase_create("supervisor");
	TCase	*storm = tcase_create("storm-defaults");

	tcase_add_test(tc, test_notify_ready);
	tcase_add_test(tc, test_sigterm_graceful);
	tcase_add_test(tc, test_sighup_bad_config);
	tcase_add_test(tc, test_children_get_validated_config);
	tcase_add_test(tc, test_sigterm_database_down);
	tcase_add_test(tc, test_sighup_rolling);
	tcase_add_test(tc, test_sighup_while_starting);
	tcase_add_test(tc, test_restart_intensity);
	tcase_add_test(tc, test_bad_config_refused);
	tcase_add_test(tc, test_unit_verifies);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	tcase_add_test(storm, test_restart_storm_defaults);
	tcase_set_timeout(storm, 200);
	suite_add_tcase(s, storm);
	return s;
}
