/*
 * recorder: the far side of the exec tool in tests.  Registered as an
 * exec tool, it reads the step's input JSON on stdin and does what its
 * "mode" says:
 *
 *   record      (the default) waits before_ms, records the call through
 *               its own connection (RECORDER_DSN), waits after_ms, prints
 *               what it recorded.  Every call is a delivery (table
 *               far_deliveries); with the default idempotent far side the
 *               effect is one row per EAV_IDEMPOTENCY_KEY (far_effects,
 *               INSERT ... ON CONFLICT DO NOTHING); with --every each
 *               delivery is an effect, as a non-idempotent far side.
 *   echo        prints its input and the EAV_* environment it got.
 *   exit        writes "stderr" (and the bytes of "stderr_hex") to stderr
 *               and exits with "code"; from attempt "succeed_from" on,
 *               prints {} and exits 0 instead.
 *   sleep       sleeps "ms", prints {}.
 *   text        writes "text" to stdout as it is (not JSON, say).
 *   hex         writes the bytes of "hex" (invalid UTF-8, say).
 *   big         prints one JSON string "bytes" long in all.
 *   signal      kills itself with "signal".
 *   hold        writes its pid to "pidfile", sleeps "ms", prints {}.
 *   grandchild  starts a child that sleeps "grandchild_ms" in the same
 *               process group, writes "<pid> <child pid>" to "pidfile",
 *               sleeps "ms", prints {}.
 *
 * Built without sanitizers (it is not the code under test, and an
 * address-space limit would stop a sanitized program from starting).
 * Exit 2 on a usage error.
 */
#include <sys/types.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

static int	every;		/* --every: not idempotent */

static void	die(const char *, ...) __attribute__((noreturn,
		    format(printf, 1, 2)));
static void	sleep_ms(long long);
static long long num(json_t *, const char *, long long);
static const char *str(json_t *, const char *, const char *);
static void	put_json(json_t *);
static void	write_pidfile(const char *, const char *);
static int	mode_record(json_t *);
static int	mode_echo(json_t *);
static int	mode_big(json_t *);
static void	put_hex(const char *, FILE *);
static int	mode_hex(json_t *);
static int	mode_hold(json_t *, pid_t);
static int	mode_grandchild(json_t *);
static int	run(json_t *);

static void
die(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	fputs("recorder: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static void
sleep_ms(long long ms)
{
	struct timespec	ts;

	if (ms <= 0)
		return;
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000;
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static long long
num(json_t *in, const char *key, long long dflt)
{
	json_t	*v = json_object_get(in, key);

	return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

static const char *
str(json_t *in, const char *key, const char *dflt)
{
	json_t	*v = json_object_get(in, key);

	return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Prints a JSON value on stdout (and takes it). */
static void
put_json(json_t *v)
{
	if (v == NULL || json_dumpf(v, stdout, JSON_COMPACT) == -1)
		die("cannot print the result");
	json_decref(v);
	putchar('\n');
	fflush(stdout);
}

/* Writes text to path through a rename, so a reader sees all or nothing. */
static void
write_pidfile(const char *path, const char *text)
{
	char	 tmp[4096];
	FILE	*fp;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((fp = fopen(tmp, "w")) == NULL)
		die("%s: %s", tmp, strerror(errno));
	fputs(text, fp);
	if (fclose(fp) != 0 || rename(tmp, path) == -1)
		die("%s: %s", path, strerror(errno));
}

/* One statement: the delivery and (idempotent) the effect commit together. */
static int
mode_record(json_t *in)
{
	const char	*dsn = getenv("RECORDER_DSN");
	const char	*key = getenv("EAV_IDEMPOTENCY_KEY");
	const char	*step = getenv("EAV_STEP_ID");
	const char	*att = getenv("EAV_ATTEMPT");
	char		 pid[16];
	const char	*params[5] = { key, step, att, pid, every ? "t" : "f" };
	PGconn		*c;
	PGresult	*res;
	int		 effect;

	if (dsn == NULL || key == NULL || step == NULL || att == NULL)
		die("RECORDER_DSN or an EAV_* variable is missing");
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	sleep_ms(num(in, "before_ms", 0));
	if (PQstatus(c = PQconnectdb(dsn)) != CONNECTION_OK)
		die("connect: %s", PQerrorMessage(c));
	res = PQexecParams(c, "WITH d AS (INSERT INTO far_deliveries "
	    "(key, step, attempt, pid) VALUES ($1, $2::bigint, $3::int, "
	    "$4::int)), e AS (INSERT INTO far_effects (key, step, attempt) "
	    "SELECT $1, $2::bigint, $3::int WHERE NOT $5::boolean "
	    "ON CONFLICT (key) DO NOTHING RETURNING 1) "
	    "SELECT $5::boolean OR EXISTS (SELECT 1 FROM e)", 5, NULL, params,
	    NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("record: %s", PQerrorMessage(c));
	effect = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	PQfinish(c);
	sleep_ms(num(in, "after_ms", 0));
	put_json(json_pack("{s:s, s:s, s:s, s:b, s:i}", "key", key, "step",
	    step, "attempt", att, "effect", effect, "pid", (int)getpid()));
	return 0;
}

/* The input as read, and the EAV_* environment. */
static int
mode_echo(json_t *in)
{
	static const char *const names[] = { "EAV_IDEMPOTENCY_KEY",
	    "EAV_TASK_ID", "EAV_STEP_ID", "EAV_ATTEMPT", "EAV_TRACE_ID" };
	json_t	*env = json_object();
	size_t	 i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (getenv(names[i]) != NULL)
			json_object_set_new(env, names[i],
			    json_string(getenv(names[i])));
	put_json(json_pack("{s:O, s:o}", "input", in, "env", env));
	return 0;
}

/* "xxx...": exactly n bytes with the quotes and the newline. */
static int
mode_big(json_t *in)
{
	long long	n = num(in, "bytes", 10), i;

	if (n < 3)
		die("big needs bytes >= 3");
	putchar('"');
	for (i = 0; i < n - 3; i++)
		putchar('x');
	fputs("\"\n", stdout);
	fflush(stdout);
	return 0;
}

/* Writes the bytes a hex string spells. */
static void
put_hex(const char *h, FILE *fp)
{
	unsigned int	b;

	for (; h[0] != '\0' && h[1] != '\0'; h += 2) {
		if (sscanf(h, "%2x", &b) != 1)
			die("bad hex");
		putc((int)b, fp);
	}
	fflush(fp);
}

static int
mode_hex(json_t *in)
{
	put_hex(str(in, "hex", ""), stdout);
	return 0;
}

/* Lets a test look at /proc/<pid> while it runs. */
static int
mode_hold(json_t *in, pid_t child)
{
	char	text[64];

	if (child != 0)
		snprintf(text, sizeof(text), "%d %d\n", (int)getpid(),
		    (int)child);
	else
		snprintf(text, sizeof(text), "%d\n", (int)getpid());
	write_pidfile(str(in, "pidfile", "/dev/null"), text);
	sleep_ms(num(in, "ms", 0));
	put_json(json_object());
	return 0;
}

/* A child left behind in our process group (it keeps stdout open). */
static int
mode_grandchild(json_t *in)
{
	pid_t	pid;

	if ((pid = fork()) == -1)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		sleep_ms(num(in, "grandchild_ms", 600000));
		_exit(0);
	}
	return mode_hold(in, pid);
}

static int
run(json_t *in)
{
	const char	*mode = str(in, "mode", "record");

	if (strcmp(mode, "record") == 0)
		return mode_record(in);
	if (strcmp(mode, "echo") == 0)
		return mode_echo(in);
	if (strcmp(mode, "exit") == 0 && getenv("EAV_ATTEMPT") != NULL &&
	    atoll(getenv("EAV_ATTEMPT")) >= num(in, "succeed_from", 1000)) {
		put_json(json_object());
		return 0;
	}
	if (strcmp(mode, "exit") == 0) {
		fputs(str(in, "stderr", ""), stderr);
		put_hex(str(in, "stderr_hex", ""), stderr);
		return (int)num(in, "code", 1);
	}
	if (strcmp(mode, "sleep") == 0) {
		sleep_ms(num(in, "ms", 0));
		put_json(json_object());
		return 0;
	}
	if (strcmp(mode, "text") == 0) {
		fputs(str(in, "text", ""), stdout);
		return 0;
	}
	if (strcmp(mode, "hex") == 0)
		return mode_hex(in);
	if (strcmp(mode, "big") == 0)
		return mode_big(in);
	if (strcmp(mode, "signal") == 0)
		return kill(getpid(), (int)num(in, "signal", SIGKILL));
	if (strcmp(mode, "hold") == 0)
		return mode_hold(in, 0);
	if (strcmp(mode, "grandchild") == 0)
		return mode_grandchild(in);
	die("unknown mode %s", mode);
}

int
main(int argc, char **argv)
{
	json_error_t	 jerr;
	json_t		*in;
	int		 i, rc;

	for (i = 1; i < argc; i++)
		if (strcmp(argv[i], "--every") == 0)
			every = 1;
		else if (strncmp(argv[i], "--marker=", 9) != 0)
			die("usage: recorder [--every] [--marker=text]");
	if ((in = json_loadf(stdin, 0, &jerr)) == NULL)
		die("stdin: %s", jerr.text);
	rc = run(in);
	json_decref(in);
	return rc;
}
