/*
 * systemd notifications through libsystemd's sd_notify: READY=1 once
 * migrations ran and the first children are up, STATUS= on changes,
 * RELOADING=1/READY=1 around a reload, STOPPING=1, and WATCHDOG=1 from a
 * loop timer, so a stuck loop stops the pings.  Without NOTIFY_SOCKET
 * these are no-ops.
 */
#include <stdio.h>
#include <time.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "clock.h"
#include "log.h"
#include "supervisor.h"

static void	watchdog_cb(evutil_socket_t, short, void *);

static void
watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	(void)sd_notify(0, "WATCHDOG=1");
}

/* Starts watchdog pings at half the interval systemd asks for. */
void
notify_init(struct sup *sup)
{
	static struct event	*ev;
	uint64_t		 usec;
	struct timeval		 tv;

	if (sd_watchdog_enabled(0, &usec) <= 0)
		return;
	tv = clock_tv((int64_t)(usec / 2000));
	ev = event_new(sup->base, -1, EV_PERSIST, watchdog_cb, NULL);
	if (ev == NULL || event_add(ev, &tv) == -1)
		fatalx("cannot add the watchdog timer");
	log_info("systemd watchdog every %llu ms",
	    (unsigned long long)(usec / 2000));
}

/* Reports a one-line status: children up, reconciled steps. */
void
notify_status(struct sup *sup)
{
	int	i, up = 0, want = 0;

	for (i = 0; i < MAX_CHILDREN; i++) {
		if (!sup->children[i].in_use)
			continue;
		want++;
		if (sup->children[i].state == CHILD_UP)
			up++;
	}
	(void)sd_notifyf(0, "STATUS=%s: %d/%d children up, incarnation %lld, "
	    "%lld step(s) reconciled%s", sup->state == SUP_STOPPING ?
	    "stopping" : "running", up, want, sup->incarnation,
	    sup->reconciled, sup->kill.stopped_all ?
	    ", KILL SWITCH ENGAGED" : "");
}

/* READY=1 (again after a reload). */
void
notify_ready(struct sup *sup)
{
	notify_status(sup);
	(void)sd_notify(0, "READY=1");
}

/* STOPPING=1. */
void
notify_stopping(void)
{
	(void)sd_notify(0, "STOPPING=1");
}

/* RELOADING=1 with the monotonic time systemd 253+ wants. */
void
notify_reloading(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	(void)sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
	    (unsigned long long)ts.tv_nsec / 1000ULL);
}
