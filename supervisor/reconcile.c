/*
 * Reconciliation requests of the running supervisor: after a worker's
 * death (its steps become explicit unknown outcomes within milliseconds,
 * instead of waiting for a lease), and a periodic sweep that catches any
 * step of this incarnation owned by a pid that is no longer a live child.
 * Both are guarded by claim epoch in SQL, so running one twice, or both,
 * reconciles an attempt at most once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "clock.h"
#include "log.h"
#include "supervisor.h"
#include "xalloc.h"

static void	reconcile_done(struct sup *, void *, PGresult *,
		    enum db_status);
static void	reconcile_producer_done(struct sup *, void *, PGresult *,
		    enum db_status);
static void	sweep_cb(evutil_socket_t, short, void *);
static void	sweep_done(struct sup *, void *, PGresult *, enum db_status);
static void	sweep_refresh(struct sup *, char **);

static void
reconcile_done(struct sup *sup, void *arg, PGresult *res, enum db_status st)
{
	struct child	*c = arg;
	char		 name[32];
	long long	 n;

	c->busy = 0;
	if (st != DB_OK)
		log_error("reconciling %s pid %d failed: the sweep will "
		    "retry", child_name(c, name, sizeof(name)),
		    (int)c->dead_pid);
	else if ((n = strtoll(PQgetvalue(res, 0, 0), NULL, 10)) > 0) {
		sup->reconciled += n;
		log_notice("reconciled %lld step(s) of %s pid %d: %s", n,
		    child_name(c, name, sizeof(name)), (int)c->dead_pid,
		    PQgetvalue(res, 0, 1));
	}
	policy_after_reconcile(c);
}

/*
 * A dead producer's watcher ticks and classifier leases are ended now,
 * not when they run out.  Nothing waits for it (its successor leases
 * under another name), and a failure only leaves them to run out.
 */
static void
reconcile_producer_done(struct sup *sup, void *arg, PGresult *res,
    enum db_status st)
{
	long long	n;

	(void)sup;
	(void)arg;
	if (st == DB_OK && (n = strtoll(PQgetvalue(res, 0, 0), NULL, 10)) > 0)
		log_notice("released %lld lease(s) of a dead producer", n);
}

/*
 * Reconciles what a dead child leaves: a worker's running steps, a
 * producer's leases; then resumes its policy.
 */
void
reconcile_child(struct child *c)
{
	struct sup	*sup = c->sup;
	char		 inc[24], pid[16];
	const char	*params[3] = { sup->cfg.node_name, inc, pid };

	if (c->dead_pid == 0) {
		policy_after_reconcile(c);
		return;
	}
	snprintf(inc, sizeof(inc), "%lld", sup->incarnation);
	snprintf(pid, sizeof(pid), "%d", (int)c->dead_pid);
	if (c->kind != KIND_WORKER) {
		sdb_submit(sup->db, DB_RECONCILE_PRODUCER, params,
		    reconcile_producer_done, NULL, 0);
		policy_after_reconcile(c);
		return;
	}
	c->busy = 1;
	sdb_submit(sup->db, DB_RECONCILE_WORKER, params, reconcile_done, c, 1);
}

static void
sweep_done(struct sup *sup, void *arg, PGresult *res, enum db_status st)
{
	long long	n;

	(void)arg;
	sup->sweeping = 0;
	if (st != DB_OK)
		return;
	if ((n = strtoll(PQgetvalue(res, 0, 0), NULL, 10)) > 0) {
		sup->reconciled += n;
		log_notice("sweep reconciled %lld orphaned step(s)", n);
	}
	if (sup->state == SUP_STOPPING)
		sup_check_stopped(sup);
}

/* The live pids are taken when the sweep is sent, not when queued: a
 * worker spawned meanwhile must not look orphaned. */
static void
sweep_refresh(struct sup *sup, char **params)
{
	char	pids[1024];

	(void)child_live_pids(sup, pids, sizeof(pids));
	free(params[2]);
	params[2] = xstrdup(pids);
}

static void
stuck_done(struct sup *sup, void *arg, PGresult *res, enum db_status st)
{
	(void)sup;
	(void)arg;
	if (st == DB_OK && strcmp(PQgetvalue(res, 0, 0), "0") != 0)
		log_warnx("%s step(s) or queue(s) stuck: see eav.alarms",
		    PQgetvalue(res, 0, 0));
}

static void
expire_done(struct sup *sup, void *arg, PGresult *res, enum db_status st)
{
	(void)sup;
	(void)arg;
	if (st == DB_OK && strcmp(PQgetvalue(res, 0, 0), "0") != 0)
		log_notice("%s approval(s) expired", PQgetvalue(res, 0, 0));
}

/* Each sweep also looks for stuck steps and stalled queues (sql/0013),
 * ends retry storms (0015) and expires approvals (0017). */
static void
sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sup	*sup = arg;
	char		 inc[24], pids[1024];
	const char	*params[3] = { sup->cfg.node_name, inc, pids };
	const char	*actor[1] = { sup->actor };

	(void)fd;
	(void)what;
	if (sup->sweeping)
		return;
	snprintf(inc, sizeof(inc), "%lld", sup->incarnation);
	(void)child_live_pids(sup, pids, sizeof(pids));
	sup->sweeping = 1;
	sdb_submit(sup->db, DB_RECONCILE_SWEEP, params, sweep_done, NULL, 0);
	sdb_set_refresh(sup->db, sweep_refresh);
	/* Three statements: one failing must not stop the others. */
	if (sup->state != SUP_STOPPING) {
		sdb_submit(sup->db, DB_STUCK_SWEEP, actor, stuck_done, NULL, 0);
		sdb_submit(sup->db, DB_STORM_SWEEP, actor, NULL, NULL, 0);
		sdb_submit(sup->db, DB_APPROVAL_EXPIRE, actor, expire_done,
		    NULL, 0);
	}
}

/* Arms the periodic sweep (and, at shutdown, runs one last time). */
void
reconcile_sweep_start(struct sup *sup)
{
	struct timeval	tv = clock_tv(sup->cfg.sweep_interval);

	if (sup->sweep_ev == NULL) {
		sup->sweep_ev = event_new(sup->base, -1, EV_PERSIST, sweep_cb,
		    sup);
		if (sup->sweep_ev == NULL)
			fatalx("cannot create the sweep timer");
	}
	if (sup->state == SUP_STOPPING) {
		event_del(sup->sweep_ev);
		sweep_cb(-1, 0, sup);
		return;
	}
	if (event_add(sup->sweep_ev, &tv) == -1)
		fatalx("cannot add the sweep timer");
}
