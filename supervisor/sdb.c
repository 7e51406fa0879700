/*
 * The supervisor's database channel: a FIFO of requests sent one at a time
 * on a non-blocking connection watched by the event loop (house style rule
 * 27: the supervisor never blocks on the database).  A request that meets
 * a broken connection stays at the head of the queue and is sent again
 * after an asynchronous reconnect with back-off: every request eavd makes
 * is safe to repeat (reconciliation is guarded by claim epochs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "clock.h"
#include "inject.h"
#include "inject_db.h"
#include "log.h"
#include "supervisor.h"
#include "xalloc.h"

#define SDB_MAX_PARAMS	8
#define SDB_MAX_QUEUE	4096
#define SDB_CONNECT_TIMEOUT_MS 10000

struct sdb_req {
	TAILQ_ENTRY(sdb_req)	 entry;
	enum db_stmt		 stmt;
	char			*params[SDB_MAX_PARAMS];
	sdb_cb			 cb;
	sdb_refresh		 refresh;
	void			*arg;
	long long		 inject;	/* handle to act on once sent */
	long long		 inject_pick;	/* handle being taken */
};

struct sdb {
	struct sup		*sup;
	struct db		 db;
	struct event		*rd_ev;
	struct event		*wr_ev;
	struct event		*retry_ev;
	TAILQ_HEAD(sdb_queue, sdb_req) queue;
	int			 nqueue;
	int			 ready;		/* connected, not connecting */
	int			 busy;		/* head request sent */
	PGresult		*res;
	int			 backoff_ms;
	int64_t			 down_since;
};

static void	sdb_kick(struct sdb *);
static void	sdb_watch(struct sdb *);
static void	sdb_read_cb(evutil_socket_t, short, void *);
static void	sdb_write_cb(evutil_socket_t, short, void *);
static void	sdb_lost(struct sdb *);
static void	sdb_retry_cb(evutil_socket_t, short, void *);
static void	sdb_connect_poll(struct sdb *, PostgresPollingStatusType);
static void	sdb_connect_cb(evutil_socket_t, short, void *);
static void	sdb_done(struct sdb *, enum db_status);
static void	sdb_req_free(struct sdb_req *);
static void	sdb_shed(struct sdb *);
static void	sdb_inject_subscribe(struct sdb *);
static void	sdb_kill_observe(struct sdb *);

/* Takes over a connected, migrated struct db from start-up. */
struct sdb *
sdb_new(struct sup *sup, struct db *db)
{
	struct sdb	*s = xcalloc(1, sizeof(*s));

	s->sup = sup;
	s->db = *db;
	memset(db, 0, sizeof(*db));
	TAILQ_INIT(&s->queue);
	s->retry_ev = evtimer_new(sup->base, sdb_retry_cb, s);
	if (s->retry_ev == NULL)
		fatalx("cannot create the database retry timer");
	if (PQsetnonblocking(s->db.conn, 1) == -1)
		fatalx("cannot make the database connection non-blocking");
	s->ready = 1;
	sdb_watch(s);
	sdb_inject_subscribe(s);
	sdb_kill_observe(s);
	return s;
}

static void
sdb_inject_listening(struct sup *sup, void *arg, PGresult *res,
    enum db_status st)
{
	(void)sup;
	(void)arg;
	if (res == NULL)
		log_warnx("cannot listen for injections (%s)",
		    db_status_name(st));
}

static void
sdb_inject_loaded(struct sup *sup, void *arg, PGresult *res,
    enum db_status st)
{
	(void)sup;
	(void)arg;
	if (res != NULL)
		inject_db_load(res);
	else
		log_warnx("cannot load injections (%s)", db_status_name(st));
}

/*
 * (Re)subscribes to eav_inject and loads the armed injections: at start,
 * after a reconnect (a new session listens to nothing) and on NOTIFY.
 */
static void
sdb_inject_subscribe(struct sdb *s)
{
	const char	*params[1] = { "supervisor" };

	s->db.inject_changed = 0;
	sdb_submit(s, DB_INJECT_LISTEN, NULL, sdb_inject_listening, NULL, 0);
	sdb_submit(s, DB_INJECT_ARMED, params, sdb_inject_loaded, NULL, 0);
}

static void
sdb_kill_observed(struct sup *sup, void *arg, PGresult *res,
    enum db_status st)
{
	(void)arg;
	if (res == NULL) {
		log_warnx("cannot read the kill switches (%s)",
		    db_status_name(st));
		return;
	}
	(void)kill_view_apply(&sup->kill, res);
	notify_status(sup);
}

/*
 * Reads the kill switches (which also listens on eav_kill_switch): at
 * start, after a reconnect and on NOTIFY.  eavd only reports them.
 */
static void
sdb_kill_observe(struct sdb *s)
{
	const char	*params[2];
	char		 buf[24];

	s->db.kill_changed = 0;
	kill_params(&s->sup->kill, s->sup->actor, buf, sizeof(buf), params);
	sdb_submit(s, DB_KILL_OBSERVE, params, sdb_kill_observed, NULL, 0);
}

/* The firing of a database-armed supervisor point was taken, or not. */
static void
sdb_inject_taken(struct sup *sup, void *arg, PGresult *res,
    enum db_status st)
{
	struct sdb_req	*r = arg;

	(void)sup;
	(void)st;
	if (res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
		r->inject = r->inject_pick;
	else if (res != NULL)
		inject_used_up(r->inject_pick);
}

/*
 * Arms a request for supervisor.mid_reconcile if a spec matches: a spec
 * of EAV_INJECT at once, one of eav.inject_points once a take request,
 * queued just before it, has committed its firing (the loop never waits
 * for the database).
 */
static void
sdb_inject_prepare(struct sdb *s, struct sdb_req *r)
{
	char		 id[24];
	const char	*params[3] = { id, s->sup->actor, "0" };
	long long	 h;

	if (!inject_armed || !inject_pick(INJ_SUPERVISOR_MID_RECONCILE, 0,
	    NULL, &h))
		return;
	if (h < 0) {
		r->inject = h;
		return;
	}
	r->inject_pick = h;
	snprintf(id, sizeof(id), "%lld", h);
	sdb_submit(s, DB_INJECT_TAKE, params, sdb_inject_taken, r, 0);
}

static void
sdb_req_free(struct sdb_req *r)
{
	int	i;

	for (i = 0; i < SDB_MAX_PARAMS; i++)
		free(r->params[i]);
	free(r);
}

/*
 * During a long outage the queue fills with process-state records; the
 * oldest of those (no callback waits for them) go first.  A request with
 * a callback is never dropped: a slot or a sweep waits for it.
 */
static void
sdb_shed(struct sdb *s)
{
	struct sdb_req	*r;

	TAILQ_FOREACH(r, &s->queue, entry)
		if (r->cb == NULL && !(r == TAILQ_FIRST(&s->queue) && s->busy))
			break;
	if (r == NULL)
		return;
	log_warnx("database unreachable, %d requests queued: dropping the "
	    "oldest process-state record", s->nqueue);
	TAILQ_REMOVE(&s->queue, r, entry);
	s->nqueue--;
	sdb_req_free(r);
}

/* Frees the channel and its queue (at exit). */
void
sdb_free(struct sdb *s)
{
	struct sdb_req	*r;

	while ((r = TAILQ_FIRST(&s->queue)) != NULL) {
		TAILQ_REMOVE(&s->queue, r, entry);
		sdb_req_free(r);
	}
	if (s->rd_ev)
		event_free(s->rd_ev);
	if (s->wr_ev)
		event_free(s->wr_ev);
	event_free(s->retry_ev);
	PQclear(s->res);
	db_close(&s->db);
	free(s);
}

/* True when nothing is queued or in flight. */
int
sdb_idle(const struct sdb *s)
{
	return s->nqueue == 0;
}

/*
 * Queues a statement; cb (or NULL) gets the result, which it must not
 * clear.  With inject set, supervisor.mid_reconcile fires once the
 * request has been sent, if a spec of it is armed.
 */
void
sdb_submit(struct sdb *s, enum db_stmt stmt, const char *const *params,
    sdb_cb cb, void *arg, int inject)
{
	struct sdb_req	*r;
	int		 i, n = db_stmt_nparams(stmt);

	if (s->nqueue >= SDB_MAX_QUEUE)
		sdb_shed(s);
	r = xcalloc(1, sizeof(*r));
	r->stmt = stmt;
	for (i = 0; i < n && i < SDB_MAX_PARAMS; i++)
		r->params[i] = params[i] ? xstrdup(params[i]) : NULL;
	r->cb = cb;
	r->arg = arg;
	if (inject)
		sdb_inject_prepare(s, r);
	TAILQ_INSERT_TAIL(&s->queue, r, entry);
	s->nqueue++;
	sdb_kick(s);
}

/*
 * Gives the most recently queued request a refresh hook, for parameters
 * that describe the present (the live pids of a sweep) and would be stale
 * after waiting in the queue.
 */
void
sdb_set_refresh(struct sdb *s, sdb_refresh fn)
{
	struct sdb_req	*r = TAILQ_LAST(&s->queue, sdb_queue);

	if (r != NULL && !(r == TAILQ_FIRST(&s->queue) && s->busy))
		r->refresh = fn;
}

/* Sends the head request if the connection is free. */
static void
sdb_kick(struct sdb *s)
{
	struct sdb_req	*r = TAILQ_FIRST(&s->queue);
	int		 fr;

	if (!s->ready || s->busy || r == NULL)
		return;
	if (r->refresh != NULL)
		r->refresh(s->sup, r->params);
	if (db_send_params(&s->db, r->stmt,
	    (const char *const *)r->params) != DB_OK) {
		sdb_lost(s);
		return;
	}
	s->busy = 1;
	if ((fr = PQflush(s->db.conn)) == -1) {
		sdb_lost(s);
		return;
	}
	if (fr == 1 && event_add(s->wr_ev, NULL) == -1)
		fatalx("cannot watch the database socket");
	/* Once the whole request is on its way (else in sdb_write_cb). */
	if (fr == 0 && r->inject != 0)
		(void)inject_act(INJ_SUPERVISOR_MID_RECONCILE, r->inject, 0,
		    NULL);
}

static void
sdb_watch(struct sdb *s)
{
	int	fd = PQsocket(s->db.conn);

	if (s->rd_ev)
		event_free(s->rd_ev);
	if (s->wr_ev)
		event_free(s->wr_ev);
	s->rd_ev = event_new(s->sup->base, fd, EV_READ | EV_PERSIST,
	    sdb_read_cb, s);
	s->wr_ev = event_new(s->sup->base, fd, EV_WRITE, sdb_write_cb, s);
	if (s->rd_ev == NULL || s->wr_ev == NULL ||
	    event_add(s->rd_ev, NULL) == -1)
		fatalx("cannot watch the database socket");
}

static void
sdb_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sdb	*s = arg;
	struct sdb_req	*r = TAILQ_FIRST(&s->queue);
	int		 fr;

	(void)fd;
	(void)what;
	if ((fr = PQflush(s->db.conn)) == -1)
		sdb_lost(s);
	else if (fr == 1 && event_add(s->wr_ev, NULL) == -1)
		fatalx("cannot watch the database socket");
	else if (fr == 0 && s->busy && r != NULL && r->inject != 0)
		(void)inject_act(INJ_SUPERVISOR_MID_RECONCILE, r->inject, 0,
		    NULL);
}

/* Hands the head request's result to its callback and sends the next. */
static void
sdb_done(struct sdb *s, enum db_status st)
{
	struct sdb_req	*r = TAILQ_FIRST(&s->queue);

	TAILQ_REMOVE(&s->queue, r, entry);
	s->nqueue--;
	s->busy = 0;
	if (r->cb != NULL)
		r->cb(s->sup, r->arg, st == DB_OK ? s->res : NULL, st);
	PQclear(s->res);
	s->res = NULL;
	sdb_req_free(r);
	sdb_kick(s);
}

static void
sdb_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sdb	*s = arg;
	PGresult	*res;
	enum db_status	 st;

	(void)fd;
	(void)what;
	if (!PQconsumeInput(s->db.conn)) {
		log_warnx("database connection lost: %s",
		    PQerrorMessage(s->db.conn));
		sdb_lost(s);
		return;
	}
	(void)db_drain_notifies(&s->db);
	if (s->db.inject_changed)
		sdb_inject_subscribe(s);
	if (s->db.kill_changed)
		sdb_kill_observe(s);
	while (s->busy && !PQisBusy(s->db.conn)) {
		if ((res = PQgetResult(s->db.conn)) != NULL) {
			if (s->res == NULL)
				s->res = res;
			else
				PQclear(res);
			continue;
		}
		st = db_classify(&s->db, s->res,
		    db_stmt_sql(TAILQ_FIRST(&s->queue)->stmt));
		if (st == DB_CONN_LOST) {
			sdb_lost(s);
			return;
		}
		sdb_done(s, st);
	}
}

/* Drops the connection; the head request will be sent again. */
static void
sdb_lost(struct sdb *s)
{
	struct timeval	tv;

	if (s->rd_ev) {
		event_free(s->rd_ev);
		s->rd_ev = NULL;
	}
	if (s->wr_ev) {
		event_free(s->wr_ev);
		s->wr_ev = NULL;
	}
	PQclear(s->res);
	s->res = NULL;
	s->busy = 0;
	s->ready = 0;
	db_close(&s->db);
	if (s->down_since == 0) {
		s->down_since = clock_ms();
		s->backoff_ms = 100;
	} else if ((s->backoff_ms *= 2) > 2000)
		s->backoff_ms = 2000;
	tv = clock_tv(clock_jitter(s->backoff_ms));
	if (evtimer_add(s->retry_ev, &tv) == -1)
		fatalx("cannot add the database retry timer");
}

static void
sdb_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sdb	*s = arg;
	char		 appname[64];

	(void)fd;
	(void)what;
	snprintf(appname, sizeof(appname), "eavd:%lld", s->sup->incarnation);
	s->db.conn = db_connect_start(s->sup->cfg.dsn, appname);
	if (s->db.conn == NULL || PQstatus(s->db.conn) == CONNECTION_BAD) {
		sdb_lost(s);
		return;
	}
	sdb_connect_poll(s, PGRES_POLLING_WRITING);
}

static void
sdb_connect_poll(struct sdb *s, PostgresPollingStatusType ps)
{
	struct timeval	tv = clock_tv(SDB_CONNECT_TIMEOUT_MS);
	short		what;

	if (ps == PGRES_POLLING_OK) {
		log_notice("database connection re-established after %lld ms",
		    (long long)(clock_ms() - s->down_since));
		s->down_since = 0;
		db_adopt(&s->db, s->db.conn);
		if (PQsetnonblocking(s->db.conn, 1) == -1) {
			sdb_lost(s);
			return;
		}
		s->ready = 1;
		sdb_watch(s);
		sdb_inject_subscribe(s);
		sdb_kill_observe(s);
		sdb_kick(s);
		return;
	}
	if (ps == PGRES_POLLING_FAILED) {
		log_debug("reconnect failed: %s", PQerrorMessage(s->db.conn));
		sdb_lost(s);
		return;
	}
	what = ps == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
	if (event_base_once(s->sup->base, PQsocket(s->db.conn), what,
	    sdb_connect_cb, s, &tv) == -1)
		fatalx("cannot watch the database socket");
}

static void
sdb_connect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sdb	*s = arg;

	(void)fd;
	if (what & EV_TIMEOUT) {
		log_debug("reconnect timed out");
		sdb_lost(s);
		return;
	}
	sdb_connect_poll(s, PQconnectPoll(s->db.conn));
}

/* Records a child's state change in eav.processes (audited). */
void
sdb_process_event(struct sup *sup, struct child *c, const char *state,
    const char *detail)
{
	char		 inc[24], slot[16], pid[16], restarts[16];
	pid_t		 p = c->pid ? c->pid : c->dead_pid;
	const char	*params[8] = { sup->cfg.node_name, inc,
			    child_kind_name(c->kind), slot, pid, state, detail,
			    restarts };

	snprintf(inc, sizeof(inc), "%lld", sup->incarnation);
	snprintf(slot, sizeof(slot), "%d", c->slot);
	snprintf(pid, sizeof(pid), "%d", (int)p);
	snprintf(restarts, sizeof(restarts), "%d", c->restarts);
	if (p == 0)
		params[4] = NULL;
	sdb_submit(sup->db, DB_PROCESS_EVENT, params, NULL, NULL, 0);
}
