/*
 * eav-worker: claims steps in batches, runs their tools on one libevent
 * loop, and completes them in batches, always presenting the claim epoch.
 */
#ifndef EAV_WORKER_WORKER_H
#define EAV_WORKER_WORKER_H

#include "compat.h"

#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "db.h"
#include "killswitch.h"
#include "reconnect.h"

enum step_outcome {
	OUT_NONE,	/* tool still running */
	OUT_SUCCEEDED,
	OUT_FAILED,	/* permanent */
	OUT_RETRY,	/* retryable failure */
	OUT_RELEASE,	/* never had an effect: give it back */
	OUT_LEDGER,	/* in-database tool: effect and completion at flush */
	OUT_UNKNOWN,	/* the call may or may not have taken effect */
	OUT_DEFERRED,	/* not called, or rate limited: later, attempt kept */
	OUT_REPLAY,	/* gate: the key's recorded outcome applies */
	OUT_COLLISION,	/* gate: the key belongs to another input */
	OUT_CONFLICT	/* gate: its resource belongs to another queue */
};

struct worker;
struct bufferevent;

struct step {
	TAILQ_ENTRY(step)	 entry;
	struct worker		*w;
	long long		 id;
	long long		 task_id;
	long long		 epoch;
	int			 attempt;
	int			 timeout_ms;
	char			*tool;
	char			*builtin;	/* "" unless kind is builtin */
	char			*kind;
	char			*config;	/* JSON; NULL for builtin */
	char			*idem_key;
	char			*trace_id;
	json_t			*input;		/* NULL: not representable */
	char			*input_error;
	struct event		*timer;
	enum step_outcome	 outcome;
	const char		*detected_by;	/* OUT_UNKNOWN: how */
	json_t			*result;
	char			*error;
	int			 ran;		/* the tool was called */
	int			 gated;		/* claim said: do not call */
	int			 tool_error;	/* counts against its health */
	int			 rate_limited;	/* OUT_DEFERRED by the tool */
	long long		 retry_after_ms; /* OUT_DEFERRED; -1: none */
};

TAILQ_HEAD(step_list, step);

struct worker {
	struct eav_config	 cfg;
	int			 slot;
	char			 node[64];
	long long		 incarnation;
	char			 actor[160];
	char			*queues;	/* text[] literal or NULL */

	struct event_base	*base;
	struct db		 db;
	struct event		*db_ev;
	struct event		*cycle_ev;
	struct event		*poll_ev;
	struct event		*ctl_ev;
	struct event		*sig_ev[3];
	struct event		*chld_ev;

	struct step_list	 running;
	struct step_list	 done;
	int			 nrunning;
	int			 ndone;

	struct reconnect	 reconnect;
	struct kill_view	 kill;
	int			 db_errors;	/* failed calls in a row */
	int			 stopping;
	int			 old_backend;
	int			 inject_drop;	/* worker.before_effect=drop */
};

/* conn.c */
void	conn_init(struct worker *);
int	conn_open(struct worker *);
void	conn_lost(struct worker *);
void	conn_reload(struct worker *);

/* cycle.c */
void	cycle_init(struct worker *);
int	cycle_db_error(struct worker *, enum db_status, const char *);
void	cycle_run(struct worker *);
void	cycle_wake(struct worker *);
int	cycle_flush(struct worker *);
void	step_free(struct step *);
void	step_finish(struct step *, enum step_outcome, json_t *,
	    const char *);

/* tools.c */
void	tool_start(struct worker *, struct step *);
int	tool_cancel(struct step *);

/* tool_exec.c */
void	exec_start(struct worker *, struct step *);
int	exec_running(void);

/* tool_http.c */
void	http_start(struct worker *, struct step *);
int	http_running(void);

/* tool_mcp.c */
void	mcp_start(struct worker *, struct step *);
int	mcp_cancel(struct step *);
void	mcp_shutdown(struct worker *);
int	mcp_running(void);
int	mcp_servers(void);

/* main.c */
void	worker_stop(struct worker *, const char *);
void	worker_maybe_exit(struct worker *);

#endif
