/*
 * eavd: the supervisor.  One libevent loop, a fixed table of child slots,
 * and an asynchronous database channel; it never sleeps and never blocks
 * on the database once the children are started.
 */
#ifndef EAV_SUPERVISOR_SUPERVISOR_H
#define EAV_SUPERVISOR_SUPERVISOR_H

#include <sys/types.h>

#include <limits.h>
#include <stdint.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "compat.h"
#include "config.h"
#include "db.h"
#include "killswitch.h"

#define MAX_WORKERS	64
#define MAX_CHILDREN	(MAX_WORKERS + 1)
#define PRODUCER_INDEX	MAX_WORKERS
#define DEATH_RING	128

enum child_kind { KIND_WORKER, KIND_PRODUCER, KIND_NKINDS };

enum child_state {
	CHILD_DOWN,	/* no process, nothing scheduled */
	CHILD_STARTING,	/* spawned, not yet ready */
	CHILD_UP,	/* reported ready */
	CHILD_STOPPING,	/* asked to stop (SIGTERM sent) */
	CHILD_BACKOFF,	/* dead; restart timer armed */
	CHILD_FAILED	/* not restarted until reload */
};

enum sup_state { SUP_STARTING, SUP_RUNNING, SUP_STOPPING };

enum exit_class {
	EXIT_CLEAN,	/* exit 0 */
	EXIT_DB_LOST,	/* database gone: not a crash */
	EXIT_CONFIG,	/* bad configuration: wait for reload */
	EXIT_CRASH	/* any other code, or a signal */
};

struct sup;

struct child {
	struct sup		*sup;
	enum child_kind		 kind;
	int			 slot;
	enum child_state	 state;
	int			 in_use;	/* slot exists in the config */
	pid_t			 pid;
	int			 ctl_fd;
	struct event		*ctl_ev;
	struct event		*timer;		/* restart or start deadline */
	char			 line[128];
	size_t			 linelen;
	int64_t			 started_ms;
	int			 restarts;
	int			 backoff_ms;
	int			 replace;	/* rolling reload pending */
	pid_t			 dead_pid;
	int			 dead_status;
	int			 busy;		/* reconcile in flight */
	pid_t			*tools;		/* process groups of its exec */
	int			 ntools;	/* tool calls ("tool+" lines) */
	int			 maxtools;
};

struct kind_state {
	int64_t			 deaths[DEATH_RING];
	int			 ndeaths;
	int			 failed;
};

struct sdb;

struct sup {
	struct eav_config	 cfg;
	const char		*cfgpath;
	char			 exe_dir[PATH_MAX];
	long long		 incarnation;
	char			 actor[128];
	struct kill_view	 kill;
	enum sup_state		 state;
	struct event_base	*base;
	struct child		 children[MAX_CHILDREN];
	struct kind_state	 kinds[KIND_NKINDS];
	struct sdb		*db;
	struct event		*sig_ev[5];
	struct event		*sweep_ev;
	struct event		*seal_ev;	/* audit sealer (seal.c) */
	struct event		*grace_ev;
	struct event		*ready_ev;
	struct event		*exit_ev;
	struct child		*replacing;
	int			 reloading;
	int			 ready_sent;
	int			 sweeping;
	int			 final_sent;	/* last sweep and stop sent */
	long long		 reconciled;
	long long		 sealed;	/* audit rows chained */
};

typedef void (*sdb_cb)(struct sup *, void *, PGresult *, enum db_status);
/* Rewrites a queued request's parameters just before it is sent. */
typedef void (*sdb_refresh)(struct sup *, char **);

/* child.c */
const char *child_kind_name(enum child_kind);
const char *child_state_name(enum child_state);
void	child_init_table(struct sup *);
int	child_spawn(struct child *);
void	child_reap_all(struct sup *);
void	child_set_state(struct child *, enum child_state, const char *);
void	child_stop(struct child *);
void	child_kill(struct child *);
int	child_live_pids(struct sup *, char *, size_t);
int	child_count_live(struct sup *);
const char *child_name(const struct child *, char *, size_t);

/* policy.c */
void	policy_child_exited(struct child *);
void	policy_after_reconcile(struct child *);
void	policy_reset_kinds(struct sup *);
void	policy_describe_exit(int, char *, size_t);

/* reconcile.c */
void	reconcile_child(struct child *);
void	reconcile_sweep_start(struct sup *);

/* seal.c */
void	seal_start(struct sup *);

/* sdb.c */
struct sdb *sdb_new(struct sup *, struct db *);
void	sdb_free(struct sdb *);
void	sdb_submit(struct sdb *, enum db_stmt, const char *const *, sdb_cb,
	    void *, int);
void	sdb_set_refresh(struct sdb *, sdb_refresh);
int	sdb_idle(const struct sdb *);
void	sdb_process_event(struct sup *, struct child *, const char *,
	    const char *);

/* notify.c */
void	notify_init(struct sup *);
void	notify_ready(struct sup *);
void	notify_status(struct sup *);
void	notify_stopping(void);
void	notify_reloading(void);

/* main.c */
void	sup_check_ready(struct sup *);
void	sup_check_stopped(struct sup *);
void	sup_stop(struct sup *, int);
void	sup_reload_next(struct sup *);

#endif
