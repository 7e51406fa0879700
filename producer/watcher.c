/*
 * The producer's watcher ticks.  eav.watcher_claim leases the due
 * watchers (FOR UPDATE SKIP LOCKED, so two producers never probe the
 * same slot), probe.c runs each probe on the event loop, and
 * eav.watcher_done records its outcome and, if the condition held, puts
 * the event in the inbox, in one transaction, for the lease holder only.
 * The next tick lives in the database, not here: this file sleeps until
 * eav.watcher_wait_ms says one is due (at most schedule_interval), and
 * is woken early by NOTIFY eav_watchers (one added or enabled) and a
 * reconnect.
 *
 * Invariants:
 *  - At most EAV_PRODUCER_PROBES_MAX probes run at once (eavd tracks
 *    that many process groups of ours).
 *  - A probe whose outcome cannot be recorded (the connection is gone)
 *    is dropped: its lease runs out and a producer ticks again.
 *  - At exit the probes still running are killed and, if the database
 *    is there, their leases given back (eav.watcher_release), so another
 *    producer ticks at once; else their leases run out as above.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>

#include "clock.h"
#include "log.h"
#include "producer.h"
#include "tls.h"
#include "toolproc.h"
#include "xalloc.h"

#define WATCH_BUSY_MS	10	/* due but probes are full, or a retry */

static void	watcher_cb(evutil_socket_t, short, void *);
static void	watcher_arm(struct producer *, long long);
static int	watcher_claim(struct producer *);
static long long watcher_wait_ms(struct producer *);
static struct watch_tick *watcher_tick_new(struct producer *, PGresult *,
		    int);
static void	watcher_tick_free(struct watch_tick *);
static void	watcher_release(struct producer *);

/* Arms the timer to tick in ms milliseconds (at most schedule_interval). */
static void
watcher_arm(struct producer *p, long long ms)
{
	struct timeval	tv;

	if (ms < 0 || ms > p->cfg.producer_schedule_interval)
		ms = p->cfg.producer_schedule_interval;
	tv = clock_tv((int)ms);
	if (event_add(p->watch_ev, &tv) == -1)
		fatalx("cannot arm the watcher timer");
}

/* Asks for a watcher tick on the next loop iteration. */
void
watcher_wake(struct producer *p)
{
	if (p->watch_ev != NULL)
		watcher_arm(p, 0);
}

/* A tick of the claimed row i of res (the caller starts its probe). */
static struct watch_tick *
watcher_tick_new(struct producer *p, PGresult *res, int i)
{
	struct watch_tick	*t = xcalloc(1, sizeof(*t));
	json_error_t		 jerr;

	t->p = p;
	t->id = xstrdup(PQgetvalue(res, i, 0));
	t->name = xstrdup(PQgetvalue(res, i, 1));
	t->kind = xstrdup(PQgetvalue(res, i, 2));
	t->config = json_loads(PQgetvalue(res, i, 3), 0, &jerr);
	t->timeout_ms = atoi(PQgetvalue(res, i, 4));
	t->slot = xstrdup(PQgetvalue(res, i, 5));
	TAILQ_INSERT_TAIL(&p->ticks, t, entry);
	p->nprobes++;
	return t;
}

/* Takes a tick off the list and frees it. */
static void
watcher_tick_free(struct watch_tick *t)
{
	TAILQ_REMOVE(&t->p->ticks, t, entry);
	t->p->nprobes--;
	json_decref(t->config);
	free(t->id);
	free(t->name);
	free(t->kind);
	free(t->slot);
	free(t);
}

/*
 * Leases the due watchers there is room for and starts their probes.
 * Returns how many, or -1 if the call failed (the connection is dealt
 * with).
 */
static int
watcher_claim(struct producer *p)
{
	PGresult	*res = NULL;
	char		 lim[16];
	const char	*params[2] = { p->actor, lim };
	enum db_status	 st;
	int		 i, n;

	if (p->nprobes >= EAV_PRODUCER_PROBES_MAX)
		return 0;
	snprintf(lim, sizeof(lim), "%d", EAV_PRODUCER_PROBES_MAX -
	    p->nprobes);
	st = db_call(&p->db, DB_WATCHER_CLAIM, params, &res);
	if (st == DB_CONN_LOST)
		ingest_lost(p);
	if (st != DB_OK)
		return -1;
	n = PQntuples(res);
	for (i = 0; i < n; i++)
		probe_start(watcher_tick_new(p, res, i));
	PQclear(res);
	return n;
}

/* Milliseconds until a watcher is due; -1 for none (or a failed call). */
static long long
watcher_wait_ms(struct producer *p)
{
	PGresult	*res = NULL;
	enum db_status	 st;
	long long	 ms = -1;

	st = db_call(&p->db, DB_WATCHER_WAIT, NULL, &res);
	if (st == DB_CONN_LOST)
		ingest_lost(p);
	if (st != DB_OK)
		return st == DB_RETRY ? WATCH_BUSY_MS : -1;
	if (!PQgetisnull(res, 0, 0))
		ms = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	/* Due now but no room for its probe: the probe's end wakes us. */
	if (ms == 0 && p->nprobes >= EAV_PRODUCER_PROBES_MAX)
		return -1;
	return ms == 0 ? WATCH_BUSY_MS : ms;
}

static void
watcher_cb(evutil_socket_t fd, short what, void *arg)
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
	if (watcher_claim(p) == -1 && !db_is_connected(&p->db))
		return;
	ms = watcher_wait_ms(p);
	if (db_is_connected(&p->db)) {
		watcher_arm(p, ms);
		/* As for schedules: a NOTIFY read during the calls sits in
		 * libpq's queue until something drains it. */
		ingest_wake(p);
	}
}

/*
 * Records the outcome of a tick's probe (outcome "holds" with the event
 * body, "false", or "error" with the reason) and frees the tick.
 */
void
watcher_tick_done(struct watch_tick *t, const char *outcome,
    const char *body, const char *error)
{
	struct producer	*p = t->p;
	PGresult	*res = NULL;
	const char	*params[6] = { t->id, t->slot, p->actor, outcome, body,
			    error };
	enum db_status	 st;

	if (error != NULL)
		log_info("watcher %s slot %s: %s", t->name, t->slot, error);
	if (!db_is_connected(&p->db)) {
		log_warnx("watcher %s slot %s: outcome %s not recorded (no "
		    "database); the tick is redone when its lease runs out",
		    t->name, t->slot, outcome);
		watcher_tick_free(t);
		return;
	}
	st = db_call(&p->db, DB_WATCHER_DONE, params, &res);
	if (st == DB_OK) {
		log_debug("watcher %s slot %s: %s", t->name, t->slot,
		    PQgetvalue(res, 0, 0));
		PQclear(res);
	} else if (st == DB_CONN_LOST)
		ingest_lost(p);
	watcher_tick_free(t);
	watcher_wake(p);
}

/*
 * Creates the watcher timer, the SIGCHLD event of the probes and the
 * resolver of http probes (so a host name never blocks the loop).
 */
void
watcher_init(struct producer *p)
{
	TAILQ_INIT(&p->ticks);
	p->watch_ev = event_new(p->base, -1, 0, watcher_cb, p);
	if (p->watch_ev == NULL)
		fatalx("cannot create the watcher timer");
	p->chld_ev = toolproc_init(p->base, 3);
	p->dns = evdns_base_new(p->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
	    EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (p->dns == NULL)
		log_warnx("no asynchronous resolver: http probes resolve host "
		    "names blocking the loop");
}

/* Gives back the leases of the probes killed at exit. */
static void
watcher_release(struct producer *p)
{
	PGresult	*res = NULL;
	const char	*params[1] = { p->actor };

	if (!db_is_connected(&p->db))
		return;
	if (db_call(&p->db, DB_WATCHER_RELEASE, params, &res) != DB_OK) {
		log_warnx("cannot give back the watcher leases: %s",
		    p->db.errmsg);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "0") != 0)
		log_info("gave back %s watcher lease(s)",
		    PQgetvalue(res, 0, 0));
	PQclear(res);
}

/* Ends the probes still running (their ticks are redone elsewhere). */
void
watcher_free(struct producer *p)
{
	struct watch_tick	*t, *next;
	int			 killed = 0;

	TAILQ_FOREACH_SAFE(t, &p->ticks, entry, next) {
		probe_cancel(t);
		watcher_tick_free(t);
		killed++;
	}
	if (killed > 0)
		watcher_release(p);
	probe_http_free_all();
	tls_free();
	if (p->dns != NULL)
		evdns_base_free(p->dns, 0);
	p->dns = NULL;
}
