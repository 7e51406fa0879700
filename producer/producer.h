/*
 * eav-producer: turns inbox events into tasks, fires schedules, ticks
 * watchers (and, with demo on, generates a demo load into the inbox).
 */
#ifndef EAV_PRODUCER_PRODUCER_H
#define EAV_PRODUCER_PRODUCER_H

#include <event2/event.h>
#include <jansson.h>

#include "compat.h"
#include "config.h"
#include "db.h"
#include "killswitch.h"
#include "reconnect.h"

struct evdns_base;
struct http_probe;
struct procrun;
struct watch_tick;
TAILQ_HEAD(watch_ticks, watch_tick);
struct classify_run;
TAILQ_HEAD(classify_runs, classify_run);

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
	struct event		*watch_ev;
	struct event		*chld_ev;
	struct watch_ticks	 ticks;		/* probes running */
	struct evdns_base	*dns;		/* for http probes */
	int			 nprobes;	/* and classifiers */
	struct classify_runs	 classify_runs;
	int			 nclassify;
	struct event		*ctl_ev;
	struct event		*sig_ev[2];
	double			 demo_carry;
	int			 stopping;
};

/*
 * A watcher tick whose probe runs: claimed (leased) by watcher.c, probed
 * by probe.c, recorded and freed by watcher_tick_done.
 */
struct watch_tick {
	TAILQ_ENTRY(watch_tick)	 entry;
	struct producer		*p;
	char			*id;
	char			*name;
	char			*kind;		/* exec or http */
	char			*slot;		/* as eav.watcher_claim said */
	json_t			*config;	/* NULL if unreadable */
	int			 timeout_ms;
	int64_t			 started_ms;
	struct procrun		*run;		/* exec */
	struct http_probe	*http;		/* http */
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

/* watcher.c */
void	watcher_init(struct producer *);
void	watcher_wake(struct producer *);
void	watcher_tick_done(struct watch_tick *, const char *, const char *,
	    const char *);
void	watcher_free(struct producer *);

/* probe.c */
void	probe_start(struct watch_tick *);
void	probe_cancel(struct watch_tick *);

/* probe_http.c */
void	probe_http_start(struct watch_tick *);
void	probe_http_free_all(void);

/* classify.c */
int	classify_enabled(const struct producer *);
void	classify_init(struct producer *);
void	classify_wake(struct producer *);
void	classify_free(struct producer *);

#endif
