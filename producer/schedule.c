/*
 * The producer's schedule timer.  eav.schedule_tick does the work in one
 * transaction (fires due slots by each schedule's catch-up policy, each
 * (schedule, slot) at most once) and says how many milliseconds until the
 * next slot is due; this file only sleeps that long.  The next slot lives
 * in the database, not here: a producer that restarts, or a second one,
 * ticks from the same place, and the first tick after a start catches up
 * on the slots missed while it was down.  Woken early by NOTIFY
 * eav_schedules (a schedule added or resumed), a kill switch change, and
 * a reconnect.
 */
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

#include "clock.h"
#include "log.h"
#include "producer.h"

#define SCHEDULE_BATCH		100
#define SCHEDULE_BUSY_MS	10	/* due but locked by another producer */

static void	schedule_cb(evutil_socket_t, short, void *);
static void	schedule_arm(struct producer *, long long);
static long long schedule_tick(struct producer *);

/* Arms the timer to tick in ms milliseconds (at most schedule_interval). */
static void
schedule_arm(struct producer *p, long long ms)
{
	struct timeval	tv;

	if (ms < 0 || ms > p->cfg.producer_schedule_interval)
		ms = p->cfg.producer_schedule_interval;
	tv = clock_tv((int)ms);
	if (event_add(p->sched_ev, &tv) == -1)
		fatalx("cannot arm the schedule timer");
}

/* Asks for a schedule tick on the next loop iteration. */
void
schedule_wake(struct producer *p)
{
	schedule_arm(p, 0);
}

/*
 * One tick.  Returns the milliseconds until the next one, or -1 for the
 * configured interval (no schedule, or the call failed).
 */
static long long
schedule_tick(struct producer *p)
{
	PGresult	*res = NULL;
	char		 lim[16];
	const char	*params[2] = { p->actor, lim };
	enum db_status	 st;
	long long	 ms = -1;

	snprintf(lim, sizeof(lim), "%d", SCHEDULE_BATCH);
	st = db_call(&p->db, DB_SCHEDULE_TICK, params, &res);
	switch (st) {
	case DB_OK:
		if (!PQgetisnull(res, 0, 0))
			ms = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
		/* 0: due now but taken by another producer, or a full batch. */
		return ms == 0 ? SCHEDULE_BUSY_MS : ms;
	case DB_RETRY:
		return SCHEDULE_BUSY_MS;
	case DB_CONN_LOST:
		ingest_lost(p);
		return -1;
	default:
		/* Logged by db_classify; ticks go on at the interval. */
		return -1;
	}
}

static void
schedule_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer	*p = arg;
	long long	 ms;

	(void)fd;
	(void)what;
	if (p->db.conn != NULL && !db_is_connected(&p->db)) {
		ingest_lost(p);
		return;
	}
	/* Disconnected: the reconnect wakes us again. */
	if (!db_is_connected(&p->db) || p->stopping)
		return;
	ms = schedule_tick(p);
	if (db_is_connected(&p->db)) {
		schedule_arm(p, ms);
		/* A NOTIFY eav_inbox read during the call sits in libpq's
		 * queue, where no socket event finds it: the ingest cycle
		 * drains it (and finds the events anyway). */
		ingest_wake(p);
	}
}

/* Creates the schedule timer; the first tick comes with schedule_wake. */
void
schedule_init(struct producer *p)
{
	p->sched_ev = event_new(p->base, -1, 0, schedule_cb, p);
	if (p->sched_ev == NULL)
		fatalx("cannot create the schedule timer");
}
