/*
 * eavctl: the operator's command line.  Every command calls the same SQL
 * functions as psql users do, with the operator as the audited actor.
 * Exit codes: 0 done, 2 bad usage or input refused by eav (one line on
 * stderr), 3 eavctl check found a violated invariant, 1 anything else
 * (e.g. the database cannot be reached).
 */
#ifndef EAV_CTL_CTL_H
#define EAV_CTL_CTL_H

#include <libpq-fe.h>

#include "db.h"

struct ctl {
	struct db	 db;
	const char	*dsn;
	char		 actor[160];
};

struct ctl_cmd {
	const char	*name;
	int		(*fn)(struct ctl *, int, char **);
	const char	*usage;
};

/* main.c */
int	ctl_fail(struct ctl *, enum db_status);
int	ctl_usage(const char *);
int	ctl_connect(struct ctl *);
int	ctl_call(struct ctl *, enum db_stmt, const char *const *, PGresult **);

/* cmd_task.c */
int	cmd_enqueue(struct ctl *, int, char **);
int	cmd_tasks(struct ctl *, int, char **);
int	cmd_show(struct ctl *, int, char **);
int	cmd_retry(struct ctl *, int, char **);
int	cmd_cancel(struct ctl *, int, char **);
int	cmd_resolve(struct ctl *, int, char **);
int	cmd_event(struct ctl *, int, char **);

/* cmd_status.c */
int	cmd_status(struct ctl *, int, char **);
int	cmd_migrate(struct ctl *, int, char **);
int	cmd_alarm(struct ctl *, int, char **);
int	cmd_alarms(struct ctl *, int, char **);

/* cmd_tools.c */
int	cmd_tools(struct ctl *, int, char **);

/* cmd_approval.c */
int	cmd_approvals(struct ctl *, int, char **);

/* cmd_budget.c */
int	cmd_budget(struct ctl *, int, char **);

/* cmd_redaction.c */
int	cmd_redaction(struct ctl *, int, char **);

/* cmd_kill.c */
int	cmd_kill(struct ctl *, int, char **);

/* cmd_owner.c */
int	cmd_owner(struct ctl *, int, char **);

/* cmd_queue.c */
int	cmd_queue(struct ctl *, int, char **);

/* cmd_lab.c */
int	cmd_inject(struct ctl *, int, char **);
int	cmd_check(struct ctl *, int, char **);

/* cmd_audit.c */
struct audit_verdict {
	long long	seq, id;		/* the last link verified */
	long long	bad_seq, bad_id;	/* the first bad one */
	char		why[256];		/* empty unless broken */
};
int	cmd_audit(struct ctl *, int, char **);
int	audit_chain_verify(struct ctl *, struct audit_verdict *);

/* cmd_diagnose.c */
int	cmd_diagnose(struct ctl *, int, char **);

/* cmd_schedule.c */
int	cmd_schedules(struct ctl *, int, char **);

/* cmd_watcher.c */
int	cmd_watchers(struct ctl *, int, char **);
/* cmd_events.c */
int	cmd_events(struct ctl *, int, char **);
int	cmd_rules(struct ctl *, int, char **);
int	cmd_event_types(struct ctl *, int, char **);

/* cmd_rehearse.c */
int	cmd_rehearse(struct ctl *, int, char **);

/* table.c */
void	table_print(PGresult *, const char *const *, int);

#endif
