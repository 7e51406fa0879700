/*
 * What every eav process that runs programs shares: the worker's tools
 * (tool_exec.c runs one program per call, tool_mcp.c keeps one MCP
 * server per tool) and the producer's probes (procrun.c).  They read
 * argv, env, max_output_bytes and rlimits from a config, give the
 * program only its allowlisted environment, spawn it through the one
 * recipe that tells eavd its process group before it may exec, and learn
 * of its end from the one SIGCHLD handler, which finds it by pid.
 */
#ifndef EAV_COMMON_TOOLPROC_H
#define EAV_COMMON_TOOLPROC_H

#include "compat.h"

#include <sys/types.h>

#include <jansson.h>

#include "spawn.h"

#define TOOL_OUTPUT_MAX		1048576
#define TOOL_OUTPUT_DEFAULT	65536
#define TOOL_MAX_ENV		64	/* allowlisted names */

/* The parent's ends of a program's pipes, in toolproc.fds. */
enum { TP_IN, TP_OUT, TP_ERR, TP_FAIL, TP_NFDS };

struct event;
struct event_base;

/* A tool's config, as eav.exec_config_check or mcp_config_check left it. */
struct tool_conf {
	char			**argv;
	json_t			 *env;
	size_t			  max_output;
	struct spawn_limits	  limits;
};

/*
 * A program this process started.  From toolproc_spawn until it is reaped
 * it is on the list the SIGCHLD handler searches; the handler kills what
 * is left in its group, sends "tool- <pgid>", reaps it, sets reaped and
 * status, and calls exited (which may free it).
 */
struct toolproc {
	TAILQ_ENTRY(toolproc)	 entry;
	pid_t			 pid;		/* and process group */
	int			 announced;	/* eavd knows the group */
	int			 withdrawn;	/* never allowed to exec */
	int			 reaped;
	int			 status;
	int			 fds[TP_NFDS];	/* non-blocking; -1: closed */
	void			(*exited)(struct toolproc *);
	void			*arg;
};

struct event *toolproc_init(struct event_base *, int);
int	 toolproc_spawn(struct toolproc *, const struct tool_conf *,
	    char *const []);
void	 toolproc_kill(struct toolproc *, int);
int	 tool_conf_parse(json_t *, struct tool_conf *, char *, size_t);
void	 tool_conf_free(struct tool_conf *);
char	**tool_env(json_t *, size_t, const char *, size_t *);
void	 tool_strv_free(char **);
ssize_t	 tool_read(int, void *, size_t);
char	*tool_clean(const char *, size_t);
void	 tool_utf8_trim(char *);

#endif
