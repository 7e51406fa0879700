/*
 * Schedules: cron next-fire times against a table of known answers (DST
 * gaps and overlaps in Berlin and New York included); bad definitions
 * refused with nothing stored; each catch-up policy after missed slots;
 * at most one fire per (schedule, slot) with two producers ticking; and
 * eavd stopped across slots, then restarted.  Missed slots are made by
 * moving next_fire_at back (the test user is a superuser) or by stopping
 * eavd, never by waiting whole minutes.
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

#define NOOP_STEPS	"[{\"tool\": \"noop\"}]"
#define EAVD_CONF	"[supervisor]\nworkers = 1\n"

/* Known answers: the first slot strictly after "after" (UTC). */
static const struct {
	const char	*cron;
	const char	*tz;
	const char	*after;
	const char	*next;		/* UTC, or "never" */
} known[] = {
	{ "* * * * *", "UTC", "2024-01-01 10:00:30", "2024-01-01 10:01:00" },
	{ "* * * * *", "UTC", "2024-01-01 10:00:00", "2024-01-01 10:01:00" },
	{ "*/15 * * * *", "UTC", "2024-01-01 10:14:59",
	    "2024-01-01 10:15:00" },
	{ "5-10/2 * * * *", "UTC", "2024-01-01 10:06:00",
	    "2024-01-01 10:07:00" },
	{ "0 9-17/4 * * *", "UTC", "2024-01-01 13:00:00",
	    "2024-01-01 17:00:00" },
	{ "0 0 1,15 * *", "UTC", "2024-01-02 00:00:00",
	    "2024-01-15 00:00:00" },
	/* Months without a 31st are stepped over. */
	{ "0 0 31 * *", "UTC", "2024-04-01 00:00:00", "2024-05-31 00:00:00" },
	{ "0 0 29 2 *", "UTC", "2024-03-01 00:00:00", "2028-02-29 00:00:00" },
	/* 2100 is not a leap year. */
	{ "0 0 29 2 *", "UTC", "2099-03-01 00:00:00", "2104-02-29 00:00:00" },
	{ "* * 31 2 *", "UTC", "2024-01-01 00:00:00", "never" },
	/* Both day fields restricted: either matches (Fri 6th, Fri 13th). */
	{ "0 0 13 * 5", "UTC", "2024-09-01 00:00:00", "2024-09-06 00:00:00" },
	{ "0 0 13 * 5", "UTC", "2024-09-06 00:00:00", "2024-09-13 00:00:00" },
	{ "0 0 * * 5", "UTC", "2024-09-01 00:00:00", "2024-09-06 00:00:00" },
	/* A day field starting with "*" is not restricted: both must. */
	{ "0 0 */2 * 1", "UTC", "2024-09-01 00:00:00",
	    "2024-09-09 00:00:00" },
	{ "0 0 * * 7", "UTC", "2024-09-01 00:00:00", "2024-09-08 00:00:00" },
	{ "0 0 * * sun", "UTC", "2024-09-01 00:00:00", "2024-09-08 00:00:00" },
	{ "30 8 * JAN-MAR MON-FRI", "UTC", "2024-03-29 09:00:00",
	    "2025-01-01 08:30:00" },
	{ "0 0 1 1 *", "UTC", "2024-06-01 00:00:00", "2025-01-01 00:00:00" },
	{ "@daily", "UTC", "2024-01-01 00:00:00", "2024-01-02 00:00:00" },
	{ "@every 90s", "UTC", "2024-01-01 00:00:00", "2024-01-01 00:01:30" },
	{ "@every 1h30m", "UTC", "2024-01-01 00:00:00",
	    "2024-01-01 01:30:00" },
	{ "@every 7s", "UTC", "2024-01-01 00:00:00", "2024-01-01 00:00:04" },
	{ "0 9 * * *", "Europe/Berlin", "2024-01-15 12:00:00",
	    "2024-01-16 08:00:00" },
	{ "0 9 * * *", "Europe/Berlin", "2024-07-15 12:00:00",
	    "2024-07-16 07:00:00" },
	/* Spring forward: 02:30 does not exist, fires at 03:00 CEST. */
	{ "30 2 * * *", "Europe/Berlin", "2024-03-30 12:00:00",
	    "2024-03-31 01:00:00" },
	{ "30 2 * * *", "Europe/Berlin", "2024-03-31 01:00:00",
	    "2024-04-01 00:30:00" },
	/* Four local times in the gap are one slot. */
	{ "*/15 2 * * *", "Europe/Berlin", "2024-03-31 00:00:00",
	    "2024-03-31 01:00:00" },
	{ "*/15 2 * * *", "Europe/Berlin", "2024-03-31 01:00:00",
	    "2024-04-01 00:00:00" },
	{ "0 * * * *", "Europe/Berlin", "2024-03-31 00:30:00",
	    "2024-03-31 01:00:00" },
	{ "0 * * * *", "Europe/Berlin", "2024-03-31 01:00:00",
	    "2024-03-31 02:00:00" },
	/* Fall back: 02:30 happens twice, fires at the first (CEST) only. */
	{ "30 2 * * *", "Europe/Berlin", "2024-10-26 12:00:00",
	    "2024-10-27 00:30:00" },
	{ "30 2 * * *", "Europe/Berlin", "2024-10-27 00:30:00",
	    "2024-10-28 01:30:00" },
	{ "*/30 * * * *", "Europe/Berlin", "2024-10-27 00:30:00",
	    "2024-10-27 02:00:00" },
	{ "30 2 * * *", "America/New_York", "2024-03-09 12:00:00",
	    "2024-03-10 07:00:00" },
	{ "30 1 * * *", "America/New_York", "2024-11-02 12:00:00",
	    "2024-11-03 05:30:00" },
	{ "30 1 * * *", "America/New_York", "2024-11-03 05:30:00",
	    "2024-11-04 06:30:00" },
	{ "0 12 * * *", "America/New_York", "2024-11-03 12:00:00",
	    "2024-11-03 17:00:00" },
	/* @every keeps absolute time through DST. */
	{ "@every 1h", "Europe/Berlin", "2024-03-31 00:30:00",
	    "2024-03-31 01:00:00" },
};

/* Definitions eav.schedule_add refuses (22023), and why. */
static const struct {
	const char	*name;
	const char	*cron;
	const char	*tz;
	const char	*queue;
	const char	*steps;
	const char	*policy;
	const char	*cap;
	const char	*reason;
} bad[] = {
	{ "s", "61 * * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "cron minute: 61 is out of range 0-59" },
	{ "s", "* 24 * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "cron hour: 24 is out of range 0-23" },
	{ "s", "* * 31 2 *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "never fires" },
	{ "s", "* * * * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "has 5 fields (minute hour day-of-month month day-of-week), "
	    "not 6" },
	{ "s", "garbage", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "has 5 fields" },
	{ "s", "", "UTC", "default", NOOP_STEPS, "skip", "10", "not 0" },
	{ "s", "* * * * FOO", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "cron day-of-week: \"FOO\" is not a number or a name" },
	{ "s", "5-1 * * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "runs backwards" },
	{ "s", "*/0 * * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "step must be at least 1" },
	{ "s", "1,,2 * * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "is not a value, range or step" },
	{ "s", "@every 0s", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "between 1s and 366d" },
	{ "s", "@every -5s", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "a duration like 90s" },
	{ "s", "@every 500ms", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "a duration like 90s" },
	{ "s", "@reboot", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "unknown cron shorthand" },
	{ "s", "* * * * *", "Mars/Olympus", "default", NOOP_STEPS, "skip",
	    "10", "unknown time zone \"Mars/Olympus\"" },
	{ "s", "* * * * *", "UTC+3", "default", NOOP_STEPS, "skip", "10",
	    "unknown time zone" },
	{ "s", "* * * * *", "UTC", "nosuch", NOOP_STEPS, "skip", "10",
	    "task template: unknown queue \"nosuch\"" },
	{ "s", "* * * * *", "UTC", "default", "[{\"tool\": \"nosuch\"}]",
	    "skip", "10", "task template: step 1: unknown tool \"nosuch\"" },
	{ "s", "* * * * *", "UTC", "default", "{}", "skip", "10",
	    "task template: steps must be a JSON array" },
	{ "s", "* * * * *", "UTC", "default", "[{\"tool\": \"noop\", "
	    "\"idempotency_key\": \"k\"}]", "skip", "10",
	    "steps carry no idempotency_key" },
	{ "s", "* * * * *", "UTC", "default", NOOP_STEPS, "sometimes", "10",
	    "catch_up_policy must be skip, run_once or run_all" },
	{ "s", "* * * * *", "UTC", "default", NOOP_STEPS, "run_all", "0",
	    "run_all_cap must be between 1 and 1000" },
	{ "bad name", "* * * * *", "UTC", "default", NOOP_STEPS, "skip", "10",
	    "a schedule name is" },
};

/* Catch-up after 3 missed slots and one on time: fires and misses. */
static const struct {
	const char	*name;
	const char	*policy;
	const char	*cap;
	int		 catch_up;	/* missed slots that fire */
} policies[] = {
	{ "p-skip", "skip", "10", 0 },
	{ "p-once", "run_once", "10", 1 },
	{ "p-all2", "run_all", "2", 2 },
	{ "p-all", "run_all", "10", 3 },
};

static void	add_schedule(PGconn *, const char *, const char *,
		    const char *, const char *);
static void	assert_nothing_stored(PGconn *);
static int	assert_each_slot_once(PGconn *, const char *, int);
static pid_t	ticker_start(const char *, const char *, int);
static int	ticker_wait(pid_t);

/* Adds a noop schedule on the default queue in UTC. */
static void
add_schedule(PGconn *c, const char *name, const char *cron,
    const char *policy, const char *cap)
{
	PQclear(th_exec(c, "SELECT eav.schedule_add($1, $2, 'default', 'k', "
	    "$3::jsonb, 'UTC', $4, $5::integer, 'operator:test')", 5, name,
	    cron, NOOP_STEPS, policy, cap));
}

/* No schedule, fire, task or schedule audit row exists. */
static void
assert_nothing_stored(PGconn *c)
{
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.schedules", 0),
	    0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.schedule_fires",
	    0), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.tasks", 0), 0);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.audit_events "
	    "WHERE type LIKE 'schedule.%' OR type LIKE 'task.%'", 0), 0);
}

/*
 * Every slot of schedule name (step seconds apart) from the first one
 * handled to its last_slot is either fired (one task, keyed by the slot)
 * or audited missed, never both, never twice.  Returns how many.
 */
static int
assert_each_slot_once(PGconn *c, const char *name, int step)
{
	const char	*slots = "WITH s AS (SELECT * FROM eav.schedules "
	    "WHERE name = $1), h AS (SELECT f.slot FROM eav.schedule_fires f "
	    "JOIN s ON s.id = f.schedule_id UNION ALL SELECT "
	    "(a.payload->>'slot')::timestamptz FROM eav.audit_events a JOIN s "
	    "ON a.payload->>'schedule_id' = s.id::text WHERE a.type = "
	    "'schedule.missed') ";
	char		 sql[1024], st[16];
	int		 n;

	snprintf(st, sizeof(st), "%d", step);
	snprintf(sql, sizeof(sql), "%sSELECT count(*) FROM h", slots);
	n = (int)th_ll(c, sql, 1, name);
	snprintf(sql, sizeof(sql), "%sSELECT count(DISTINCT slot) FROM h",
	    slots);
	ck_assert_int_eq(th_ll(c, sql, 1, name), n);
	snprintf(sql, sizeof(sql), "%sSELECT (extract(epoch FROM max(slot) - "
	    "min(slot)) / $2::integer)::integer + 1 FROM h HAVING max(slot) = "
	    "(SELECT last_slot FROM s)", slots);
	ck_assert_int_eq(th_ll(c, sql, 2, name, st), n);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.schedule_fires f "
	    "JOIN eav.schedules s ON s.id = f.schedule_id JOIN eav.tasks t ON "
	    "t.id = f.task_id JOIN eav.steps st ON st.task_id = t.id AND "
	    "st.idempotency_key = format('schedule:%s:%s:1', s.id, to_char("
	    "f.slot AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS\"Z\"')) WHERE "
	    "s.name = $1", 1, name), th_ll(c, "SELECT fires FROM "
	    "eav.schedules WHERE name = $1", 1, name));
	return n;
}

/* Each case of the known-answer table. */
/* FM-086 */
START_TEST(test_cron_known_answers)
{
	struct th_db	 db;
	char		*got;

	th_db_new(&db);
	got = th_str(db.conn, "SELECT coalesce(to_char(eav.cron_next($1, $2, "
	    "($3 || 'Z')::timestamptz) AT TIME ZONE 'UTC', "
	    "'YYYY-MM-DD HH24:MI:SS'), 'never')", 3, known[_i].cron,
	    known[_i].tz, known[_i].after);
	ck_assert_msg(strcmp(got, known[_i].next) == 0,
	    "cron_next('%s', '%s', %s) = %s, expected %s", known[_i].cron,
	    known[_i].tz, known[_i].after, got, known[_i].next);
	free(got);
	th_db_free(&db);
}
END_TEST

/* Each bad definition: 22023 naming the reason, nothing stored. */
/* FM-082 */
START_TEST(test_bad_input)
{
	struct th_db	 db;
	const char	*err;

	th_db_new(&db);
	err = th_err(db.conn, "SELECT eav.schedule_add($1, $2, $3, 'k', "
	    "$4::jsonb, $5, $6, $7::integer, 'operator:test')", 7,
	    bad[_i].name, bad[_i].cron, bad[_i].queue, bad[_i].steps,
	    bad[_i].tz, bad[_i].policy, bad[_i].cap);
	ck_assert_msg(strncmp(err, "22023: ", 7) == 0 &&
	    strstr(err, bad[_i].reason) != NULL, "case %d: got %s", _i, err);
	assert_nothing_stored(db.conn);
	th_db_free(&db);
}
END_TEST

/*
 * Four schedules, each with 3 missed slots and one on time, made in one
 * transaction so that now() is the same for both statements.
 */
/* FM-027 */
START_TEST(test_catch_up_policies)
{
	struct th_db	 db;
	size_t		 i;
	int		 fires = 0;

	th_db_new(&db);
	for (i = 0; i < sizeof(policies) / sizeof(policies[0]); i++)
		add_schedule(db.conn, policies[i].name, "* * * * *",
		    policies[i].policy, policies[i].cap);
	PQclear(th_exec(db.conn, "BEGIN", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "date_trunc('minute', now()) - interval '3 minutes'", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:t', 10)",
	    0));
	PQclear(th_exec(db.conn, "COMMIT", 0));
	for (i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		const char	*n = policies[i].name;
		int		 k = policies[i].catch_up;

		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.schedule_fires f JOIN eav.schedules s ON s.id = "
		    "f.schedule_id WHERE s.name = $1 AND f.fire = 'on_time' "
		    "AND "
		    "f.slot = date_trunc('minute', s.next_fire_at - interval "
		    "'1 minute')", 1, n), 1);
		/* The newest missed slots are the ones that run. */
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.schedule_fires f JOIN eav.schedules s ON s.id = "
		    "f.schedule_id WHERE s.name = $1 AND f.fire = 'catch_up' "
		    "AND "
		    "f.slot >= s.next_fire_at - ($2::integer + 1) * "
		    "interval '1 minute'", 2, n, k == 0 ? "0" : k == 1 ? "1" :
		    k == 2 ? "2" : "3"), k);
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.audit_events WHERE type = 'schedule.missed' AND "
		    "payload->>'schedule' = $1 AND payload->>'reason' LIKE "
		    "'missed;%'", 1, n), 3 - k);
		ck_assert_int_eq(th_ll(db.conn, "SELECT fires * 10 + misses "
		    "FROM eav.proj_schedules WHERE name = $1", 1, n),
		    (1 + k) * 10 + 3 - k);
		ck_assert_int_eq(assert_each_slot_once(db.conn, n, 60), 4);
		fires += 1 + k;
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    fires);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.fired' AND task_id IS NOT NULL", 0),
	    fires);
	/* Nothing is due any more: a second tick changes nothing. */
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:t', 10)",
	    0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    fires);
	/* With no lateness allowed, the newest slot is missed too. */
	add_schedule(db.conn, "p-late", "* * * * *", "skip", "10");
	PQclear(th_exec(db.conn, "UPDATE eav.settings SET value = 0 WHERE "
	    "name = 'schedule_late_ms'", 0));
	PQclear(th_exec(db.conn, "BEGIN", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "date_trunc('minute', now()) - interval '1 minute' WHERE name = "
	    "'p-late'", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:t', 10)",
	    0));
	PQclear(th_exec(db.conn, "COMMIT", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires * 10 + misses FROM "
	    "eav.schedules WHERE name = 'p-late'", 0), 2);
	th_db_free(&db);
}
END_TEST

/* A long backlog: 1000 slots audited one by one, the rest summed up. */
/* FM-027 */
START_TEST(test_backlog_summary)
{
	struct th_db	db;

	th_db_new(&db);
	add_schedule(db.conn, "fast", "@every 1s", "skip", "10");
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "to_timestamp(floor(extract(epoch FROM now()))) - "
	    "interval '1500 seconds'", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:t', 10)",
	    0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.missed' AND payload->>'slot' IS NOT NULL",
	    0), 1000);
	ck_assert_int_eq(th_ll(db.conn, "SELECT (payload->>'slots')::integer "
	    "FROM eav.audit_events WHERE type = 'schedule.missed' AND "
	    "payload->>'summary' = 'true'", 0), th_ll(db.conn, "SELECT misses "
	    "- 1000 FROM eav.schedules", 0));
	ck_assert_int_ge(th_ll(db.conn, "SELECT misses FROM eav.schedules",
	    0), 1500);
	ck_assert_int_eq(th_ll(db.conn, "SELECT fires FROM eav.schedules", 0),
	    1);
	th_db_free(&db);
}
END_TEST

/*
 * A producer that read a stale next_fire_at tries a slot that fired:
 * the (schedule, slot) key refuses it, audited, no second task.
 */
/* FM-083 */
START_TEST(test_duplicate_slot_refused)
{
	struct th_db	db;

	th_db_new(&db);
	add_schedule(db.conn, "d", "* * * * *", "run_all", "10");
	PQclear(th_exec(db.conn, "BEGIN", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "date_trunc('minute', now()) - interval '1 minute'", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:a', 10)",
	    0));
	PQclear(th_exec(db.conn, "COMMIT", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    2);
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "(SELECT min(slot) FROM eav.schedule_fires)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:b', 10)",
	    0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.duplicate' AND outcome = 'refused' AND "
	    "actor = 'producer:b'", 0), 2);
	/* Only a slot that had not fired (a new minute) may add a task. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    th_ll(db.conn, "SELECT count(DISTINCT task_id) FROM "
	    "eav.schedule_fires", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks WHERE "
	    "created_by = 'producer:a'", 0), 2);
	ck_assert_str_eq(th_err(db.conn, "INSERT INTO eav.schedule_fires "
	    "(schedule_id, slot, fire, fired_by) SELECT schedule_id, slot, "
	    "fire, 'x' FROM eav.schedule_fires LIMIT 1", 0),
	    "23505: duplicate key value violates unique constraint "
	    "\"schedule_fires_pkey\"");
	th_db_free(&db);
}
END_TEST

/*
 * Two processes tick 40 due schedules at once: every slot fires once,
 * one task each.
 */
/* FM-083 */
START_TEST(test_two_producers)
{
	struct th_db	db;
	pid_t		a, b;
	char		name[32];
	int		i;

	th_db_new(&db);
	for (i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "s%d", i);
		add_schedule(db.conn, name, "* * * * *", "run_all", "10");
	}
	PQclear(th_exec(db.conn, "BEGIN", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "date_trunc('minute', now()) - interval '2 minutes'", 0));
	PQclear(th_exec(db.conn, "COMMIT", 0));
	a = ticker_start(db.dsn, "producer:a", 0);
	b = ticker_start(db.dsn, "producer:b", 0);
	ck_assert_int_eq(ticker_wait(a), 0);
	ck_assert_int_eq(ticker_wait(b), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.schedules "
	    "WHERE next_fire_at <= now()", 0), 0);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.schedule_fires", 0), 120);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    th_ll(db.conn, "SELECT count(*) FROM eav.schedule_fires", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT task_id) FROM "
	    "eav.schedule_fires", 0), th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.tasks", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.missed'", 0), 0);
	for (i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "s%d", i);
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.schedule_fires f JOIN eav.schedules s ON s.id = "
		    "f.schedule_id WHERE s.name = $1", 1, name),
		    th_ll(db.conn, "SELECT fires FROM eav.schedules WHERE "
		    "name = $1", 1, name));
	}
	th_db_free(&db);
}
END_TEST

/*
 * A forked process that calls eav.schedule_tick (limit 3) until nothing
 * is due (until_ms 0) or for until_ms milliseconds.  Exits 0, or 1 on a
 * failed call.
 */
static pid_t
ticker_start(const char *dsn, const char *actor, int until_ms)
{
	const char	*params[1] = { actor };
	PGconn		*c;
	PGresult	*res;
	long long	 end;
	pid_t		 pid;
	int		 done;

	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid != 0)
		return pid;
	c = PQconnectdb(dsn);
	if (PQstatus(c) != CONNECTION_OK)
		_exit(1);
	end = th_now_ms() + until_ms;
	do {
		res = PQexecParams(c, "SELECT coalesce(eav.schedule_tick($1, 3)"
		    " > 0, true)", 1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			fprintf(stderr, "tick: %s", PQerrorMessage(c));
			_exit(1);
		}
		done = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
		PQclear(res);
	} while (until_ms > 0 ? th_now_ms() < end : !done);
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
 * eavd fires @every 1s schedules; stopped across at least 3 slots and
 * restarted (with a second producer ticking the same schedules), each
 * policy does what it says about the slots it missed, every slot is
 * fired or audited once.
 */
/* FM-027, FM-083 */
START_TEST(test_eavd_down_across_slots)
{
	struct th_db	 db;
	struct th_eavd	 e;
	char		*stop, *up;
	pid_t		 tick;
	size_t		 i;

	th_db_new(&db);
	th_eavd_conf(&e, &db, EAVD_CONF);
	th_eavd_up(&e, db.conn, 1);
	for (i = 0; i < 3; i++)
		add_schedule(db.conn, policies[i].name, "@every 1s",
		    policies[i].policy, policies[i].cap);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT min(fires) >= 2 FROM "
	    "eav.schedules", 0), "eavd fired nothing; see %s", e.log);
	th_eavd_stop_ok(&e);
	stop = th_str(db.conn, "SELECT max(last_slot)::text FROM "
	    "eav.schedules", 0);
	/* Time passes by the database's clock: 3 slots and more. */
	ck_assert(th_wait(db.conn, 30000, "SELECT now() > $1::timestamptz + "
	    "interval '4.5 seconds'", 1, stop));
	th_eavd_up(&e, db.conn, 1);
	up = th_str(db.conn, "SELECT now()::text", 0);
	tick = ticker_start(db.dsn, "producer:second", 4000);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT min(last_slot) > "
	    "$1::timestamptz + interval '2 seconds' FROM eav.schedules", 1, up),
	    "eavd did not catch up; see %s", e.log);
	ck_assert_int_eq(ticker_wait(tick), 0);
	th_eavd_stop_ok(&e);
	for (i = 0; i < 3; i++) {
		const char	*n = policies[i].name;
		/* The slots of the downtime: before the first on-time fire. */
		const char	*down = "WITH s AS (SELECT id FROM "
		    "eav.schedules WHERE name = $1), r AS (SELECT min(slot) AS "
		    "r FROM eav.schedule_fires f JOIN s ON s.id = "
		    "f.schedule_id WHERE f.slot > $2::timestamptz AND "
		    "f.fire = 'on_time') ";
		char		 sql[1024];

		snprintf(sql, sizeof(sql), "%sSELECT count(*) FROM "
		    "eav.schedule_fires f JOIN s ON s.id = f.schedule_id, r "
		    "WHERE f.slot > $2::timestamptz AND f.slot < r.r", down);
		ck_assert_int_eq(th_ll(db.conn, sql, 2, n, stop),
		    policies[i].catch_up);
		snprintf(sql, sizeof(sql), "%sSELECT count(*) FROM "
		    "eav.audit_events a JOIN s ON a.payload->>'schedule_id' = "
		    "s.id::text, r WHERE a.type = 'schedule.missed' AND "
		    "(a.payload->>'slot')::timestamptz > $2::timestamptz AND "
		    "(a.payload->>'slot')::timestamptz < r.r", down);
		ck_assert_int_ge(th_ll(db.conn, sql, 2, n, stop) +
		    policies[i].catch_up, 3);
		ck_assert_int_ge(assert_each_slot_once(db.conn, n, 1), 8);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.duplicate'", 0), 0);
	free(up);
	free(stop);
	th_db_free(&db);
}
END_TEST

/*
 * Two eavd nodes (a and b) on one database, each with its own producer,
 * fire the same @every 1s schedules: every slot once, a task each; node
 * a is stopped across 3 slots and started again while b keeps firing, and
 * still nothing fires twice and no slot is lost.
 */
/* FM-083 */
START_TEST(test_two_nodes)
{
	struct th_db	 db;
	struct th_eavd	 a, b;
	FILE		*fp;
	size_t		 i;
	char		*stop, *up;

	th_db_new(&db);
	th_eavd_conf(&a, &db, "[supervisor]\nworkers = 1\nnode_name = a\n");
	th_eavd_up(&a, db.conn, 1);
	/* b: the same database, its own node, config and log. */
	memset(&b, 0, sizeof(b));
	snprintf(b.conf, sizeof(b.conf), "%s/%s-b.conf", th_tmpdir(),
	    db.name);
	snprintf(b.log, sizeof(b.log), "%s/%s-b.log", th_tmpdir(), db.name);
	ck_assert_ptr_nonnull(fp = fopen(b.conf, "w"));
	fprintf(fp, "[database]\ndsn = %s\n[supervisor]\nworkers = 1\n"
	    "node_name = b\n", db.dsn);
	fclose(fp);
	th_eavd_start(&b);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT count(*) = 2 FROM "
	    "eav.proj_processes WHERE kind = 'producer' AND state = 'up' AND "
	    "pid IS NOT NULL", 0), "node b did not come up; see %s", b.log);
	for (i = 0; i < 3; i++)
		add_schedule(db.conn, policies[i].name, "@every 1s",
		    policies[i].policy, policies[i].cap);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT min(fires) >= 3 FROM "
	    "eav.schedules", 0), "nothing fired; see %s", a.log);
	th_eavd_stop_ok(&a);
	stop = th_str(db.conn, "SELECT now()::text", 0);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT min(last_slot) > "
	    "$1::timestamptz + interval '3 seconds' FROM eav.schedules", 1,
	    stop), "node b alone fired nothing; see %s", b.log);
	th_eavd_start(&a);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT count(*) = 4 FROM "
	    "eav.proj_processes WHERE state = 'up' AND pid IS NOT NULL", 0),
	    "node a did not come back; see %s", a.log);
	up = th_str(db.conn, "SELECT now()::text", 0);
	ck_assert_msg(th_wait(db.conn, 30000, "SELECT min(last_slot) > "
	    "$1::timestamptz + interval '3 seconds' FROM eav.schedules", 1,
	    up), "see %s and %s", a.log, b.log);
	th_eavd_stop_ok(&a);
	th_eavd_stop_ok(&b);
	for (i = 0; i < 3; i++) {
		ck_assert_int_ge(assert_each_slot_once(db.conn,
		    policies[i].name, 1), 8);
		/* b fired on time through a's downtime: nothing missed. */
		ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.audit_events WHERE type = 'schedule.missed'", 0), 0);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.duplicate'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    th_ll(db.conn, "SELECT count(*) FROM eav.schedule_fires", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT split_part("
	    "actor, '/', 1)) FROM eav.audit_events WHERE actor LIKE "
	    "'producer:%'", 0), 2);
	th_assert_sound(db.conn);
	free(stop);
	free(up);
	th_db_free(&db);
}
END_TEST

/* A template that became invalid: slot recorded, audited, alarmed. */
/* FM-084 */
START_TEST(test_fire_failure)
{
	struct th_db	db;

	th_db_new(&db);
	add_schedule(db.conn, "f", "* * * * *", "skip", "10");
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET steps = "
	    "'[{\"tool\": \"gone\"}]', next_fire_at = date_trunc('minute', "
	    "now())", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:t', 10)",
	    0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.schedule_fires WHERE task_id IS NULL AND error LIKE "
	    "'%unknown tool \"gone\"%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'schedule.fire_failed' AND payload->>'error' LIKE "
	    "'%unknown tool%'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'schedule_failed' AND subject = 'schedule:f' AND "
	    "state = 'open'", 0), 1);
	/* The tick went on: the schedule waits for its next slot. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_schedules WHERE failures = 1 AND next_fire_at > now()",
	    0), 1);
	th_db_free(&db);
}
END_TEST

/* A kill switch on the queue holds the slots; on release they catch up. */
/* FM-085 */
START_TEST(test_kill_switch_holds)
{
	struct th_db	db;

	th_db_new(&db);
	add_schedule(db.conn, "k", "* * * * *", "run_once", "10");
	PQclear(th_exec(db.conn, "SELECT eav.kill_switch_engage('queue', "
	    "'default', 'test', 'operator:test')", 0));
	PQclear(th_exec(db.conn, "BEGIN", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.schedules SET next_fire_at = "
	    "date_trunc('minute', now()) - interval '2 minutes'", 0));
	ck_assert_msg(th_str(db.conn, "SELECT eav.schedule_tick('producer:t', "
	    "10)", 0) == NULL, "a held schedule counts as due");
	PQclear(th_exec(db.conn, "COMMIT", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_schedules WHERE held_by_kill_switch AND fires = 0 AND "
	    "misses = 0 AND "
	    "next_fire_at < now()", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    0);
	PQclear(th_exec(db.conn, "SELECT eav.kill_switch_release('queue', "
	    "'default', 'test', 'operator:test')", 0));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_tick('producer:t', 10)",
	    0));
	/* run_once: the newest slot runs (on time or not), once. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    th_ll(db.conn, "SELECT fires FROM eav.schedules", 0));
	ck_assert_int_ge(th_ll(db.conn, "SELECT fires FROM eav.schedules", 0),
	    1);
	ck_assert_int_le(th_ll(db.conn, "SELECT fires FROM eav.schedules", 0),
	    2);
	ck_assert_int_ge(assert_each_slot_once(db.conn, "k", 60), 3);
	th_db_free(&db);
}
END_TEST

/* pause, resume, remove; names, states and audit rows. */
START_TEST(test_lifecycle)
{
	struct th_db	db;

	th_db_new(&db);
	add_schedule(db.conn, "l", "0 3 * * *", "skip", "10");
	ck_assert_ptr_nonnull(strstr(th_err(db.conn, "SELECT eav.schedule_add("
	    "'l', '* * * * *', 'default', 'k', $1::jsonb)", 1, NOOP_STEPS),
	    "22023: a schedule named \"l\" exists"));
	PQclear(th_exec(db.conn, "SELECT eav.schedule_pause('l')", 0));
	ck_assert_str_eq(th_err(db.conn, "SELECT eav.schedule_pause('l')", 0),
	    "EA003: schedule \"l\" is paused");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_schedules WHERE state = 'paused' AND next_fire_at IS "
	    "NULL", 0), 1);
	PQclear(th_exec(db.conn, "SELECT eav.schedule_resume('l')", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_schedules WHERE state = 'active' AND next_fire_at > "
	    "now() AND "
	    "extract(hour FROM next_fire_at AT TIME ZONE 'UTC') = 3", 0), 1);
	PQclear(th_exec(db.conn, "SELECT eav.schedule_remove('l')", 0));
	ck_assert_str_eq(th_err(db.conn, "SELECT eav.schedule_pause('l')", 0),
	    "EA004: no schedule \"l\"");
	add_schedule(db.conn, "l", "@hourly", "skip", "10");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type IN ('schedule.added', 'schedule.paused', "
	    "'schedule.resumed', 'schedule.removed') AND payload->>'schedule' "
	    "= 'l'", 0), 5);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.schedules",
	    0), 2);
	/* The template check left no task behind. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    0);
	th_db_free(&db);
}
END_TEST

/* eavctl schedules: add, list, next, pause, resume, remove, bad input. */
START_TEST(test_eavctl_schedules)
{
	struct th_db	 db;
	char		 out[512];
	char		*add[] = { th_bin("eavctl"), "-d", db.dsn, "schedules",
			    "add", "-z", "Europe/Berlin", "-p", "run_all", "-c",
			    "3", "nightly", "30 2 * * *", "default", "k",
			    NOOP_STEPS, NULL };
	char		*badcron[] = { th_bin("eavctl"), "-d", db.dsn,
			    "schedules", "add", "x", "61 * * * *", "default",
			    "k", NOOP_STEPS, NULL };
	char		*list[] = { th_bin("eavctl"), "-d", db.dsn,
			    "schedules", NULL };
	char		*next[] = { th_bin("eavctl"), "-d", db.dsn,
			    "schedules", "next", "nightly", "3", NULL };
	char		*pause[] = { th_bin("eavctl"), "-d", db.dsn,
			    "schedules", "pause", "nightly", NULL };
	char		*resume[] = { th_bin("eavctl"), "-d", db.dsn,
			    "schedules", "resume", "nightly", NULL };
	char		*rm[] = { th_bin("eavctl"), "-d", db.dsn,
			    "schedules", "remove", "nightly", NULL };
	int		 st;

	th_db_new(&db);
	snprintf(out, sizeof(out), "%s/%s-ctl.out", th_tmpdir(), db.name);
	ck_assert_int_eq(th_run(add, out), 0);
	ck_assert(th_file_contains(out, "schedule nightly added; first slot"));
	st = th_run(badcron, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
	ck_assert(th_file_contains(out, "cron minute: 61 is out of range"));
	ck_assert_int_eq(th_run(list, out), 0);
	ck_assert(th_file_contains(out, "nightly"));
	ck_assert(th_file_contains(out, "run_all:3"));
	ck_assert_int_eq(th_run(next, out), 0);
	ck_assert(th_file_contains(out, "02:30:00"));
	ck_assert_int_eq(th_run(pause, out), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.schedules "
	    "WHERE state = 'paused'", 0), 1);
	st = th_run(pause, out);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
	ck_assert_int_eq(th_run(resume, out), 0);
	ck_assert(th_file_contains(out, "schedule nightly resumed"));
	ck_assert_int_eq(th_run(rm, out), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.proj_schedules", 0), 0);
	th_db_free(&db);
}
END_TEST

Suite *
suite_schedule(void)
{
	Suite	*s = suite_create("schedule");
	TCase	*tc = tcase_create("schedule");
	TCase	*live = tcase_create("schedule-eavd");

	tcase_add_loop_test(tc, test_cron_known_answers, 0,
	    (int)(sizeof(known) / sizeof(known[0])));
	tcase_add_loop_test(tc, test_bad_input, 0,
	    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_catch_up_policies);
	tcase_add_test(tc, test_backlog_summary);
	tcase_add_test(tc, test_duplicate_slot_refused);
	tcase_add_test(tc, test_two_producers);
	tcase_add_test(tc, test_fire_failure);
	tcase_add_test(tc, test_kill_switch_holds);
	tcase_add_test(tc, test_lifecycle);
	tcase_add_test(tc, test_eavctl_schedules);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	tcase_add_test(live, test_eavd_down_across_slots);
	tcase_add_test(live, test_two_nodes);
	tcase_set_timeout(live, 180);
	suite_add_tcase(s, live);
	return s;
}
