/*
 * The worker's one database connection.  A broken connection is a
 * database event, not a crash: the worker keeps the outcomes it holds,
 * reconnects with jittered back-off (common/reconnect.c), tells the
 * database which claims it knows (worker_resync releases the rest: a claim
 * whose result was lost was never started, and the old session is ended
 * first so no claim of it can still land), completes what it holds with
 * its claim epochs, and goes on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "killswitch.h"
#include "log.h"
#include "inject_db.h"
#include "worker.h"
#include "xalloc.h"

static int	conn_resync(struct worker *);
static void	conn_read_cb(evutil_socket_t, short, void *);
static int	conn_try(void *);
static void	conn_up(void *, int64_t);

/* NOTIFY arrives here while the worker is idle. */
static void
conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker	*w = arg;

	(void)fd;
	(void)what;
	if (!PQconsumeInput(w->db.conn)) {
		log_warnx("database connection lost: %s",
		    PQerrorMessage(w->db.conn));
		conn_lost(w);
		return;
	}
	if (db_drain_notifies(&w->db) > 0)
		cycle_wake(w);
	conn_reload(w);
}

/*
 * Acts on NOTIFY eav_inject (loads the armed injections again) and
 * eav_kill_switch (reads the switches: a released global one wakes the
 * cycle).  Either call may read more notifications, hence the loop.
 */
void
conn_reload(struct worker *w)
{
	enum db_status	st;
	int		stopped;

	while (db_is_connected(&w->db) &&
	    (w->db.inject_changed || w->db.kill_changed)) {
		stopped = w->kill.stopped_all;
		if (w->db.kill_changed &&
		    (st = kill_observe(&w->db, w->actor, &w->kill)) != DB_OK) {
			(void)cycle_db_error(w, st, "kill switch read");
			return;
		}
		if (stopped && !w->kill.stopped_all)
			cycle_wake(w);
		if (w->db.inject_changed &&
		    inject_db_subscribe(&w->db, "worker") == -1) {
			conn_lost(w);
			return;
		}
		/* Wake-ups that arrived during the calls. */
		if (db_drain_notifies(&w->db) > 0)
			cycle_wake(w);
	}
}

/* Releases steps this worker owns but does not know (see header). */
static int
conn_resync(struct worker *w)
{
	struct step	*s;
	PGresult	*res = NULL;
	char		 inc[24], pid[16], old[16], *known, *p;
	const char	*params[5];
	size_t		 len, off;
	enum db_status	 st;

	len = 8 + 24 * (size_t)(w->nrunning + w->ndone);
	known = xmalloc(len);
	off = (size_t)snprintf(known, len, "{");
	TAILQ_FOREACH(s, &w->running, entry)
		off += (size_t)snprintf(known + off, len - off, "%s%lld",
		    off > 1 ? "," : "", s->id);
	TAILQ_FOREACH(s, &w->done, entry)
		off += (size_t)snprintf(known + off, len - off, "%s%lld",
		    off > 1 ? "," : "", s->id);
	snprintf(known + off, len - off, "}");
	snprintf(inc, sizeof(inc), "%lld", w->incarnation);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(old, sizeof(old), "%d", w->old_backend);
	params[0] = w->node;
	params[1] = inc;
	params[2] = pid;
	params[3] = w->old_backend ? old : NULL;
	params[4] = known;
	st = db_call(&w->db, DB_WORKER_RESYNC, params, &res);
	free(known);
	if (st != DB_OK)
		return -1;
	p = PQgetvalue(res, 0, 0);
	if (atoi(p) > 0)
		log_warnx("released %s claimed step(s) whose claim result was "
		    "lost with the connection", p);
	PQclear(res);
	w->old_backend = 0;
	return 0;
}

/*
 * Connects, listens for new steps, resyncs after a loss.  Returns 0, or
 * -1 with the connection closed.
 */
int
conn_open(struct worker *w)
{
	char	appname[64];

	snprintf(appname, sizeof(appname), "eav-worker:%lld:%d",
	    w->incarnation, (int)getpid());
	if (db_connect(&w->db, w->cfg.dsn, appname) == -1) {
		log_warnx("cannot connect to the database: %s", w->db.errmsg);
		return -1;
	}
	if (db_exec(&w->db, "LISTEN eav_steps") != DB_OK ||
	    kill_observe(&w->db, w->actor, &w->kill) != DB_OK ||
	    (w->reconnect.lost_since != 0 && conn_resync(w) == -1) ||
	    inject_db_subscribe(&w->db, "worker") == -1) {
		db_close(&w->db);
		return -1;
	}
	w->db_ev = event_new(w->base, PQsocket(w->db.conn),
	    EV_READ | EV_PERSIST, conn_read_cb, w);
	if (w->db_ev == NULL || event_add(w->db_ev, NULL) == -1)
		fatalx("cannot watch the database socket");
	return 0;
}

static int
conn_try(void *arg)
{
	return conn_open(arg);
}

static void
conn_up(void *arg, int64_t down_ms)
{
	struct worker	*w = arg;

	log_notice("reconnected to the database after %lld ms; completing "
	    "%d held outcome(s)", (long long)down_ms, w->ndone);
	cycle_wake(w);
}

/* Sets up reconnection from the configuration. */
void
conn_init(struct worker *w)
{
	kill_view_init(&w->kill);
	w->reconnect.base = w->base;
	w->reconnect.max_ms = w->cfg.worker_reconnect_max;
	w->reconnect.exit_after_ms = w->cfg.worker_db_lost_exit;
	w->reconnect.try_connect = conn_try;
	w->reconnect.on_up = conn_up;
	w->reconnect.arg = w;
}

/* Drops the connection and starts reconnecting. */
void
conn_lost(struct worker *w)
{
	if (w->db_ev != NULL) {
		event_free(w->db_ev);
		w->db_ev = NULL;
	}
	if (w->db.conn != NULL && w->old_backend == 0)
		w->old_backend = w->db.backend_pid;
	db_close(&w->db);
	reconnect_lost(&w->reconnect);
}
