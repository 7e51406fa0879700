/*
 * Runs one program to its end on an event loop: argv (no shell), stdin
 * bytes, a time-out and a cap on stdout; the callback gets how it ended
 * and what it wrote.  Used by the worker's exec tool, the producer's
 * watcher probes and (later) its event classifier.  The program is
 * spawned by toolproc.c, so eavd knows its process group before it may
 * exec and kills the group if this process dies (toolproc_init must have
 * been called on the same event base).
 */
#ifndef EAV_COMMON_PROCRUN_H
#define EAV_COMMON_PROCRUN_H

#include <sys/types.h>

#include "spawn.h"

#define PROCRUN_ERR_KEEP	4096	/* bytes of stderr kept */
#define PROCRUN_DRAIN_MS	1000	/* stdout EOF after the exit */

struct event_base;
struct procrun;

/* What to run.  The spec and what it points to are copied. */
struct procrun_spec {
	char *const			*argv;	/* argv[0] an absolute path */
	char *const			*envp;	/* the whole environment */
	const char			*in;	/* stdin bytes, or NULL */
	size_t				 in_len;
	int				 timeout_ms;
	size_t				 max_output;	/* stdout cap, bytes */
	const struct spawn_limits	*limits;	/* or NULL */
	const char			*label;	/* prefixes log lines */
};

/* How the program ended, most telling first. */
enum procrun_end {
	PROCRUN_WITHDRAWN,	/* never exec'd: eavd could not be told */
	PROCRUN_EXEC_FAILED,	/* never exec'd: failure says where, why */
	PROCRUN_OVERSIZE,	/* stdout passed max_output: group killed */
	PROCRUN_TIMED_OUT,	/* ran past timeout_ms: group killed */
	PROCRUN_SIGNALED,	/* killed by signal code */
	PROCRUN_LATE,		/* exited, but stdout was still open
				   PROCRUN_DRAIN_MS later (a process it
				   started left its group) */
	PROCRUN_EXITED		/* exited with code */
};

/*
 * Valid during the callback only.  out is NUL-terminated (out_len bytes
 * before the NUL; at most max_output, except PROCRUN_OVERSIZE).
 */
struct procrun_result {
	enum procrun_end	 end;
	int			 code;	/* exit code, or signal */
	struct spawn_failure	 failure;	/* PROCRUN_EXEC_FAILED */
	const char		*out;
	size_t			 out_len;
	const char		*err;	/* the first PROCRUN_ERR_KEEP bytes */
	size_t			 err_len;
	size_t			 err_dropped;	/* stderr bytes not kept */
	pid_t			 pid;
	long long		 elapsed_ms;
};

typedef void	(*procrun_cb)(const struct procrun_result *, void *);

struct procrun	*procrun_start(struct event_base *,
		    const struct procrun_spec *, procrun_cb, void *);
pid_t		 procrun_pid(const struct procrun *);
int		 procrun_ran(const struct procrun *);
void		 procrun_kill(struct procrun *);
const char	*procrun_end_name(enum procrun_end);

#endif
