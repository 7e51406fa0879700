/*
 * eavbench: eav's side of `make bench` (bench/run.sh runs it beside the
 * peers and pgbench, on the same cluster).  Each mode starts from a fresh
 * eav schema, runs the real eavd, and prints one line
 *   RESULT {json}
 * like the peers' drivers do.
 *
 *   eavbench drain   -d dsn -n N -c workers [-b behind] [-a audit_rows]
 *   eavbench latency -d dsn -n N -g gap_ms -c workers
 *   eavbench kill    -d dsn -n N -c workers
 *   eavbench killswitch -d dsn -n N -c workers
 *   eavbench http    -d dsn -n N -c workers
 *
 * drain: N no-op steps (plus `behind` pending steps after them) drained
 * by eavd with every transition audited; the clock runs from eavd's start
 * until the database shows the N steps done, as the peers are timed; the
 * peak RSS of eavd and its children is read before it stops.
 * latency: N steps enqueued one at a time, gap_ms apart, to an idle
 * pool; the start of a step is its step.claimed audit row.
 * kill: N times, SIGKILL the worker running a sleep step and time the
 * committed tool_call.unknown row, then the step's next claim.
 * killswitch: N times, while the workers drain a backlog, engage the
 * global kill switch and time the call: it returns once every claim in
 * flight has committed, so it bounds engage -> last claim committed; the
 * audit must show no step.claimed between each engage and its release.
 * http: N steps of an http tool against the test far side (httpd, built
 * beside eavbench; one process, one loop, 127.0.0.1), eavd up first with
 * its workers at their default concurrency; the clock runs from the
 * enqueue until the database shows the N steps succeeded.
 */
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "db.h"
#include "log.h"
#include "migrate.h"
#include "spawn.h"

#define DEADLINE_MS	600000

struct bench {
	const char	*mode;
	const char	*dsn;
	long		 n;
	long		 behind;
	long		 audit_rows;
	int		 workers;
	int		 gap_ms;
	PGconn		*conn;
	pid_t		 eavd;
	char		 conf[256];
	char		 bindir[512];
	char		 eavd_path[600];
};

static void	 usage(void) __attribute__((noreturn));
static double	 now_s(void);
static void	 pause_ms(long);
static PGresult	*q(struct bench *, const char *, int, ...);
static long long q_ll(struct bench *, const char *, int, ...);
static double	 q_double(struct bench *, const char *, const char *);
static void	 fresh_schema(struct bench *);
static void	 eavd_start(struct bench *, const char *);
static void	 eavd_stop(struct bench *);
static void	 wait_up(struct bench *);
static long	 rss_peak_kib(pid_t);
static long	 uss_kib(pid_t);
static int	 cmp_double(const void *, const void *);
static double	 pct(double *, long, double);
static void	 mode_drain(struct bench *);
static void	 mode_latency(struct bench *);
static void	 mode_killswitch(struct bench *);
static void	 mode_kill(struct bench *);
static double	 kill_once(struct bench *, double *);
static pid_t	 far_start(struct bench *, int *);
static void	 far_stop(pid_t);
static void	 mode_http(struct bench *);

static void
usage(void)
{
	fprintf(stderr, "usage: eavbench drain|latency|kill|killswitch|http "
	    "-d dsn -n count -c workers [-g gap_ms] [-b behind] "
	    "[-a audit_rows]\n");
	exit(2);
}

static double
now_s(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Pacing between polls or enqueues (not synchronisation). */
static void
pause_ms(long ms)
{
	struct timespec	ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* Runs SQL with an array of n text parameters; exits on failure. */
static PGresult *
q_params(struct bench *b, const char *sql, int n, const char **params)
{
	PGresult	*res;

	res = PQexecParams(b->conn, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK &&
	    PQresultStatus(res) != PGRES_COMMAND_OK)
		fatalx("%s: %s", sql, PQresultErrorMessage(res));
	return res;
}

/* Runs SQL with n text parameters; exits on failure; caller PQclears. */
static PGresult *
q(struct bench *b, const char *sql, int n, ...)
{
	const char	*params[8];
	va_list		 ap;
	int		 i;

	va_start(ap, n);
	for (i = 0; i < n && i < 8; i++)
		params[i] = va_arg(ap, const char *);
	va_end(ap);
	return q_params(b, sql, n, params);
}

/* The single integer value of a query (0 for NULL). */
static long long
q_ll(struct bench *b, const char *sql, int n, ...)
{
	const char	*params[8];
	PGresult	*res;
	va_list		 ap;
	long long	 v;
	int		 i;

	va_start(ap, n);
	for (i = 0; i < n && i < 8; i++)
		params[i] = va_arg(ap, const char *);
	va_end(ap);
	res = q_params(b, sql, n, params);
	if (PQntuples(res) != 1)
		fatalx("%s: %d rows", sql, PQntuples(res));
	v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return v;
}

/* The single float value of a query with one parameter. */
static double
q_double(struct bench *b, const char *sql, const char *param)
{
	PGresult	*res = q(b, sql, 1, param);
	double		 v;

	if (PQntuples(res) != 1)
		fatalx("%s: %d rows", sql, PQntuples(res));
	v = strtod(PQgetvalue(res, 0, 0), NULL);
	PQclear(res);
	return v;
}

/* Drops and re-creates schema eav, as the peers start from fresh schemas. */
static void
fresh_schema(struct bench *b)
{
	struct db	db;
	int		applied;

	memset(&db, 0, sizeof(db));
	PQclear(q(b, "DROP SCHEMA IF EXISTS eav CASCADE", 0));
	if (db_connect(&db, b->dsn, "eavbench") == -1 ||
	    migrate_apply(&db, &applied) == -1)
		fatalx("migration failed: %s", db.errmsg);
	db_close(&db);
}

/* Starts eavd with the given [supervisor]/[worker] lines. */
static void
eavd_start(struct bench *b, const char *extra)
{
	char		*argv[] = { b->eavd_path, "-f", b->conf, NULL };
	char		 log[300];
	struct spawn_io	 io = { -1, -1, -1 };
	FILE		*fp;

	snprintf(b->conf, sizeof(b->conf), "/tmp/eavbench-%d.conf",
	    (int)getpid());
	if ((fp = fopen(b->conf, "w")) == NULL)
		fatal("%s", b->conf);
	fprintf(fp, "[database]\ndsn = %s\n[supervisor]\nworkers = %d\n%s\n",
	    b->dsn, b->workers, extra);
	fclose(fp);
	snprintf(log, sizeof(log), "%s.log", b->conf);
	if ((io.err = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644)) == -1)
		fatal("%s", log);
	unsetenv("EAV_DSN");
	if ((b->eavd = spawn_child(argv[0], argv, &io, -1, SIGKILL)) == -1)
		fatal("cannot start %s", argv[0]);
	close(io.err);
}

static void
eavd_stop(struct bench *b)
{
	int	status, i;

	kill(b->eavd, SIGTERM);
	for (i = 0; i < 30000; i++) {
		if (waitpid(b->eavd, &status, WNOHANG) == b->eavd)
			break;
		pause_ms(1);
	}
	if (i == 30000) {
		kill(b->eavd, SIGKILL);
		waitpid(b->eavd, &status, 0);
	}
	unlink(b->conf);
}

/* Polls until every worker and the producer are up. */
static void
wait_up(struct bench *b)
{
	char	want[16];
	int	i;

	snprintf(want, sizeof(want), "%d", b->workers + 1);
	for (i = 0; i < 60000; i++) {
		if (q_ll(b, "SELECT count(*) FROM eav.proj_processes WHERE "
		    "state = 'up'", 0) == atoi(want))
			return;
		pause_ms(1);
	}
	fatalx("eavd did not come up");
}

/* Peak resident set of a process (VmHWM), in KiB; -1 if unknown. */
static long
rss_peak_kib(pid_t pid)
{
	char	path[64], line[256];
	FILE	*fp;
	long	v = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((fp = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (sscanf(line, "VmHWM: %ld", &v) == 1)
			break;
	fclose(fp);
	return v;
}

/*
 * Private memory of a process (Private_Clean + Private_Dirty of
 * smaps_rollup), in KiB; -1 if unknown.  Most of a C daemon's RSS is
 * shared library pages (libc, libcrypto, gnutls through libpq) that
 * every process on the machine shares; this is what it costs alone.
 */
static long
uss_kib(pid_t pid)
{
	char	path[64], line[256];
	FILE	*fp;
	long	v, sum = 0;
	int	n = 0;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	if ((fp = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (sscanf(line, "Private_Clean: %ld", &v) == 1 ||
		    sscanf(line, "Private_Dirty: %ld", &v) == 1) {
			sum += v;
			n++;
		}
	fclose(fp);
	return n == 2 ? sum : -1;
}

/* The largest memory figures of each kind of process, in KiB. */
struct mem {
	long	eavd, worker, producer;
};

static void
mem_sample(struct bench *b, long (*fn)(pid_t), struct mem *m)
{
	PGresult	*res;
	long		 r;
	int		 i;

	m->worker = m->producer = 0;
	res = q(b, "SELECT kind, pid FROM eav.proj_processes WHERE pid IS "
	    "NOT NULL", 0);
	for (i = 0; i < PQntuples(res); i++) {
		r = fn(atoi(PQgetvalue(res, i, 1)));
		if (strcmp(PQgetvalue(res, i, 0), "worker") == 0 &&
		    r > m->worker)
			m->worker = r;
		else if (strcmp(PQgetvalue(res, i, 0), "producer") == 0)
			m->producer = r;
	}
	PQclear(res);
	m->eavd = fn(b->eavd);
}

static void
mode_drain(struct bench *b)
{
	char		 n[24], behind[24], audit[24], last[24], chunk[24];
	char		 front[64];
	PGresult	*res;
	double		 te0, te1, t0, t1;
	struct mem	 rss, uss;
	long		 r;
	int		 i;

	fresh_schema(b);
	snprintf(n, sizeof(n), "%ld", b->n);
	snprintf(behind, sizeof(behind), "%ld", b->behind);
	snprintf(audit, sizeof(audit), "%ld", b->audit_rows);
	te0 = now_s();
	/* The bulk API, like the peers' add_jobs and insert. */
	for (r = 0; r < b->n; r += 10000) {
		snprintf(chunk, sizeof(chunk), "%ld",
		    b->n - r < 10000 ? b->n - r : 10000);
		PQclear(q(b, "SELECT count(*) FROM eav.enqueue_many('noop', "
		    "(SELECT jsonb_agg('{}'::jsonb) FROM generate_series(1, "
		    "$1::int)))", 1, chunk));
	}
	te1 = now_s();
	snprintf(last, sizeof(last), "%lld", q_ll(b, "SELECT max(id) FROM "
	    "eav.steps", 0));
	res = q(b, "SELECT max(run_at)::text FROM eav.steps", 0);
	snprintf(front, sizeof(front), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	/* A backlog and old audit rows are fixtures: bulk rows. */
	if (b->behind > 0)
		PQclear(q(b, "WITH t AS (INSERT INTO eav.tasks (queue, kind, "
		    "trace_id, step_count, created_by) SELECT 'default', "
		    "'backlog', gen_random_uuid(), 1, 'eavbench' FROM "
		    "generate_series(1, $1::int) RETURNING id, trace_id) "
		    "INSERT INTO eav.steps (id, task_id, ordinal, queue, "
		    "trace_id, tool, input, idempotency_key, state, "
		    "max_attempts, run_at) SELECT eav.step_id(id, 1), id, 1, "
		    "'default', trace_id, 'noop', '{}', 'eav:' || id || ':1', "
		    "'pending', 5, now() + interval '1 second' FROM t", 1,
		    behind));
	if (b->audit_rows > 0)
		PQclear(q(b, "INSERT INTO eav.audit_events (type, outcome, "
		    "actor, task_id, payload) SELECT 'bench.filler', "
		    "'success', 'eavbench', -g, '{}' FROM generate_series(1, "
		    "$1::int) g",
		    1, audit));
	PQclear(q(b, "VACUUM ANALYZE", 0));
	PQclear(q(b, "CHECKPOINT", 0));

	t0 = now_s();
	eavd_start(b, "");
	/*
	 * Done when no step up to the last front one is pending or running:
	 * two partial-index probes bounded by the front's run_at, so that a
	 * poll never walks the backlog's entries (it did, every 5 ms, and
	 * took a core from the workers: the 1M-backlog ratio measured that).
	 */
	for (i = 0; i < DEADLINE_MS; i++) {
		if (q_ll(b, "SELECT (EXISTS (SELECT 1 FROM eav.steps WHERE "
		    "state = 'pending' AND run_at <= $2::timestamptz AND "
		    "id <= $1::bigint) OR EXISTS (SELECT 1 FROM eav.steps "
		    "WHERE state = 'running' AND owner_pid IS NOT NULL AND "
		    "id <= $1::bigint))::int", 2, last, front) == 0)
			break;
		pause_ms(5);
	}
	t1 = now_s();
	mem_sample(b, rss_peak_kib, &rss);
	mem_sample(b, uss_kib, &uss);
	eavd_stop(b);
	printf("RESULT {\"lib\": \"eav\", \"test\": \"throughput\", "
	    "\"concurrency\": %d, \"n\": %ld, \"behind\": %ld, "
	    "\"audit_rows\": %ld, \"enqueue_jobs_per_s\": %.0f, "
	    "\"process_ms\": %.0f, \"process_jobs_per_s\": %.0f, "
	    "\"rss_kib\": {\"eavd\": %ld, \"worker_max\": %ld, "
	    "\"producer\": %ld}, \"uss_kib\": {\"eavd\": %ld, "
	    "\"worker_max\": %ld, \"producer\": %ld}}\n", b->workers, b->n,
	    b->behind, b->audit_rows, b->n / (te1 - te0), (t1 - t0) * 1000,
	    b->n / (t1 - t0), rss.eavd, rss.worker, rss.producer, uss.eavd,
	    uss.worker, uss.producer);
}

static int
cmp_double(const void *a, const void *b)
{
	double	x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Percentile p (0-100) of n sorted values. */
static double
pct(double *v, long n, double p)
{
	long	i = (long)(p / 100.0 * n + 0.999999) - 1;

	if (n == 0)
		return -1;
	return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void
mode_latency(struct bench *b)
{
	long long	*ids = calloc((size_t)b->n, sizeof(*ids));
	double		*t0 = calloc((size_t)b->n, sizeof(*t0));
	double		*lat = calloc((size_t)b->n, sizeof(*lat));
	char		 id[24];
	long		 i, k = 0;

	if (ids == NULL || t0 == NULL || lat == NULL)
		fatal("calloc");
	fresh_schema(b);
	eavd_start(b, "");
	wait_up(b);
	pause_ms(500);
	for (i = 0; i < b->n; i++) {
		t0[i] = now_s();
		ids[i] = q_ll(b, "SELECT eav.enqueue('noop')", 0);
		pause_ms(b->gap_ms);
	}
	for (i = 0; i < b->n; i++) {
		snprintf(id, sizeof(id), "%lld", ids[i]);
		while (q_ll(b, "SELECT count(*) FROM eav.tasks WHERE id = "
		    "$1::bigint AND state = 'active'", 1, id) > 0)
			pause_ms(5);
		lat[k++] = (q_double(b, "SELECT extract(epoch FROM at) FROM "
		    "eav.audit_events WHERE task_id = $1::bigint AND type = "
		    "'step.claimed'", id) - t0[i]) * 1000;
	}
	eavd_stop(b);
	qsort(lat, (size_t)k, sizeof(*lat), cmp_double);
	printf("RESULT {\"lib\": \"eav\", \"test\": \"latency\", "
	    "\"gap_ms\": %d, \"concurrency\": %d, \"count\": %ld, "
	    "\"p50_ms\": %.1f, \"p99_ms\": %.1f, \"min_ms\": %.1f, "
	    "\"max_ms\": %.1f}\n", b->gap_ms, b->workers, k, pct(lat, k, 50),
	    pct(lat, k, 99), lat[0], lat[k - 1]);
	free(ids);
	free(t0);
	free(lat);
}

/* One kill: returns kill->unknown ms; *again gets unknown->claim ms. */
static double
kill_once(struct bench *b, double *again)
{
	char		 sid[24], epoch[24];
	long long	 task, pid, ep;
	double		 t0, t1;
	int		 i;

	task = q_ll(b, "SELECT eav.enqueue('sleep', '{\"ms\": 3000}', "
	    "p_max_attempts => 1000)", 0);
	snprintf(sid, sizeof(sid), "%lld", task * 128 + 1);
	for (i = 0; (pid = q_ll(b, "SELECT coalesce(max(owner_pid), 0) FROM "
	    "eav.steps WHERE id = $1::bigint AND state = 'running'", 1,
	    sid)) == 0; i++)
		if (i > 20000)
			fatalx("step %s never ran", sid);
	ep = q_ll(b, "SELECT claim_epoch FROM eav.steps WHERE id = $1::bigint",
	    1, sid);
	snprintf(epoch, sizeof(epoch), "%lld", ep);
	t0 = now_s();
	kill((pid_t)pid, SIGKILL);
	while (q_ll(b, "SELECT count(*) FROM eav.audit_events WHERE task_id = "
	    "$1::bigint / 128 AND step_id = $1::bigint AND type = "
	    "'tool_call.unknown'", 1, sid) == 0)
		pause_ms(1);
	t1 = q_double(b, "SELECT extract(epoch FROM at) FROM eav.audit_events "
	    "WHERE task_id = $1::bigint / 128 AND step_id = $1::bigint AND "
	    "type = 'tool_call.unknown'", sid);
	/* Running again: the next claim, less the back-off it had to wait. */
	while (q_ll(b, "SELECT count(*) FROM eav.steps WHERE id = $1::bigint "
	    "AND claim_epoch > $2::bigint", 2, sid, epoch) == 0)
		pause_ms(1);
	*again = q_double(b, "SELECT (extract(epoch FROM (SELECT at FROM "
	    "eav.audit_events WHERE task_id = $1::bigint / 128 AND step_id = "
	    "$1::bigint AND type = 'step.claimed' ORDER BY id DESC LIMIT 1)) "
	    "- extract(epoch FROM (SELECT (payload->>'run_at')::timestamptz "
	    "FROM eav.audit_events WHERE task_id = $1::bigint / 128 AND "
	    "step_id = $1::bigint AND type = 'step.retry_scheduled' ORDER BY "
	    "id DESC LIMIT 1))) * 1000", sid);
	return (t1 - t0) * 1000;
}

static void
mode_kill(struct bench *b)
{
	double	*lat = calloc((size_t)b->n, sizeof(*lat));
	double	*again = calloc((size_t)b->n, sizeof(*again));
	long	 i;

	if (lat == NULL || again == NULL)
		fatal("calloc");
	fresh_schema(b);
	/* A quick queue back-off, so the figure is the reconciliation's. */
	PQclear(q(b, "SELECT eav.queue_set('default', p_retry_base_ms => "
	    "10, p_retry_max_ms => 10)", 0));
	eavd_start(b, "restart_backoff_min = 10ms\nrestart_backoff_max = "
	    "100ms\nrestart_intensity = 0\n");
	wait_up(b);
	for (i = 0; i < b->n; i++)
		lat[i] = kill_once(b, &again[i]);
	eavd_stop(b);
	qsort(lat, (size_t)b->n, sizeof(*lat), cmp_double);
	qsort(again, (size_t)b->n, sizeof(*again), cmp_double);
	printf("RESULT {\"lib\": \"eav\", \"test\": \"kill\", \"count\": %ld, "
	    "\"p50_ms\": %.1f, \"p99_ms\": %.1f, \"max_ms\": %.1f, "
	    "\"again_p50_ms\": %.1f, \"again_p99_ms\": %.1f}\n", b->n,
	    pct(lat, b->n, 50), pct(lat, b->n, 99), lat[b->n - 1],
	    pct(again, b->n, 50), pct(again, b->n, 99));
	free(lat);
	free(again);
}

/* Tops the backlog up so the workers stay busy through every engage. */
static void
ks_refill(struct bench *b)
{
	int	i;

	if (q_ll(b, "SELECT count(*) FROM eav.steps WHERE state = "
	    "'pending'", 0) >= 20000)
		return;
	for (i = 0; i < 4; i++)
		PQclear(q(b, "SELECT count(*) FROM eav.enqueue_many('noop', "
		    "(SELECT jsonb_agg('{}'::jsonb) FROM generate_series(1, "
		    "10000)))", 0));
}

static void
mode_killswitch(struct bench *b)
{
	double		*lat = calloc((size_t)b->n, sizeof(*lat));
	long long	 after = 0;
	double		 t0;
	long		 i;

	if (lat == NULL)
		fatal("calloc");
	fresh_schema(b);
	ks_refill(b);
	eavd_start(b, "");
	wait_up(b);
	for (i = 0; i < b->n; i++) {
		ks_refill(b);
		pause_ms(50);	/* under load again */
		t0 = now_s();
		PQclear(q(b, "SELECT eav.kill_switch_engage('global', NULL, "
		    "'eavbench')", 0));
		lat[i] = (now_s() - t0) * 1000;
		PQclear(q(b, "SELECT eav.kill_switch_release('global', NULL, "
		    "'eavbench')", 0));
	}
	after = q_ll(b, "SELECT count(*) FROM eav.audit_events c JOIN "
	    "eav.audit_events e ON e.type = 'kill_switch.engaged' JOIN "
	    "eav.audit_events r ON r.type = 'kill_switch.released' AND "
	    "(r.payload->>'generation')::bigint = "
	    "(e.payload->>'generation')::bigint + 1 WHERE c.type = "
	    "'step.claimed' AND c.id > e.id AND c.id < r.id", 0);
	eavd_stop(b);
	qsort(lat, (size_t)b->n, sizeof(*lat), cmp_double);
	printf("RESULT {\"lib\": \"eav\", \"test\": \"killswitch\", "
	    "\"count\": %ld, \"p50_ms\": %.1f, \"p99_ms\": %.1f, "
	    "\"max_ms\": %.1f, \"claims_after_engage\": %lld}\n", b->n,
	    pct(lat, b->n, 50), pct(lat, b->n, 99), lat[b->n - 1], after);
	free(lat);
}

/* Starts the far side (--quiet: a log line per call would cost more than
 * the call) and returns its pid, with its port in *port. */
static pid_t
far_start(struct bench *b, int *port)
{
	char		 path[600], portfile[256], buf[32];
	char		*argv[] = { path, "-p", portfile, "--quiet", NULL };
	FILE		*fp;
	pid_t		 pid;
	int		 i;

	snprintf(path, sizeof(path), "%s/httpd", b->bindir);
	snprintf(portfile, sizeof(portfile), "/tmp/eavbench-%d.port",
	    (int)getpid());
	unlink(portfile);
	if ((pid = spawn_child(path, argv, NULL, -1, SIGKILL)) == -1)
		fatal("cannot start %s", path);
	for (*port = 0, i = 0; *port == 0; i++) {
		if (i > 10000)
			fatalx("%s did not write %s", path, portfile);
		if ((fp = fopen(portfile, "r")) != NULL) {
			if (fgets(buf, sizeof(buf), fp) != NULL)
				*port = atoi(buf);
			fclose(fp);
		}
		if (*port == 0)
			pause_ms(1);
	}
	unlink(portfile);
	return pid;
}

static void
far_stop(pid_t pid)
{
	int	status;

	if (kill(pid, SIGTERM) == -1 || waitpid(pid, &status, 0) != pid)
		fatal("cannot stop the far side");
}

static void
mode_http(struct bench *b)
{
	char	 cfg[128], n[24], chunk[24];
	double	 t0, te, t1;
	long	 r;
	pid_t	 far;
	int	 port, i;

	far = far_start(b, &port);
	fresh_schema(b);
	snprintf(cfg, sizeof(cfg), "{\"url\": \"http://127.0.0.1:%d/call\"}",
	    port);
	PQclear(q(b, "SELECT eav.tool_register('bench.http', 'http', "
	    "$1::jsonb, true, 10000)", 1, cfg));
	eavd_start(b, "");
	wait_up(b);
	snprintf(n, sizeof(n), "%ld", b->n);
	t0 = now_s();
	for (r = 0; r < b->n; r += 10000) {
		snprintf(chunk, sizeof(chunk), "%ld",
		    b->n - r < 10000 ? b->n - r : 10000);
		PQclear(q(b, "SELECT count(*) FROM eav.enqueue_many("
		    "'bench.http', (SELECT jsonb_agg(jsonb_build_object('i', "
		    "g)) FROM generate_series(1, $1::int) g))", 1, chunk));
	}
	te = now_s();
	for (i = 0; q_ll(b, "SELECT count(*) FROM eav.steps WHERE state IN "
	    "('pending', 'running')", 0) > 0; i++) {
		if (i > DEADLINE_MS / 5)
			fatalx("the http steps did not finish");
		pause_ms(5);
	}
	t1 = now_s();
	eavd_stop(b);
	far_stop(far);
	if (q_ll(b, "SELECT count(*) FROM eav.steps WHERE state = "
	    "'succeeded'", 0) != b->n)
		fatalx("not all %s http steps succeeded", n);
	printf("RESULT {\"lib\": \"eav\", \"test\": \"http\", "
	    "\"concurrency\": %d, \"n\": %ld, \"enqueue_ms\": %.0f, "
	    "\"process_ms\": %.0f, \"calls_per_s\": %.0f}\n", b->workers,
	    b->n, (te - t0) * 1000, (t1 - t0) * 1000, b->n / (t1 - t0));
}

int
main(int argc, char **argv)
{
	struct bench	 b;
	char		 self[512];
	ssize_t		 len;
	int		 ch;

	memset(&b, 0, sizeof(b));
	b.n = 20000;
	b.workers = 4;
	b.gap_ms = 10;
	log_init("eavbench");
	if (argc < 2)
		usage();
	b.mode = argv[1];
	optind = 2;
	while ((ch = getopt(argc, argv, "a:b:c:d:g:n:")) != -1) {
		switch (ch) {
		case 'a': b.audit_rows = atol(optarg); break;
		case 'b': b.behind = atol(optarg); break;
		case 'c': b.workers = atoi(optarg); break;
		case 'd': b.dsn = optarg; break;
		case 'g': b.gap_ms = atoi(optarg); break;
		case 'n': b.n = atol(optarg); break;
		default: usage();
		}
	}
	if (b.dsn == NULL || b.n < 1 || b.workers < 1)
		usage();
	if ((len = readlink("/proc/self/exe", self, sizeof(self) - 1)) == -1)
		fatal("readlink");
	self[len] = '\0';
	*strrchr(self, '/') = '\0';
	snprintf(b.bindir, sizeof(b.bindir), "%s", self);
	snprintf(b.eavd_path, sizeof(b.eavd_path), "%s/eavd", self);
	if ((b.conn = PQconnectdb(b.dsn)) == NULL ||
	    PQstatus(b.conn) != CONNECTION_OK)
		fatalx("cannot connect: %s", PQerrorMessage(b.conn));
	PQclear(q(&b, "SET client_min_messages = warning", 0));
	if (strcmp(b.mode, "drain") == 0)
		mode_drain(&b);
	else if (strcmp(b.mode, "latency") == 0)
		mode_latency(&b);
	else if (strcmp(b.mode, "kill") == 0)
		mode_kill(&b);
	else if (strcmp(b.mode, "killswitch") == 0)
		mode_killswitch(&b);
	else if (strcmp(b.mode, "http") == 0)
		mode_http(&b);
	else
		usage();
	fflush(stdout);
	PQfinish(b.conn);
	return 0;
}
