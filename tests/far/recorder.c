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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "farlib.h"

static int	every;		/* --every: not idempotent */

static void	sleep_ms(long long);
static void	put_json(json_t *);
static int	mode_record(json_t *);
static int	mode_echo(json_t *);
static int	mode_big(json_t *);
static void	put_hex(const char *, FILE *);
static int	mode_hex(json_t *);
static int	mode_hold(json_t *, pid_t);
static int	mode_grandchild(json_t *);
static int	run(json_t *);

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

/* Prints a JSON value on stdout (and takes it). */
static void
put_json(json_t *v)
{
	if (v == NULL || json_dumpf(v, stdout, JSON_COMPACT) == -1)
		far_die("cannot print the result");
	json_decref(v);
	putchar('\n');
	fflush(stdout);
}

/* One statement: the delivery and (idempotent) the effect commit together. */
static int
mode_record(json_t *in)
{
	const char	*dsn = getenv("RECORDER_DSN");
	const char	*key = getenv("EAV_IDEMPOTENCY_KEY");
	const char	*step = getenv("EAV_STEP_ID");
	const char	*att = getenv("EAV_ATTEMPT");
	PGconn		*c;
	int		 effect;

	if (dsn == NULL || key == NULL || step == NULL || att == NULL)
		far_die("RECORDER_DSN or an EAV_* variable is missing");
	sleep_ms(far_num(in, "before_ms", 0));
	if (PQstatus(c = PQconnectdb(dsn)) != CONNECTION_OK)
		far_die("connect: %s", PQerrorMessage(c));
	effect = far_record(c, key, step, att, every);
	PQfinish(c);
	sleep_ms(far_num(in, "after_ms", 0));
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
	long long	n = far_num(in, "bytes", 10), i;

	if (n < 3)
		far_die("big needs bytes >= 3");
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
			far_die("bad hex");
		putc((int)b, fp);
	}
	fflush(fp);
}

static int
mode_hex(json_t *in)
{
	put_hex(far_str(in, "hex", ""), stdout);
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
	far_write_pidfile(far_str(in, "pidfile", "/dev/null"), text);
	sleep_ms(far_num(in, "ms", 0));
	put_json(json_object());
	return 0;
}

/* A child left behind in our process group (it keeps stdout open). */
static int
mode_grandchild(json_t *in)
{
	pid_t	pid;

	if ((pid = fork()) == -1)
		far_die("fork: %s", strerror(errno));
	if (pid == 0) {
		sleep_ms(far_num(in, "grandchild_ms", 600000));
		_exit(0);
	}
	return mode_hold(in, pid);
}

static int
run(json_t *in)
{
	const char	*mode = far_str(in, "mode", "record");

	if (strcmp(mode, "record") == 0)
		return mode_record(in);
	if (strcmp(mode, "echo") == 0)
		return mode_echo(in);
	if (strcmp(mode, "exit") == 0 && getenv("EAV_ATTEMPT") != NULL &&
	    atoll(getenv("EAV_ATTEMPT")) >= far_num(in, "succeed_from", 1000)) {
		put_json(json_object());
		return 0;
	}
	if (strcmp(mode, "exit") == 0) {
		fputs(far_str(in, "stderr", ""), stderr);
		put_hex(far_str(in, "stderr_hex", ""), stderr);
		return (int)far_num(in, "code", 1);
	}
	if (strcmp(mode, "sleep") == 0) {
		sleep_ms(far_num(in, "ms", 0));
		put_json(json_object());
		return 0;
	}
	if (strcmp(mode, "text") == 0) {
		fputs(far_str(in, "text", ""), stdout);
		return 0;
	}
	if (strcmp(mode, "hex") == 0)
		return mode_hex(in);
	if (strcmp(mode, "big") == 0)
		return mode_big(in);
	if (strcmp(mode, "signal") == 0)
		return kill(getpid(), (int)far_num(in, "signal", SIGKILL));
	if (strcmp(mode, "hold") == 0)
		return mode_hold(in, 0);
	if (strcmp(mode, "grandchild") == 0)
		return mode_grandchild(in);
	far_die("unknown mode %s", mode);
}

int
main(int argc, char **argv)
{
	json_error_t	 jerr;
	json_t		*in;
	int		 i, rc;

	far_prog = "recorder";
	for (i = 1; i < argc; i++)
		if (strcmp(argv[i], "--every") == 0)
			every = 1;
		else if (strncmp(argv[i], "--marker=", 9) != 0)
			far_die("usage: recorder [--every] [--marker=text]");
	if ((in = json_loadf(stdin, 0, &jerr)) == NULL)
		far_die("stdin: %s", jerr.text);
	rc = run(in);
	json_decref(in);
	return rc;
}
