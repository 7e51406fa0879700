/*
 * The audit sealer: every audit.seal_interval eavd asks eav.audit_seal to
 * chain the audit rows committed since the last round
 * (sql/0012_audit_chain.sql), through the database channel like every
 * other request, so it never blocks the loop.  A full batch is followed
 * at once by the next, so a burst is sealed at the database's pace, not
 * the timer's.  With several eavd on one database the function lets one
 * of them seal at a time (advisory lock); the others get 0.
 */
#include <stdlib.h>

#include <event2/event.h>

#include "clock.h"
#include "log.h"
#include "supervisor.h"

/*
 * Rows per call.  One call holds the channel for its duration, ahead of
 * any reconciliation queued behind it: 2000 rows take 20-40 ms.
 */
#define SEAL_BATCH	2000
#define SEAL_BATCH_STR	"2000"

static void	seal_arm(struct sup *, int);
static void	seal_cb(evutil_socket_t, short, void *);
static void	seal_done(struct sup *, void *, PGresult *, enum db_status);

/* Starts the seal timer: the next round in ms milliseconds. */
static void
seal_arm(struct sup *sup, int ms)
{
	struct timeval	tv = clock_tv(ms);

	if (sup->state == SUP_STOPPING)
		return;
	if (evtimer_add(sup->seal_ev, &tv) == -1)
		fatalx("cannot add the audit seal timer");
}

static void
seal_done(struct sup *sup, void *arg, PGresult *res, enum db_status st)
{
	long long	n = 0;

	(void)arg;
	if (st == DB_OK) {
		n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		sup->sealed += n;
		if (n > 0)
			log_debug("sealed %lld audit row(s)", n);
	} else
		log_warnx("audit sealing failed (%s); trying again in %d ms",
		    db_status_name(st), sup->cfg.audit_seal_interval);
	seal_arm(sup, n >= SEAL_BATCH ? 0 : sup->cfg.audit_seal_interval);
}

/* One round; the next is armed only when it is done, so never two. */
static void
seal_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sup	*sup = arg;
	const char	*params[1] = { SEAL_BATCH_STR };

	(void)fd;
	(void)what;
	if (sup->state == SUP_STOPPING)
		return;
	sdb_submit(sup->db, DB_AUDIT_SEAL, params, seal_done, NULL, 0);
}

/* Arms the first round (the interval is re-read at every round). */
void
seal_start(struct sup *sup)
{
	sup->seal_ev = evtimer_new(sup->base, seal_cb, sup);
	if (sup->seal_ev == NULL)
		fatalx("cannot create the audit seal timer");
	seal_arm(sup, sup->cfg.audit_seal_interval);
}
