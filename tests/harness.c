/*
 * See harness.h.  tests/run.sh exports:
 *   EAV_TEST_HOST     socket directory of the test cluster
 *   EAV_TEST_PGDATA   its data directory (for restarts)
 *   EAV_TEST_BIN      directory of the binaries under test
 *   EAV_TEST_ROOT     the source tree
 *   EAV_TEST_TMP      a scratch directory removed afterwards
 *   EAV_TEST_AS_PG    set when pg_ctl must run as user postgres
 */
#include <sys/prctl.h>
#include <sys/stat.h>
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

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"
#include "spawn.h"

#define TH_MAX_PARAMS 16

static int	th_counter;

static void	th_quiet(void *, const char *);

/* Server notices are not test output. */
static void
th_quiet(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static const char *
th_env(const char *name)
{
	const char	*v = getenv(name);

	if (v == NULL || *v == '\0') {
		fprintf(stderr, "%s is not set: run the tests with make "
		    "check\n", name);
		exit(2);
	}
	return v;
}

/* Path of a binary under test, in one of four static buffers. */
char *
th_bin(const char *name)
{
	static char	path[4][512];
	static int	i;

	i = (i + 1) % 4;
	snprintf(path[i], sizeof(path[i]), "%s/%s", th_env("EAV_TEST_BIN"),
	    name);
	return path[i];
}

const char *
th_root(void)
{
	return th_env("EAV_TEST_ROOT");
}

const char *
th_tmpdir(void)
{
	return th_env("EAV_TEST_TMP");
}

/* Connects or fails the test. */
PGconn *
th_connect(const char *dsn)
{
	PGconn	*c = PQconnectdb(dsn);

	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect %s: %s", dsn,
	    PQerrorMessage(c));
	PQsetNoticeProcessor(c, th_quiet, NULL);
	return c;
}

static void
th_db_create(struct th_db *db, const char *template)
{
	PGconn		*admin;
	PGresult	*res;
	char		 dsn[512], sql[256], *ident;

	snprintf(dsn, sizeof(dsn), "host=%s user=eav dbname=postgres",
	    th_env("EAV_TEST_HOST"));
	admin = th_connect(dsn);
	snprintf(db->name, sizeof(db->name), "eavtest_%d_%d", (int)getpid(),
	    ++th_counter);
	/* DDL takes no parameters: the generated name is quoted instead. */
	ident = PQescapeIdentifier(admin, db->name, strlen(db->name));
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s TEMPLATE %s", ident,
	    template);
	PQfreemem(ident);
	res = PQexecParams(admin, sql, 0, NULL, NULL, NULL, NULL, 0);
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK,
	    "create database: %s", PQerrorMessage(admin));
	PQclear(res);
	PQfinish(admin);
	snprintf(db->dsn, sizeof(db->dsn), "host=%s user=eav dbname=%s",
	    th_env("EAV_TEST_HOST"), db->name);
	db->conn = th_connect(db->dsn);
}

/* A fresh database with the current schema. */
void
th_db_new(struct th_db *db)
{
	th_db_create(db, "eavtest_template");
}

/* A fresh database without the eav schema. */
void
th_db_empty(struct th_db *db)
{
	th_db_create(db, "template0");
}

/* Closes the connection (the database goes with the cluster). */
void
th_db_free(struct th_db *db)
{
	if (db->conn != NULL)
		PQfinish(db->conn);
	db->conn = NULL;
}

static PGresult *
th_vexec(PGconn *c, const char *sql, int n, va_list ap)
{
	const char	*params[TH_MAX_PARAMS];
	int		 i;

	ck_assert_int_le(n, TH_MAX_PARAMS);
	for (i = 0; i < n; i++)
		params[i] = va_arg(ap, const char *);
	return PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
}

PGresult *
th_exec(PGconn *c, const char *sql, int n, ...)
{
	PGresult	*res;
	va_list		 ap;

	va_start(ap, n);
	res = th_vexec(c, sql, n, ap);
	va_end(ap);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK ||
	    PQresultStatus(res) == PGRES_COMMAND_OK, "%s: %s", sql,
	    PQresultErrorMessage(res));
	return res;
}

long long
th_ll(PGconn *c, const char *sql, int n, ...)
{
	PGresult	*res;
	va_list		 ap;
	long long	 v;

	va_start(ap, n);
	res = th_vexec(c, sql, n, ap);
	va_end(ap);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql,
	    PQresultErrorMessage(res));
	ck_assert_msg(PQntuples(res) == 1, "%s: %d rows", sql,
	    PQntuples(res));
	v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return v;
}

char *
th_str(PGconn *c, const char *sql, int n, ...)
{
	PGresult	*res;
	va_list		 ap;
	char		*v;

	va_start(ap, n);
	res = th_vexec(c, sql, n, ap);
	va_end(ap);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql,
	    PQresultErrorMessage(res));
	ck_assert_msg(PQntuples(res) == 1, "%s: %d rows", sql,
	    PQntuples(res));
	v = PQgetisnull(res, 0, 0) ? NULL : strdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	return v;
}

const char *
th_err(PGconn *c, const char *sql, int n, ...)
{
	static char	 buf[1024];
	PGresult	*res;
	va_list		 ap;
	const char	*st, *msg;

	va_start(ap, n);
	res = th_vexec(c, sql, n, ap);
	va_end(ap);
	ck_assert_msg(PQresultStatus(res) == PGRES_FATAL_ERROR,
	    "%s: expected an error", sql);
	st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	snprintf(buf, sizeof(buf), "%s: %s", st ? st : "?", msg ? msg : "?");
	PQclear(res);
	return buf;
}

long long
th_now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
th_wait(PGconn *c, int timeout_ms, const char *sql, int n, ...)
{
	const struct timespec	 tick = { 0, 5000000 };
	long long		 deadline = th_now_ms() + timeout_ms;
	PGresult		*res;
	va_list			 ap;
	int			 ok;

	for (;;) {
		va_start(ap, n);
		res = th_vexec(c, sql, n, ap);
		va_end(ap);
		ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK,
		    "%s: %s", sql, PQresultErrorMessage(res));
		ok = PQntuples(res) == 1 &&
		    strcmp(PQgetvalue(res, 0, 0), "t") == 0;
		PQclear(res);
		if (ok)
			return 1;
		if (th_now_ms() > deadline)
			return 0;
		nanosleep(&tick, NULL);
	}
}

/* Writes an eavd configuration for db, with extra INI text appended. */
void
th_eavd_conf(struct th_eavd *e, const struct th_db *db, const char *extra)
{
	FILE	*fp;

	memset(e, 0, sizeof(*e));
	snprintf(e->conf, sizeof(e->conf), "%s/%s.conf", th_tmpdir(),
	    db->name);
	snprintf(e->log, sizeof(e->log), "%s/%s.log", th_tmpdir(), db->name);
	fp = fopen(e->conf, "w");
	ck_assert_ptr_nonnull(fp);
	fprintf(fp, "[database]\ndsn = %s\n\n%s\n", db->dsn,
	    extra ? extra : "");
	fclose(fp);
}

/*
 * Starts eavd with stderr appended to e->log.  It gets SIGKILL if the
 * test process dies, so a failed test leaves no daemon behind.
 */
void
th_eavd_start(struct th_eavd *e)
{
	char		*argv[] = { th_bin("eavd"), "-f", e->conf, NULL };
	struct spawn_io	 io;
	int		 fd;

	fd = open(e->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	io.in = -1;
	io.out = fd;
	io.err = fd;
	e->pid = spawn_child(argv[0], argv, &io, -1, SIGKILL);
	close(fd);
	ck_assert_int_gt(e->pid, 0);
}

/* Waits until eavd's current incarnation has nworkers workers and a
 * producer up; returns 1, or 0 at the deadline. */
int
th_eavd_wait_up(struct th_eavd *e, PGconn *c, int nworkers, int timeout_ms)
{
	char	n[16];

	(void)e;
	snprintf(n, sizeof(n), "%d", nworkers + 1);
	return th_wait(c, timeout_ms, "SELECT count(*) = $1::int FROM "
	    "eav.proj_processes WHERE state = 'up' AND pid IS NOT NULL", 1, n);
}

/* waitpid with a deadline; returns the status, or -1 at the deadline. */
int
th_waitpid(pid_t pid, int timeout_ms)
{
	const struct timespec	 tick = { 0, 2000000 };
	long long		 deadline = th_now_ms() + timeout_ms;
	int			 status;
	pid_t			 r;

	for (;;) {
		r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		ck_assert_msg(r == 0, "waitpid %d: %s", (int)pid,
		    strerror(errno));
		if (th_now_ms() > deadline)
			return -1;
		nanosleep(&tick, NULL);
	}
}

/*
 * Sends sig (0: none) and waits for eavd to exit; returns its wait
 * status, or -1 if it had to be killed at the deadline.
 */
int
th_eavd_stop(struct th_eavd *e, int sig, int timeout_ms)
{
	int	status;

	if (e->pid <= 0)
		return -1;
	if (sig != 0)
		kill(e->pid, sig);
	status = th_waitpid(e->pid, timeout_ms);
	if (status == -1) {
		kill(e->pid, SIGKILL);
		(void)th_waitpid(e->pid, 5000);
	}
	e->pid = 0;
	return status;
}

/* True if the file contains needle. */
int
th_file_contains(const char *path, const char *needle)
{
	FILE	*fp = fopen(path, "r");
	char	 line[4096];
	int	 found = 0;

	if (fp == NULL)
		return 0;
	while (!found && fgets(line, sizeof(line), fp) != NULL)
		found = strstr(line, needle) != NULL;
	fclose(fp);
	return found;
}

int
th_log_contains(const struct th_eavd *e, const char *needle)
{
	return th_file_contains(e->log, needle);
}

int
th_run(char *const argv[], const char *out)
{
	struct spawn_io	 io = { -1, -1, -1 };
	pid_t		 pid;
	int		 fd = -1, status;

	if (out != NULL) {
		fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		ck_assert_int_ge(fd, 0);
		io.out = io.err = fd;
	}
	pid = spawn_child(argv[0], argv, &io, -1, SIGKILL);
	if (fd != -1)
		close(fd);
	ck_assert_int_gt(pid, 0);
	status = th_waitpid(pid, 120000);
	ck_assert_int_ne(status, -1);
	return status;
}

/* Runs pg_ctl on the test cluster: "stop", "start" or "restart" (fast). */
void
th_pg_ctl(const char *action)
{
	char	 log[600], data[512], act[16];
	char	*pg[] = { "/usr/lib/postgresql/15/bin/pg_ctl", "-D", data, "-l",
		    log, "-m", "fast", "-w", "-t", "60", act, NULL };
	char	*root[] = { "/usr/sbin/runuser", "-u", "postgres", "--",
		    pg[0], pg[1], pg[2], pg[3], pg[4], pg[5], pg[6], pg[7],
		    pg[8], pg[9], pg[10], NULL };
	int	 status;

	snprintf(act, sizeof(act), "%s", action);
	snprintf(data, sizeof(data), "%s", th_env("EAV_TEST_PGDATA"));
	snprintf(log, sizeof(log), "%s.log", data);
	status = th_run(getenv("EAV_TEST_AS_PG") ? root : pg, NULL);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "pg_ctl %s failed", action);
}

void
th_pg_restart_fast(void)
{
	th_pg_ctl("restart");
}

/* Pauses for ms milliseconds: pacing, never a wait for a condition. */
void
th_pause_ms(long ms)
{
	struct timespec	ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* Starts eavd and waits until its nworkers workers are up. */
void
th_eavd_up(struct th_eavd *e, PGconn *c, int nworkers)
{
	th_eavd_start(e);
	ck_assert_msg(th_eavd_wait_up(e, c, nworkers, 30000),
	    "eavd did not come up (log %s)", e->log);
}

/* SIGTERM, exit 0, and no sanitizer report in any process's log. */
void
th_eavd_stop_ok(struct th_eavd *e)
{
	int	status = th_eavd_stop(e, SIGTERM, 30000);

	ck_assert_msg(status != -1 && WIFEXITED(status) &&
	    WEXITSTATUS(status) == 0, "eavd did not stop cleanly (log %s)",
	    e->log);
	ck_assert_msg(!th_log_contains(e, "Sanitizer") &&
	    !th_log_contains(e, "runtime error"), "a sanitizer reported an "
	    "error (log %s)", e->log);
}
