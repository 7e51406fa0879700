/*
 * Watchers: bad definitions refused with nothing stored; the lease that
 * fences a tick (a producer whose lease ran out completes nothing); and,
 * with eavd's producer running real probes, a condition that holds
 * emits one event per tick (not doubled by a second producer), a probe
 * that hangs is killed at its time-out, errors are counted and audited,
 * past the threshold the watcher is disabled with an alarm until it is
 * enabled again, http probes against tests/far/httpd, and a producer
 * SIGKILLed mid-probe leaves no probe behind and its tick is redone.
 * Probes are /bin/sh scripts; a probe that must be found among the
 * processes sleeps for a duration no other test uses.
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

#define EAVD_CONF	"[supervisor]\nworkers = 1\n"
#define DEADLINE_MS	20000
#define ADD_SQL		"SELECT eav.watcher_add($1, $2, $3::jsonb, " \
			"'probe.hit', $4::integer, $5::integer, $6::integer, " \
			"'operator:test')"

/* Definitions eav.watcher_add refuses (22023), and why. */
static const struct {
	const char	*name;
	const char	*kind;
	const char	*config;
	const char	*interval;
	const char	*timeout;
	const char	*threshold;
	const char	*reason;
} bad[] = {
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "0", "100", "3",
	    "watcher interval: must be from 1000 ms" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "-5000", "100", "3",
	    "watcher interval: must be from 1000 ms" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "864000000", "100", "3",
	    "watcher interval: must be from 1000 ms" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "5000", "5000", "3",
	    "watcher timeout: 5000 ms must be less than the interval" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "5000", "9000", "3",
	    "must be less than the interval of 5000 ms" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "5000", "0", "3",
	    "watcher timeout: must be from 100 ms" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "86400000",
	    "80000000", "3", "watcher timeout: must be from 100 ms to "
	    "3600000 ms" },
	{ "w", "exec", "{\"argv\": []}", "5000", "100", "3",
	    "\"argv\" must be an array of 1 to 64 strings" },
	{ "w", "exec", "{}", "5000", "100", "3",
	    "\"argv\" must be an array of 1 to 64 strings" },
	{ "w", "exec", "{\"argv\": \"/bin/true\"}", "5000", "100", "3",
	    "\"argv\" must be an array" },
	{ "w", "exec", "{\"argv\": [\"\"]}", "5000", "100", "3",
	    "\"argv\" entries must be non-empty strings" },
	{ "w", "exec", "{\"argv\": [7]}", "5000", "100", "3",
	    "\"argv\" entries must be non-empty strings" },
	{ "w", "exec", "{\"argv\": [\"true\"]}", "5000", "100", "3",
	    "\"argv[0]\" must be an absolute path, not \"true\"" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"], \"env\": [\"EAV_DSN\"]}",
	    "5000", "100", "3", "\"env\" must be an array" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"], \"false_exit\": 0}",
	    "5000", "100", "3", "\"false_exit\" must be an integer from 1" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"], \"url\": \"http://x/\"}",
	    "5000", "100", "3", "unknown field \"url\" for kind exec" },
	{ "w", "exec", "[\"/bin/true\"]", "5000", "100", "3",
	    "watcher config must be a JSON object" },
	{ "w", "http", "{}", "5000", "100", "3",
	    "\"url\" is missing or not a string" },
	{ "w", "http", "{\"url\": \"ftp://example.org/\"}", "5000", "100", "3",
	    "\"url\" must be http[s]://host[:port][/path]" },
	{ "w", "http", "{\"url\": \"not a url\"}", "5000", "100", "3",
	    "\"url\" must be http[s]://host[:port][/path]" },
	{ "w", "http", "{\"url\": \"http://u:p@example.org/\"}", "5000",
	    "100", "3", "\"url\" must be http[s]://host[:port][/path]" },
	{ "w", "http", "{\"url\": \"http://example.org/\", \"ca_file\": "
	    "\"/etc/ca.pem\"}", "5000", "100", "3",
	    "\"ca_file\" applies to https URLs only" },
	{ "w", "http", "{\"url\": \"https://example.org/\", \"ca_file\": "
	    "\"ca.pem\"}", "5000", "100", "3",
	    "\"ca_file\" must be the absolute path" },
	{ "w", "http", "{\"url\": \"http://example.org:0/\"}", "5000", "100",
	    "3", "port out of range" },
	{ "w", "http", "{\"url\": \"http://x/\", \"expect_status\": 700}",
	    "5000", "100", "3", "\"expect_status\" must be an integer from "
	    "100 to 599" },
	{ "w", "http", "{\"url\": \"http://x/\", \"body_match\": \"\"}",
	    "5000", "100", "3", "\"body_match\" must be a string of 1" },
	{ "w", "smtp", "{\"argv\": [\"/bin/true\"]}", "5000", "100", "3",
	    "watcher kind must be exec or http, not \"smtp\"" },
	{ "w", "exec", "{\"argv\": [\"/bin/true\"]}", "5000", "100", "0",
	    "watcher error threshold: must be from 1 to 1000" },
	{ "bad name", "exec", "{\"argv\": [\"/bin/true\"]}", "5000", "100",
	    "3", "watcher name:" },
};

static void	add_watcher(PGconn *, const char *, const char *,
		    const char *, int, int, int);
static char	*sh_config(PGconn *, const char *);
static void	assert_nothing_stored(PGconn *);
static void	assert_one_event_per_tick(PGconn *, const char *);
static pid_t	ticker_start(const char *, const char *, int);
static int	ticker_wait(pid_t);
static pid_t	actor_pid(const char *);
static pid_t	far_httpd(const struct th_db *, char *, size_t, char *,
		    char *, int *);
static void	sleep_arg(char *, size_t);
static void	assert_text(PGconn *, const char *, const char *, const char *);

/* Adds a watcher with the given probe config and numbers. */
static void
add_watcher(PGconn *c, const char *name, const char *kind,
    const char *config, int interval, int timeout, int threshold)
{
	char	iv[16], to[16], th[16];

	snprintf(iv, sizeof(iv), "%d", interval);
	snprintf(to, sizeof(to), "%d", timeout);
	snprintf(th, sizeof(th), "%d", threshold);
	PQclear(th_exec(c, ADD_SQL, 6, name, kind, config, iv, to, th));
}

/* An exec probe config running script with /bin/sh (caller frees). */
static char *
sh_config(PGconn *c, const char *script)
{
	return th_str(c, "SELECT jsonb_build_object('argv', jsonb_build_array("
	    "'/bin/sh', '-c', $1::text))::text", 1, script);
}

/* The text sql returns (with one parameter, or none) is want. */
static void
assert_text(PGconn *c, const char *sql, const char *param, const char *want)
{
	char	*got = param != NULL ? th_str(c, sql, 1, param) :
		    th_str(c, sql, 0);

	ck_assert_msg(got != NULL && strcmp(got, want) == 0,
	    "%s: got \"%s\", want \"%s\"", sql, got ? got : "NULL", want);
	free(got);
}

/* A sleep duration no other test uses, so its processes can be found. */
static void
sleep_arg(char *buf, size_t len)
{
	snprintf(buf, len, "29.%03d%d", (int)(getpid() % 1000), 7);
}

/* No watcher, no event and no watcher audit row exists. */
static void
assert_nothing_stored(PGconn *c)
{
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.watchers", 0), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox", 0), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type LIKE 'watcher.%'", 0), 0);
}

/*
 * Every event of watcher name is one tick: as many events as fires,
 * one per slot (event key), each audited watcher.fired once, none
 * deduped (so no second one was ever made).
 */
static void
assert_one_event_per_tick(PGconn *c, const char *name)
{
	long long	fires = th_ll(c, "SELECT fires FROM eav.watchers WHERE "
			    "name = $1", 1, name);

	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:' || $1", 1, name), fires);
	ck_assert_int_eq(th_ll(c, "SELECT count(DISTINCT event_key) FROM "
	    "eav.inbox WHERE source = 'watcher:' || $1", 1, name), fires);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type = 'watcher.fired' AND payload->>'watcher' = $1", 1,
	    name), fires);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:' || $1 AND state = 'deduped'", 1, name), 0);
}

/* The pid at the end of a producer actor, producer:node/inc/pid. */
static pid_t
actor_pid(const char *actor)
{
	const char	*slash = strrchr(actor, '/');

	ck_assert_ptr_nonnull(slash);
	return (pid_t)atoi(slash + 1);
}

/* Each bad definition: 22023 naming the field, nothing stored. */
START_TEST(test_bad_input)
{
	struct th_db	 db;
	const char	*err;

	th_db_new(&db);
	err = th_err(db.conn, ADD_SQL, 6, bad[_i].name, bad[_i].kind,
	    bad[_i].config, bad[_i].interval, bad[_i].timeout,
	    bad[_i].threshold);
	ck_assert_msg(strncmp(err, "22023: ", 7) == 0 &&
	    strstr(err, bad[_i].reason) != NULL, "case %d: got %s", _i, err);
	assert_nothing_stored(db.conn);
	th_db_free(&db);
}
END_TEST

/*
 * The lease fences a tick: a second producer claims nothing while the
 * lease lives; once it ran out the tick is claimed again (audited
 * watcher.lease_expired), the first holder's outcome is refused as
 * stale, and only the new holder's event is made.
 */
/* FM-099 */
START_TEST(test_lease_fencing)
{
	struct th_db	 db;
	char		*slot_a, *slot_b;

	th_db_new(&db);
	add_watcher(db.conn, "f", "exec", "{\"argv\": [\"/bin/true\"]}",
	    1000, 500, 3);
	PQclear(th_exec(db.conn, "UPDATE eav.watchers SET next_tick_at = "
	    "now() - interval '1 second'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.watcher_claim('producer:a', 10)", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.watcher_claim('producer:b', 10)", 0), 0);
	slot_a = th_str(db.conn, "SELECT tick_slot::text FROM eav.watchers",
	    0);
	/* producer:a died: its lease runs out; the slot moved on. */
	PQclear(th_exec(db.conn, "UPDATE eav.watchers SET lease_until = "
	    "now() - interval '1 ms', tick_slot = tick_slot - interval "
	    "'5 seconds'", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.watchers SET next_tick_at = "
	    "tick_slot", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.watcher_claim('producer:b', 10)", 0), 1);
	slot_b = th_str(db.conn, "SELECT tick_slot::text FROM eav.watchers",
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events WHERE type = 'watcher.lease_expired' AND "
	    "payload->>'lease_by' = 'producer:a'", 0), 1);
	assert_text(db.conn, "SELECT eav.watcher_done(id, $1::timestamptz, "
	    "'producer:a', 'holds', '{}') FROM eav.watchers", slot_a, "stale");
	assert_text(db.conn, "SELECT eav.watcher_done(id, "
	    "$1::timestamptz, 'producer:b', 'holds', '{\"n\": 1}') FROM "
	    "eav.watchers", slot_b, "holds");
	/* Done is once: a replay of the same completion is stale too. */
	assert_text(db.conn, "SELECT eav.watcher_done(id, $1::timestamptz, "
	    "'producer:b', 'holds', '{}') FROM eav.watchers", slot_b, "stale");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.tick_stale' AND outcome = 'refused'", 0),
	    2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:f' AND type = 'probe.hit' AND body = "
	    "'{\"n\": 1}' AND event_key LIKE 'tick:%'", 0), 1);
	assert_one_event_per_tick(db.conn, "f");
	ck_assert(th_ll(db.conn, "SELECT (next_tick_at > now() AND lease_by "
	    "IS NULL)::int FROM eav.watchers", 0) == 1);
	free(slot_a);
	free(slot_b);
	th_db_free(&db);
}
END_TEST

/*
 * eavctl watchers: add (bad input is exit 2 with the reason), list,
 * show, disable, enable and rm, each audited; unknown is exit 3.
 */
START_TEST(test_eavctl_watchers)
{
	struct th_db	 db;
	char		 out[512];
	char		*add[] = { th_bin("eavctl"), "-d", db.dsn, "watchers",
			    "add", "-i", "5000", "-t", "1000", "-n", "4", "-T",
			    "disk.full", "disk", "exec",
			    "{\"argv\": [\"/bin/true\", \"--quick\"]}", NULL };
	char		*badadd[] = { th_bin("eavctl"), "-d", db.dsn,
			    "watchers", "add", "-i", "0", "x", "exec",
			    "{\"argv\": [\"/bin/true\"]}", NULL };
	char		*list[] = { th_bin("eavctl"), "-d", db.dsn, "watchers",
			    NULL };
	char		*show[] = { th_bin("eavctl"), "-d", db.dsn, "watchers",
			    "show", "disk", NULL };
	char		*disable[] = { th_bin("eavctl"), "-d", db.dsn,
			    "watchers", "disable", "disk", NULL };
	char		*enable[] = { th_bin("eavctl"), "-d", db.dsn,
			    "watchers", "enable", "disk", NULL };
	char		*rm[] = { th_bin("eavctl"), "-d", db.dsn, "watchers",
			    "rm", "disk", NULL };
	int		 st;

	th_db_new(&db);
	snprintf(out, sizeof(out), "%s/%s-ctl.out", th_tmpdir(), db.name);
	ck_assert_int_eq(th_run(add, out), 0);
	ck_assert(th_file_contains(out, "watcher disk added; first tick"));
	st = th_run(badadd, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
	ck_assert(th_file_contains(out, "watcher interval: must be from "
	    "1000 ms"));
	ck_assert_int_eq(th_run(list, out), 0);
	ck_assert(th_file_contains(out, "/bin/true --quick"));
	ck_assert(th_file_contains(out, "5000/1000"));
	ck_assert_int_eq(th_run(show, out), 0);
	ck_assert(th_file_contains(out, "event_type          disk.full"));
	ck_assert(th_file_contains(out, "consecutive_errors  0/4"));
	ck_assert_int_eq(th_run(disable, out), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.watchers "
	    "WHERE state = 'disabled' AND next_tick_at IS NULL AND "
	    "disabled_reason = 'by an operator'", 0), 1);
	st = th_run(disable, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
	ck_assert(th_file_contains(out, "watcher \"disk\" is disabled"));
	ck_assert_int_eq(th_run(enable, out), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.watchers "
	    "WHERE state = 'active' AND next_tick_at IS NOT NULL", 0), 1);
	ck_assert_int_eq(th_run(rm, out), 0);
	st = th_run(show, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3);
	st = th_run(rm, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type IN ('watcher.added', 'watcher.disabled', "
	    "'watcher.enabled', 'watcher.removed') AND actor LIKE "
	    "'operator:%'", 0), 4);
	/* Its row stays for the record; the name is free again. */
	ck_assert_int_eq(th_run(add, out), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.watchers",
	    0), 2);
	th_db_free(&db);
}
END_TEST

/*
 * A forked process that leases due watchers and completes each (watcher
 * "full" holds, any other does not) for until_ms milliseconds.  Exits
 * 0, or 1 on a failed call.
 */
static pid_t
ticker_start(const char *dsn, const char *actor, int until_ms)
{
	const char	*params[1] = { actor };
	PGconn		*c;
	PGresult	*res;
	long long	 end;
	pid_t		 pid;

	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid != 0)
		return pid;
	c = PQconnectdb(dsn);
	if (PQstatus(c) != CONNECTION_OK)
		_exit(1);
	end = th_now_ms() + until_ms;
	while (th_now_ms() < end) {
		res = PQexecParams(c, "SELECT count(eav.watcher_done(id, slot, "
		    "$1, CASE name WHEN 'full' THEN 'holds' ELSE 'false' END, "
		    "'{\"by\": \"ticker\"}')) FROM eav.watcher_claim($1, 10)",
		    1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			fprintf(stderr, "tick: %s", PQerrorMessage(c));
			_exit(1);
		}
		PQclear(res);
	}
	PQfinish(c);
	_exit(0);
}

/* The ticker's exit code, or -1. */
static int
ticker_wait(pid_t pid)
{
	int	status = th_waitpid(pid, 60000);

	return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * eavd's producer runs a probe that holds every second while a second
 * producer ticks the same watcher: one event per tick, never two.  A
 * probe whose condition does not hold (exit 1) emits nothing and is no
 * error.
 */
/* FM-099 */
START_TEST(test_holds_once_per_tick)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*holds, *nope;
	pid_t		 tick;

	th_db_new(&db);
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	holds = sh_config(db.conn, "echo '{\"disk\": 91}'");
	nope = sh_config(db.conn, "exit 1");
	add_watcher(db.conn, "full", "exec", holds, 1000, 500, 3);
	add_watcher(db.conn, "fine", "exec", nope, 1000, 500, 3);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT fires >= 1 FROM "
	    "eav.watchers WHERE name = 'full'", 0), "no fire; see %s", e.log);
	tick = ticker_start(db.dsn, "producer:second", 3500);
	ck_assert_int_eq(ticker_wait(tick), 0);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT ticks >= 3 FROM "
	    "eav.watchers WHERE name = 'fine'", 0), "no ticks; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_ge(th_ll(db.conn, "SELECT fires FROM eav.watchers WHERE "
	    "name = 'full'", 0), 4);
	assert_one_event_per_tick(db.conn, "full");
	/* The producer's events carry the probe's stdout. */
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:full' AND body::jsonb = '{\"disk\": 91}'", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires + errors FROM "
	    "eav.watchers WHERE name = 'fine'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:fine'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type IN ('watcher.tick_stale', 'watcher.tick_error')", 0),
	    0);
	free(holds);
	free(nope);
	th_db_free(&db);
}
END_TEST

/*
 * A probe that hangs is killed at its time-out, its whole group with it:
 * a tick error, counted and audited with the reason; so are a probe
 * that exits with another code (stderr in the reason), one whose stdout
 * is not a JSON object and one that cannot be started.
 */
/* FM-095, FM-096 */
START_TEST(test_probe_timeout)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 script[128], zz[32], *hang, *code3, *garbage;

	th_db_new(&db);
	sleep_arg(zz, sizeof(zz));
	snprintf(script, sizeof(script), "/bin/sleep %s & /bin/sleep %s",
	    zz, zz);
	hang = sh_config(db.conn, script);
	code3 = sh_config(db.conn, "echo boom >&2; exit 3");
	garbage = sh_config(db.conn, "echo '[1, 2]'");
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	add_watcher(db.conn, "hang", "exec", hang, 1000, 300, 100);
	add_watcher(db.conn, "bad", "exec", code3, 1000, 500, 100);
	add_watcher(db.conn, "garbage", "exec", garbage, 1000, 500, 100);
	add_watcher(db.conn, "missing", "exec", "{\"argv\": "
	    "[\"/nonexistent/probe\"]}", 1000, 500, 100);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT min(errors) >= 2 "
	    "FROM eav.watchers", 0), "too few errors; see %s", e.log);
	th_eavd_stop_ok(&e);
	assert_text(db.conn, "SELECT last_error FROM eav.watchers "
	    "WHERE name = 'hang'", NULL, "timed out after 300 ms; its process "
	    "group was killed");
	assert_text(db.conn, "SELECT last_error FROM eav.watchers "
	    "WHERE name = 'bad'", NULL, "exited with code 3; stderr: boom\\n");
	assert_text(db.conn, "SELECT last_error FROM eav.watchers "
	    "WHERE name = 'garbage'", NULL, "stdout is not a JSON object: not "
	    "an object");
	assert_text(db.conn, "SELECT last_error FROM eav.watchers WHERE name "
	    "= 'missing'", NULL, "cannot run /nonexistent/probe: execve: No "
	    "such file or directory");
	/* Each error audited with its reason and the running count. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.tick_error' AND outcome = 'failure' AND "
	    "payload->>'watcher' = 'hang' AND payload->>'reason' LIKE "
	    "'timed out after 300 ms%'", 0), th_ll(db.conn, "SELECT errors "
	    "FROM eav.watchers WHERE name = 'hang'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT max((payload->>"
	    "'consecutive_errors')::int) FROM eav.audit_events WHERE type = "
	    "'watcher.tick_error' AND payload->>'watcher' = 'bad'", 0),
	    th_ll(db.conn, "SELECT consecutive_errors FROM eav.watchers WHERE "
	    "name = 'bad'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.inbox", 0),
	    0);
	/* The hung probe and the sleep it left in its group are gone. */
	ck_assert_int_eq(th_count_live(zz, NULL, NULL), 0);
	free(hang);
	free(code3);
	free(garbage);
	th_db_free(&db);
}
END_TEST

/*
 * A probe that crashes, tick after tick: past the threshold the watcher
 * is disabled with an alarm and ticks no more; an operator fixes the
 * target and enables it (eavctl: audited, alarm resolved) and it fires.
 */
/* FM-044, FM-096, FM-098 */
START_TEST(test_disabled_then_enabled)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 flag[256], script[1024], out[512], *cfg;
	char		*enable[] = { th_bin("eavctl"), "-d", db.dsn,
			    "watchers", "enable", "crashy", NULL };
	char		*show[] = { th_bin("eavctl"), "-d", db.dsn,
			    "watchers", "show", "crashy", NULL };
	char		*nosuch[] = { th_bin("eavctl"), "-d", db.dsn,
			    "watchers", "enable", "nosuch", NULL };
	long long	 ticks;
	int		 st;

	th_db_new(&db);
	snprintf(flag, sizeof(flag), "%s/%s.fixed", th_tmpdir(), db.name);
	snprintf(out, sizeof(out), "%s/%s-ctl.out", th_tmpdir(), db.name);
	unlink(flag);
	snprintf(script, sizeof(script), "if [ -e %s ]; then echo "
	    "'{\"fixed\": true}'; exit 0; fi; kill -SEGV $$", flag);
	cfg = sh_config(db.conn, script);
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	add_watcher(db.conn, "crashy", "exec", cfg, 1000, 500, 2);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT state = "
	    "'disabled' FROM eav.watchers WHERE name = 'crashy'", 0),
	    "not disabled; see %s", e.log);
	ck_assert_int_eq(th_ll(db.conn, "SELECT errors * 10 + "
	    "consecutive_errors FROM eav.watchers", 0), 22);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.tick_error' AND payload->>'reason' = "
	    "'killed by signal 11 (Segmentation fault)'", 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.disabled' AND outcome = 'failure' AND "
	    "payload->>'reason' LIKE '2 consecutive tick errors (threshold 2)"
	    "; last: killed by signal 11%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'watcher_disabled' AND subject = 'watcher:crashy' "
	    "AND state = 'open'", 0), 1);
	ck_assert_int_eq(th_run(show, out), 0);
	ck_assert(th_file_contains(out, "killed by signal 11"));
	ck_assert(th_file_contains(out, "2/2"));
	/* Disabled means no tick: the count stays while time passes. */
	ticks = th_ll(db.conn, "SELECT ticks FROM eav.watchers", 0);
	ck_assert(th_wait(db.conn, DEADLINE_MS, "SELECT now() > last_tick_at "
	    "+ interval '2.5 seconds' FROM eav.watchers", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT ticks FROM eav.watchers", 0),
	    ticks);
	st = th_run(nosuch, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3);
	ck_assert(th_file_contains(out, "no watcher \"nosuch\""));
	/* The operator fixes the target and enables it. */
	th_run((char *[]){ "/usr/bin/touch", flag, NULL }, NULL);
	ck_assert_int_eq(th_run(enable, out), 0);
	ck_assert(th_file_contains(out, "watcher crashy enabled"));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'watcher_disabled' AND state = 'resolved'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.enabled' AND "
	    "payload->>'consecutive_errors' = '2'", 0), 1);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT fires >= 1 FROM "
	    "eav.watchers", 0), "no fire after enable; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT consecutive_errors FROM "
	    "eav.watchers", 0), 0);
	assert_one_event_per_tick(db.conn, "crashy");
	unlink(flag);
	free(cfg);
	th_db_free(&db);
}
END_TEST

/*
 * http probes against tests/far/httpd: the expected status (and body
 * match) holds, another status does not; the target down is a tick
 * error with the reason.
 */
/*
 * Starts tests/far/httpd on 127.0.0.1 (serving https with cert and key
 * unless they are NULL) and reads its port from portfile.
 */
static pid_t
far_httpd(const struct th_db *db, char *portfile, size_t len, char *cert,
    char *key, int *port)
{
	char		*argv[] = { th_bin("httpd"), "-p", portfile, "-b",
			    "127.0.0.1", "--quiet", "--tls", cert, key, NULL };
	long long	 deadline = th_now_ms() + DEADLINE_MS;
	char		 buf[32];
	FILE		*fp;
	pid_t		 pid;

	if (cert == NULL)
		argv[6] = NULL;
	snprintf(portfile, len, "%s/%s.port", th_tmpdir(), db->name);
	unlink(portfile);
	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	*port = 0;
	while (*port == 0) {
		ck_assert_msg(th_now_ms() < deadline, "httpd did not start");
		if ((fp = fopen(portfile, "r")) != NULL) {
			if (fgets(buf, sizeof(buf), fp) != NULL)
				*port = atoi(buf);
			fclose(fp);
		}
		if (*port == 0)
			th_pause_ms(5);
	}
	return pid;
}

/* FM-097 */
START_TEST(test_http_probes)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 portfile[256], url[128], cfg[512];
	pid_t		 far;
	int		 port;

	th_db_new(&db);
	far = far_httpd(&db, portfile, sizeof(portfile), NULL, NULL, &port);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/health", port);
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	snprintf(cfg, sizeof(cfg), "{\"url\": \"%s\", \"body_match\": "
	    "\"\\\"deliveries\\\"\"}", url);
	add_watcher(db.conn, "up", "http", cfg, 1000, 500, 100);
	snprintf(cfg, sizeof(cfg), "{\"url\": \"%s\", \"expect_status\": 503}",
	    url);
	add_watcher(db.conn, "degraded", "http", cfg, 1000, 500, 100);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT bool_and(ticks >= "
	    "2) FROM eav.watchers", 0), "too few ticks; see %s", e.log);
	ck_assert_int_eq(kill(far, SIGTERM), 0);
	ck_assert_int_ne(th_waitpid(far, DEADLINE_MS), -1);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT errors >= 2 FROM "
	    "eav.watchers WHERE name = 'up'", 0), "no errors; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_ge(th_ll(db.conn, "SELECT fires FROM eav.watchers WHERE "
	    "name = 'up'", 0), 2);
	assert_one_event_per_tick(db.conn, "up");
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:up' AND (body::jsonb->>'status')::int = 200 AND "
	    "body::jsonb->>'url' = $1", 1, url), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires FROM eav.watchers WHERE "
	    "name = 'degraded'", 0), 0);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.tick_error' AND payload->>'watcher' = 'up' "
	    "AND payload->>'reason' LIKE 'GET ' || $1 || ': %'", 1, url), 2);
	unlink(portfile);
	th_db_free(&db);
}
END_TEST

/*
 * https probes (0035): a server whose certificate chains to the ca_file
 * holds; the same server without ca_file (the system's CAs do not know
 * the test's CA) is a tick error saying the certificate does not verify,
 * and the probe's request is never answered.
 */
/* FM-097 */
START_TEST(test_https_probes)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct th_certs	 k;
	char		 portfile[256], url[128], cfg[1024];
	pid_t		 far;
	int		 port;

	th_db_new(&db);
	th_certs_make(&k);
	far = far_httpd(&db, portfile, sizeof(portfile), k.good, k.good_key,
	    &port);
	snprintf(url, sizeof(url), "https://127.0.0.1:%d/health", port);
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	snprintf(cfg, sizeof(cfg), "{\"url\": \"%s\", \"ca_file\": \"%s\"}",
	    url, k.ca);
	add_watcher(db.conn, "trusted", "http", cfg, 1000, 500, 100);
	snprintf(cfg, sizeof(cfg), "{\"url\": \"%s\"}", url);
	add_watcher(db.conn, "untrusted", "http", cfg, 1000, 500, 100);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT bool_and(ticks >= "
	    "2) FROM eav.watchers", 0), "too few ticks; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_ge(th_ll(db.conn, "SELECT fires FROM eav.watchers WHERE "
	    "name = 'trusted'", 0), 2);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "source = 'watcher:trusted' AND (body::jsonb->>'status')::int = "
	    "200 AND body::jsonb->>'url' = $1", 1, url), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires FROM eav.watchers WHERE "
	    "name = 'untrusted'", 0), 0);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.tick_error' AND payload->>'watcher' = "
	    "'untrusted' AND payload->>'reason' LIKE 'GET ' || $1 || ': TLS: "
	    "the certificate does not verify: %'", 1, url), 2);
	ck_assert_int_eq(kill(far, SIGTERM), 0);
	ck_assert_int_ne(th_waitpid(far, DEADLINE_MS), -1);
	unlink(portfile);
	th_db_free(&db);
}
END_TEST

/*
 * The producer SIGKILLed while its probe runs: eavd kills the probe's
 * process group (no orphan), ends the dead producer's lease as it reaps
 * it (watcher.lease_released by eavd, 0032: the lease would have run ten
 * minutes), restarts the producer, and the tick is redone and emits one
 * event, not two.
 */
/* FM-099 */
START_TEST(test_producer_killed_mid_probe)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 flag[256], script[1024], zz[32], *cfg, *actor;
	pid_t		 producer;

	th_db_new(&db);
	sleep_arg(zz, sizeof(zz));
	snprintf(flag, sizeof(flag), "%s/%s.seen", th_tmpdir(), db.name);
	unlink(flag);
	/* The first run hangs; any later one holds at once. */
	snprintf(script, sizeof(script), "if [ -e %s ]; then echo "
	    "'{\"redone\": true}'; exit 0; fi; /usr/bin/touch %s; "
	    "/bin/sleep %s", flag, flag, zz);
	cfg = sh_config(db.conn, script);
	PQclear(th_exec(db.conn, "UPDATE eav.settings SET value = 600000 "
	    "WHERE name = 'watcher_lease_grace_ms'", 0));
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	add_watcher(db.conn, "slow", "exec", cfg, 4000, 3000, 3);
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT lease_by IS NOT "
	    "NULL FROM eav.watchers", 0), "never leased; see %s", e.log);
	while (th_count_live(zz, NULL, NULL) == 0) {
		ck_assert_msg(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.watchers WHERE lease_by IS NOT NULL", 0) == 1,
		    "the probe ended before it was seen");
		th_pause_ms(2);
	}
	actor = th_str(db.conn, "SELECT lease_by FROM eav.watchers", 0);
	producer = actor_pid(actor);
	ck_assert_int_eq(kill(producer, SIGKILL), 0);
	/* No orphan: eavd killed the probe's group when it reaped us. */
	ck_assert_msg(th_wait_gone(producer, "eav-producer", DEADLINE_MS),
	    "the producer did not die");
	{
		long long	deadline = th_now_ms() + DEADLINE_MS;

		while (th_count_live(zz, NULL, NULL) > 0) {
			ck_assert_msg(th_now_ms() < deadline, "the probe "
			    "outlived its producer");
			th_pause_ms(5);
		}
	}
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT fires >= 1 FROM "
	    "eav.watchers", 0), "the tick was not redone; see %s", e.log);
	th_eavd_stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.lease_released' AND payload->>'lease_by' = "
	    "$1 AND actor LIKE 'supervisor:%'", 1, actor), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.lease_expired'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'process.exited' AND payload->>'kind' = 'producer' "
	    "AND payload->>'detail' LIKE '%signal 9%'", 0), 1);
	assert_one_event_per_tick(db.conn, "slow");
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM eav.inbox WHERE "
	    "body::jsonb = '{\"redone\": true}'", 0), 1);
	/* The killed probe's tick neither errored nor completed. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT errors FROM eav.watchers", 0),
	    0);
	ck_assert_int_eq(th_count_live(zz, NULL, NULL), 0);
	unlink(flag);
	free(actor);
	free(cfg);
	th_db_free(&db);
}
END_TEST

/*
 * A producer stopped gracefully mid-probe kills the probe and gives its
 * lease back: the tick is free at once, nothing left running.
 */
/* FM-099 */
START_TEST(test_stop_releases_lease)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		 script[128], zz[32], *cfg;
	long long	 deadline = th_now_ms() + DEADLINE_MS;

	th_db_new(&db);
	sleep_arg(zz, sizeof(zz));
	snprintf(script, sizeof(script), "/bin/sleep %s", zz);
	cfg = sh_config(db.conn, script);
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	add_watcher(db.conn, "long", "exec", cfg, 60000, 50000, 3);
	PQclear(th_exec(db.conn, "UPDATE eav.watchers SET next_tick_at = "
	    "now()", 0));
	PQclear(th_exec(db.conn, "SELECT pg_notify('eav_watchers', 'long')",
	    0));
	ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT lease_by IS NOT "
	    "NULL FROM eav.watchers", 0), "never leased; see %s", e.log);
	while (th_count_live(zz, NULL, NULL) == 0) {
		ck_assert_msg(th_now_ms() < deadline, "no probe running");
		th_pause_ms(2);
	}
	th_eavd_stop_ok(&e);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.watchers "
	    "WHERE lease_by IS NULL AND next_tick_at <= now() AND ticks = 0",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'watcher.lease_released' AND actor LIKE "
	    "'producer:%'", 0), 1);
	ck_assert_int_eq(th_count_live(zz, NULL, NULL), 0);
	free(cfg);
	th_db_free(&db);
}
END_TEST

Suite *
suite_watcher(void)
{
	Suite	*s = suite_create("watcher");
	TCase	*tc = tcase_create("watcher");
	TCase	*live = tcase_create("watcher-eavd");

	tcase_add_loop_test(tc, test_bad_input, 0,
	    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_lease_fencing);
	tcase_add_test(tc, test_eavctl_watchers);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	tcase_add_test(live, test_holds_once_per_tick);
	tcase_add_test(live, test_probe_timeout);
	tcase_add_test(live, test_disabled_then_enabled);
	tcase_add_test(live, test_http_probes);
	tcase_add_test(live, test_https_probes);
	tcase_add_test(live, test_producer_killed_mid_probe);
	tcase_add_test(live, test_stop_releases_lease);
	tcase_set_timeout(live, 120);
	suite_add_tcase(s, live);
	return s;
}
