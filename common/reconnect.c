/*
 * See reconnect.h.  The first retry comes after about 100 ms, each next
 * one after twice as long up to max_ms, each scaled by a random 50-100 %
 * so that the workers of a host do not reconnect in lock-step after a
 * PostgreSQL restart.
 */
#include <stdlib.h>

#include <event2/event.h>

#include "clock.h"
#include "exitcode.h"
#include "log.h"
#include "reconnect.h"

#define RECONNECT_FIRST_MS 100

static void	reconnect_cb(evutil_socket_t, short, void *);
static void	reconnect_arm(struct reconnect *);

static void
reconnect_arm(struct reconnect *r)
{
	struct timeval	tv = clock_tv(clock_jitter(r->backoff_ms));

	if (r->timer == NULL &&
	    (r->timer = evtimer_new(r->base, reconnect_cb, r)) == NULL)
		fatalx("cannot create the reconnect timer");
	if (evtimer_add(r->timer, &tv) == -1)
		fatalx("cannot add the reconnect timer");
}

static void
reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct reconnect	*r = arg;
	int64_t			 down = clock_ms() - r->lost_since;

	(void)fd;
	(void)what;
	if (r->try_connect(r->arg) == 0) {
		r->lost_since = 0;
		r->on_up(r->arg, down);
		return;
	}
	if (down > r->exit_after_ms) {
		log_error("no database connection for %lld ms; exiting",
		    (long long)down);
		exit(EAV_EXIT_DB_LOST);
	}
	r->backoff_ms *= 2;
	if (r->backoff_ms > r->max_ms)
		r->backoff_ms = r->max_ms;
	reconnect_arm(r);
}

/* Starts (or keeps) reconnecting after a loss. */
void
reconnect_lost(struct reconnect *r)
{
	if (r->lost_since == 0) {
		r->lost_since = clock_ms();
		r->backoff_ms = RECONNECT_FIRST_MS;
	}
	reconnect_arm(r);
}

/* Frees the timer. */
void
reconnect_free(struct reconnect *r)
{
	if (r->timer != NULL)
		event_free(r->timer);
	r->timer = NULL;
}
