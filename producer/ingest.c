/*
 * The producer's work: inbox events become tasks in transactions of up to
 * batch_size events.  eav.inbox_ingest validates, dedupes and creates the
 * tasks; this file only brackets it with BEGIN and COMMIT, so a producer
 * killed anywhere (producer.after_task_before_ack sits just before the
 * COMMIT) neither loses an event nor creates its task twice: the whole
 * batch rolls back and is taken again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "inject.h"
#include "inject_db.h"
#include "killswitch.h"
#include "log.h"
#include "producer.h"

#define INGEST_MAX_ROUNDS 16
#define DEMO_TICK_MS	100

static int	ingest_batch(struct producer *);
static void	ingest_cb(evutil_socket_t, short, void *);
static void	ingest_read_cb(evutil_socket_t, short, void *);
static void	ingest_poll_cb(evutil_socket_t, short, void *);
static int	ingest_try(void *);
static void	ingest_up(void *, int64_t);
static void	demo_cb(evutil_socket_t, short, void *);
static void	ingest_reload(struct producer *);

/* Asks for an ingest cycle on the next loop iteration. */
void
ingest_wake(struct producer *p)
{
	event_active(p->cycle_ev, 0, 0);
}

static void
ingest_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer	*p = arg;

	(void)fd;
	(void)what;
	if (!PQconsumeInput(p->db.conn)) {
		log_warnx("database connection lost: %s",
		    PQerrorMessage(p->db.conn));
		ingest_lost(p);
		return;
	}
	if (db_drain_notifies(&p->db) > 0)
		ingest_wake(p);
	ingest_reload(p);
}

/*
 * Acts on NOTIFY eav_inject (loads the armed injections again),
 * eav_kill_switch (reads the switches; the ingest and the schedule tick
 * skip what they stop, and a release wakes both), eav_schedules (a
 * schedule added or resumed: tick now) and eav_watchers (the same for
 * watchers).  Either call may read more
 * notifications, hence the loop.
 */
static void
ingest_reload(struct producer *p)
{
	while (db_is_connected(&p->db) && (p->db.inject_changed ||
	    p->db.kill_changed || p->db.sched_changed ||
	    p->db.watch_changed)) {
		if (p->db.kill_changed || p->db.sched_changed)
			schedule_wake(p);
		if (p->db.watch_changed)
			watcher_wake(p);
		p->db.sched_changed = p->db.watch_changed = 0;
		if ((p->db.kill_changed &&
		    kill_observe(&p->db, p->actor, &p->kill) != DB_OK) ||
		    (p->db.inject_changed &&
		    inject_db_subscribe(&p->db, "producer") == -1)) {
			log_warnx("cannot read the kill switches or "
			    "injections: %s", p->db.errmsg);
			ingest_lost(p);
			return;
		}
		ingest_wake(p);
		(void)db_drain_notifies(&p->db);
	}
}

static void
ingest_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	ingest_wake(arg);
}

/* Connects and listens for inbox inserts; 0 or -1. */
int
ingest_connect(struct producer *p)
{
	char	appname[64];

	snprintf(appname, sizeof(appname), "eav-producer:%lld:%d",
	    p->incarnation, (int)getpid());
	if (db_connect(&p->db, p->cfg.dsn, appname) == -1) {
		log_warnx("cannot connect to the database: %s", p->db.errmsg);
		return -1;
	}
	if (db_exec(&p->db, "LISTEN eav_inbox") != DB_OK ||
	    db_exec(&p->db, "LISTEN eav_schedules") != DB_OK ||
	    db_exec(&p->db, "LISTEN eav_watchers") != DB_OK ||
	    kill_observe(&p->db, p->actor, &p->kill) != DB_OK ||
	    inject_db_subscribe(&p->db, "producer") == -1) {
		db_close(&p->db);
		return -1;
	}
	p->db_ev = event_new(p->base, PQsocket(p->db.conn),
	    EV_READ | EV_PERSIST, ingest_read_cb, p);
	if (p->db_ev == NULL || event_add(p->db_ev, NULL) == -1)
		fatalx("cannot watch the database socket");
	return 0;
}

static int
ingest_try(void *arg)
{
	return ingest_connect(arg);
}

static void
ingest_up(void *arg, int64_t down_ms)
{
	log_notice("reconnected to the database after %lld ms",
	    (long long)down_ms);
	ingest_wake(arg);
	schedule_wake(arg);
	watcher_wake(arg);
}

/* Drops the connection (rolling back any open batch) and reconnects. */
void
ingest_lost(struct producer *p)
{
	if (p->db_ev != NULL) {
		event_free(p->db_ev);
		p->db_ev = NULL;
	}
	db_close(&p->db);
	reconnect_lost(&p->reconnect);
}

/* One transaction of up to batch_size events; returns how many, or -1. */
static int
ingest_batch(struct producer *p)
{
	PGresult	*res = NULL;
	char		 lim[16];
	const char	*params[3] = { lim, p->actor,
			    classify_enabled(p) ? "true" : "false" };
	enum db_status	 st;
	int		 i, n;

	snprintf(lim, sizeof(lim), "%d", p->cfg.producer_batch_size);
	if (db_exec(&p->db, "BEGIN") != DB_OK)
		goto lost;
	st = db_call(&p->db, DB_INBOX_INGEST, params, &res);
	if (st == DB_RETRY) {
		(void)db_exec(&p->db, "ROLLBACK");
		return 0;
	}
	if (st == DB_CONN_LOST)
		goto lost;
	if (st != DB_OK)
		fatalx("inbox ingest failed: %s", p->db.errmsg);
	n = PQntuples(res);
	for (i = 0; i < n; i++)
		if (strcmp(PQgetvalue(res, i, 1), "rejected") == 0)
			log_info("event %s rejected: %s", PQgetvalue(res, i, 0),
			    PQgetvalue(res, i, 3));
	PQclear(res);
	if (n > 0 && INJECT(INJ_PRODUCER_AFTER_TASK_BEFORE_ACK, 0, NULL) ==
	    INJECT_DROP)
		goto lost;
	if (db_exec(&p->db, "COMMIT") != DB_OK)
		goto lost;
	if (n > 0)
		log_debug("ingested %d event(s)", n);
	return n;
lost:
	ingest_lost(p);
	return -1;
}

static void
ingest_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer	*p = arg;
	int		 round, n = 0;

	(void)fd;
	(void)what;
	if (p->db.conn != NULL && !db_is_connected(&p->db)) {
		/* libpq closed it under us: nobody else will notice. */
		ingest_lost(p);
		return;
	}
	if (!db_is_connected(&p->db) || p->stopping)
		return;
	for (round = 0; round < INGEST_MAX_ROUNDS; round++)
		if ((n = ingest_batch(p)) < p->cfg.producer_batch_size)
			break;
	/* Events left classifying by these batches, or by a lease that
	 * ran out (the poll brings us here too). */
	if (n >= 0)
		classify_wake(p);
	if (n >= 0 && db_is_connected(&p->db) &&
	    (round == INGEST_MAX_ROUNDS || db_drain_notifies(&p->db) > 0))
		ingest_wake(p);
	if (n >= 0)
		ingest_reload(p);
}

/* Creates the cycle, poll and reconnect machinery. */
void
ingest_init(struct producer *p)
{
	struct timeval	tv = clock_tv(p->cfg.producer_poll_interval);

	p->cycle_ev = event_new(p->base, -1, 0, ingest_cb, p);
	p->poll_ev = event_new(p->base, -1, EV_PERSIST, ingest_poll_cb, p);
	if (p->cycle_ev == NULL || p->poll_ev == NULL ||
	    event_add(p->poll_ev, &tv) == -1)
		fatalx("cannot create producer events");
	kill_view_init(&p->kill);
	p->reconnect.base = p->base;
	p->reconnect.max_ms = p->cfg.worker_reconnect_max;
	p->reconnect.exit_after_ms = p->cfg.worker_db_lost_exit;
	p->reconnect.try_connect = ingest_try;
	p->reconnect.on_up = ingest_up;
	p->reconnect.arg = p;
}

/* Emits demo_rate events per second, in ticks of DEMO_TICK_MS. */
static void
demo_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer	*p = arg;
	PGresult	*res = NULL;
	char		 n[16];
	const char	*params[2] = { n, p->actor };
	int		 k;

	(void)fd;
	(void)what;
	if (!db_is_connected(&p->db) || p->stopping)
		return;
	p->demo_carry += p->cfg.producer_demo_rate * DEMO_TICK_MS / 1000.0;
	if ((k = (int)p->demo_carry) < 1)
		return;
	p->demo_carry -= k;
	snprintf(n, sizeof(n), "%d", k);
	switch (db_call(&p->db, DB_DEMO_EMIT, params, &res)) {
	case DB_OK:
		PQclear(res);
		break;
	case DB_CONN_LOST:
		ingest_lost(p);
		break;
	default:
		break;
	}
}

/* Starts the demo load if the configuration asks for it. */
void
demo_init(struct producer *p)
{
	struct timeval	tv = clock_tv(DEMO_TICK_MS);

	if (!p->cfg.producer_demo)
		return;
	p->demo_ev = event_new(p->base, -1, EV_PERSIST, demo_cb, p);
	if (p->demo_ev == NULL || event_add(p->demo_ev, &tv) == -1)
		fatalx("cannot add the demo timer");
	log_info("demo load on: %d event(s) per second",
	    p->cfg.producer_demo_rate);
}
