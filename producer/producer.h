/*
 * eav-producer: turns inbox events into tasks, fires schedules (and, with
 * demo on, generates a demo load into the inbox).
 */
#ifndef EAV_PRODUCER_PRODUCER_H
#define EAV_PRODUCER_PRODUCER_H

#include <event2/event.h>

#include "config.h"
#include "db.h"
#include "killswitch.h"
#include "reconnect.h"

struct producer {
	struct eav_config	 cfg;
	int			 slot;
	char			 node[64];
	long long		 incarnation;
	char			 actor[160];
	struct event_base	*base;
	struct db		 db;
	struct reconnect	 reconnect;
	struct kill_view	 kill;
	struct event		*db_ev;
	struct event		*cycle_ev;
	struct event		*poll_ev;
	struct event		*demo_ev;
	struct event		*sched_ev;
	struct event		*ctl_ev;
	struct event		*sig_ev[2];
	double			 demo_carry;
	int			 stopping;
};

/* ingest.c */
void	ingest_init(struct producer *);
void	ingest_wake(struct producer *);
int	ingest_connect(struct producer *);
void	ingest_lost(struct producer *);
void	demo_init(struct producer *);

/* schedule.c */
void	schedule_init(struct producer *);
void	schedule_wake(struct producer *);

#endif
