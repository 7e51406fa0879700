/*
 * Small helpers of the soak: clocks, a seeded generator, the
 * orchestrator's database calls, JSON lines, /proc and child commands.
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

#include "log.h"
#include "soak.h"
#include "spawn.h"
#include "xalloc.h"

#define OBS_MAX_PARAMS	12

int64_t
mono_ns(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		fatal("clock_gettime");
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CLOCK_REALTIME in seconds: what PostgreSQL's clock_timestamp() reads. */
double
real_s(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_REALTIME, &ts) == -1)
		fatal("clock_gettime");
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Seconds since a monotonic origin. */
double
since_s(int64_t origin)
{
	return (double)(mono_ns() - origin) / 1e9;
}

/* Pacing and fault lengths only; never used to wait for a condition. */
void
pause_ms(long ms)
{
	struct timespec	ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) == -1)
		if (errno != EINTR)
			fatal("nanosleep");
}

/* splitmix64: small, seedable, good enough to pick victims. */
uint64_t
rng_next(uint64_t *st)
{
	uint64_t	z = (*st += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Uniform integer in [lo, hi]. */
int
rng_range(uint64_t *st, int lo, int hi)
{
	return lo + (int)(rng_next(st) % (uint64_t)(hi - lo + 1));
}

/* Server notices (a crash restart warns every session) are not output. */
void
soak_quiet(void *arg, const char *msg)
{
	(void)arg;
	log_debug("postgres: %s", msg);
}

static int
obs_connect(struct obs *o)
{
	const char	*keys[] = { "dbname", "application_name",
			    "connect_timeout", NULL };
	const char	*vals[] = { o->dsn, "soak-orchestrator", "5", NULL };

	if (o->conn != NULL)
		return 0;
	o->conn = PQconnectdbParams(keys, vals, 1);
	if (o->conn == NULL || PQstatus(o->conn) != CONNECTION_OK) {
		log_debug("observer: cannot connect: %s",
		    o->conn ? PQerrorMessage(o->conn) : "out of memory");
		obs_close(o);
		return -1;
	}
	PQsetNoticeProcessor(o->conn, soak_quiet, NULL);
	return 0;
}

void
obs_close(struct obs *o)
{
	if (o->conn != NULL)
		PQfinish(o->conn);
	o->conn = NULL;
}

static PGresult *
obs_vq(struct obs *o, const char *sql, int n, va_list ap)
{
	const char	*params[OBS_MAX_PARAMS];
	PGresult	*res;
	ExecStatusType	 st;
	int		 i;

	if (n > OBS_MAX_PARAMS)
		fatalx("%s: %d parameters", sql, n);
	for (i = 0; i < n; i++)
		params[i] = va_arg(ap, const char *);
	if (obs_connect(o) == -1)
		return NULL;
	res = PQexecParams(o->conn, sql, n, NULL, params, NULL, NULL, 0);
	st = PQresultStatus(res);
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
		return res;
	log_debug("observer: %.60s: %s", sql, PQresultErrorMessage(res));
	PQclear(res);
	/* A lost connection is made again at the next call. */
	if (PQstatus(o->conn) != CONNECTION_OK)
		obs_close(o);
	return NULL;
}

/*
 * Runs a statement with n text parameters; returns its result (the
 * caller PQclears it) or NULL when it failed, with the connection closed
 * if it was lost.
 */
PGresult *
obs_q(struct obs *o, const char *sql, int n, ...)
{
	PGresult	*res;
	va_list		 ap;

	va_start(ap, n);
	res = obs_vq(o, sql, n, ap);
	va_end(ap);
	return res;
}

/* A statement whose result does not matter; 0 if it ran, or -1. */
int
obs_run(struct obs *o, const char *sql, int n, ...)
{
	PGresult	*res;
	va_list		 ap;
	int		 rc;

	va_start(ap, n);
	res = obs_vq(o, sql, n, ap);
	va_end(ap);
	rc = res == NULL ? -1 : 0;
	PQclear(res);
	return rc;
}

/* A one-value query; 0 with *v set (0 for NULL), or -1. */
int
obs_ll(struct obs *o, long long *v, const char *sql, int n, ...)
{
	PGresult	*res;
	va_list		 ap;

	va_start(ap, n);
	res = obs_vq(o, sql, n, ap);
	va_end(ap);
	if (res == NULL)
		return -1;
	if (PQntuples(res) != 1 || PQnfields(res) < 1) {
		PQclear(res);
		return -1;
	}
	*v = PQgetisnull(res, 0, 0) ? 0 :
	    strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return 0;
}

/* Opens a JSON-lines log for appending. */
FILE *
jl_open(const char *path)
{
	FILE	*fp = fopen(path, "a");

	if (fp == NULL)
		fatal("%s", path);
	return fp;
}

/*
 * Writes one object as a line and flushes it, so the log survives a
 * crash of the writer; takes the reference.
 */
void
jl_write(FILE *fp, json_t *o)
{
	if (o == NULL)
		fatalx("cannot build a log record");
	if (json_dumpf(o, fp, JSON_COMPACT | JSON_REAL_PRECISION(17)) == -1 ||
	    fputc('\n', fp) == EOF || fflush(fp) == EOF)
		fatal("cannot write a log record");
	json_decref(o);
}

/*
 * Reads /proc/pid/stat: command name, state, parent and session.
 * Returns 0, or -1 if the process is gone.
 */
int
proc_info(pid_t pid, char *comm, size_t len, char *state, pid_t *ppid,
    pid_t *sid)
{
	char	 path[64], buf[512], *lp, *rp;
	int	 fd, pp, pg, ss;
	ssize_t	 n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	/* The name is in parentheses and may itself hold them. */
	if ((lp = strchr(buf, '(')) == NULL ||
	    (rp = strrchr(buf, ')')) == NULL || rp < lp)
		return -1;
	*rp = '\0';
	snprintf(comm, len, "%s", lp + 1);
	if (sscanf(rp + 2, "%c %d %d %d", state, &pp, &pg, &ss) != 4)
		return -1;
	*ppid = pp;
	*sid = ss;
	return 0;
}

/* True if the process's command line holds `opt value`. */
int
proc_has_arg(pid_t pid, const char *opt, const char *value)
{
	char	 path[64], buf[4096], *p, *end;
	int	 fd;
	ssize_t	 n;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	end = buf + n;
	for (p = buf; p < end; p += strlen(p) + 1)
		if (strcmp(p, opt) == 0 && p + strlen(p) + 1 < end &&
		    strcmp(p + strlen(p) + 1, value) == 0)
			return 1;
	return 0;
}

/*
 * Runs a command to its end with stdout and stderr appended to log;
 * returns its wait status, or -1 if it could not start.
 */
int
run_wait(char *const argv[], const char *log)
{
	struct spawn_io	 io = { -1, -1, -1 };
	pid_t		 pid;
	int		 fd, status;

	fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd == -1) {
		log_warn("%s", log);
		return -1;
	}
	io.out = io.err = fd;
	pid = spawn_child(argv[0], argv, &io, -1, SIGKILL);
	close(fd);
	if (pid == -1) {
		log_warn("cannot start %s", argv[0]);
		return -1;
	}
	while (waitpid(pid, &status, 0) == -1)
		if (errno != EINTR)
			fatal("waitpid %s", argv[0]);
	return status;
}

/* The postmaster's pid from its pid file, or -1. */
pid_t
postmaster_pid(const char *pgdata)
{
	char	 path[PATH_MAX];
	FILE	*fp;
	int	 pid = -1;

	snprintf(path, sizeof(path), "%s/postmaster.pid", pgdata);
	if ((fp = fopen(path, "r")) == NULL)
		return -1;
	if (fscanf(fp, "%d", &pid) != 1)
		pid = -1;
	fclose(fp);
	return pid;
}

/* Appends formatted text, growing the buffer. */
void
sb_add(struct sbuf *b, const char *fmt, ...)
{
	va_list	ap;
	int	n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->s ? b->s + b->len : NULL,
		    b->s ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			fatalx("sb_add: bad format");
		if (b->s != NULL && b->len + (size_t)n < b->cap)
			break;
		b->cap = (b->cap + (size_t)n + 1) * 2;
		b->s = xreallocarray(b->s, b->cap, 1);
	}
	b->len += (size_t)n;
}

void
sb_free(struct sbuf *b)
{
	free(b->s);
	memset(b, 0, sizeof(*b));
}
