/*
 * The exec tool: runs the program of a tool's config (argv, no shell)
 * with the step's input JSON on stdin, and reads its result JSON from
 * stdout, all on the worker's event loop, so many calls run side by side.
 *
 * Invariants:
 *  - The program sees only descriptors 0, 1 and 2 (every other one is
 *    closed in the child before exec) and only the environment it is
 *    given: the config's allowlist, read from our environment, plus
 *    EAV_IDEMPOTENCY_KEY, EAV_TASK_ID, EAV_STEP_ID, EAV_ATTEMPT and
 *    EAV_TRACE_ID.  Never EAV_DSN or a database password: the worker's
 *    own credentials come from eavd over fd 3, not the environment, and
 *    the allowlist refuses those names (in SQL, and again here).
 *  - The program runs in a process group of its own, and the group is
 *    known to eavd (a "tool+ <pgid>" line on fd 3) before the program
 *    may exec (it waits on a "go" pipe).  If this worker dies, eavd
 *    SIGKILLs every group it was told of before it reconciles the
 *    worker's steps, so no effect of an interrupted call can land after
 *    its retry began; PR_SET_PDEATHSIG(SIGKILL) kills the program itself
 *    even if eavd is gone too.  What a SIGKILL of eavd and its worker at
 *    once cannot reach is a descendant that left the program's group.
 *  - When the program ends, whatever it left in its group is SIGKILLed
 *    while its zombie still pins the group id (so the id cannot belong to
 *    anyone else yet); only then is "tool- <pgid>" sent and the zombie
 *    reaped.
 *  - Outcomes: exit 0 with JSON on stdout succeeded; exit 75 retryable;
 *    any other exit failed; output over max_output_bytes, or stdout that
 *    is not JSON (or not UTF-8), failed; killed by a signal, or by us at
 *    the tool's timeout_ms: unknown (tool_signal, tool_timeout), which
 *    SQL turns into a retry with the same key or a held step, exactly as
 *    for a dead worker's step.  Nothing partial is ever kept.
 */
#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "clock.h"
#include "log.h"
#include "spawn.h"
#include "worker.h"
#include "xalloc.h"

#define EXEC_STDERR_KEEP	4096	/* bytes of stderr logged */
#define EXEC_STDERR_IN_ERROR	256	/* of which in the step's error */
#define EXEC_DRAIN_MS		1000	/* stdout EOF after the exit */
#define EXEC_MAX_ENV		64	/* allowlisted names */
#define EXEC_EX_TEMPFAIL	75
#define EXEC_OUTPUT_MAX		1048576
#define EXEC_OUTPUT_DEFAULT	65536

enum exec_kill { KILL_NONE, KILL_TIMEOUT, KILL_OVERSIZE };
enum { FD_IN, FD_OUT, FD_ERR, FD_FAIL, NFDS };

/* A tool's config, as eav.exec_config_check left it. */
struct exec_conf {
	char			**argv;
	json_t			 *env;
	size_t			  max_output;
	struct spawn_limits	  limits;
};

struct exec_call {
	TAILQ_ENTRY(exec_call)	 entry;
	struct worker		*w;
	struct step		*s;
	char			*program;
	pid_t			 pid;		/* and process group; 0: none */
	int			 announced;	/* eavd knows the group */
	int			 withdrawn;	/* never allowed to exec */
	int			 reaped;
	int			 status;
	enum exec_kill		 killed;
	int			 late;		/* stdout open at the drain */
	int			 fds[NFDS];
	struct event		*ev[NFDS];
	struct event		*timer;
	char			*in;
	size_t			 in_len, in_off;
	char			*out;
	size_t			 out_len, out_cap, max_output;
	char			 err[EXEC_STDERR_KEEP];
	size_t			 err_len, err_dropped;
	struct spawn_failure	 failure;
	size_t			 failure_len;
};

TAILQ_HEAD(exec_calls, exec_call);

/* File-wide: the atexit handler must find the running calls. */
static struct exec_calls calls = TAILQ_HEAD_INITIALIZER(calls);
static int		 ncalls;

static int	exec_conf_parse(const char *, struct exec_conf *, char *,
		    size_t);
static int	exec_conf_argv(json_t *, struct exec_conf *);
static void	exec_conf_limits(json_t *, struct spawn_limits *);
static void	exec_conf_free(struct exec_conf *);
static char   **exec_env(const struct step *, json_t *);
static int	exec_env_refused(const char *);
static void	exec_strv_free(char **);
static int	exec_pipes(int [5][2]);
static void	exec_pipes_close(int [5][2]);
static int	exec_spawn(struct exec_call *, const struct exec_conf *);
static void	exec_release(struct exec_call *, int);
static void	exec_watch(struct exec_call *);
static void	exec_io_cb(evutil_socket_t, short, void *);
static void	exec_write_in(struct exec_call *);
static ssize_t	exec_read(int, void *, size_t);
static void	exec_read_out(struct exec_call *);
static void	exec_read_err(struct exec_call *);
static void	exec_read_fail(struct exec_call *);
static void	exec_close(struct exec_call *, int);
static void	exec_timer_cb(evutil_socket_t, short, void *);
static void	exec_kill(struct exec_call *, enum exec_kill);
static void	exec_sigchld_cb(evutil_socket_t, short, void *);
static struct exec_call *exec_by_pid(pid_t);
static void	exec_exited(struct exec_call *, int);
static void	exec_check_done(struct exec_call *);
static void	exec_finish(struct exec_call *);
static enum step_outcome exec_outcome(struct exec_call *, json_t **,
		    char *, size_t);
static enum step_outcome exec_exit_code(struct exec_call *, json_t **,
		    char *, size_t);
static enum step_outcome exec_parse(struct exec_call *, json_t **, char *,
		    size_t);
static void	exec_log_stderr(const struct exec_call *);
static char    *exec_clean(const char *, size_t);
static size_t	utf8_len(const unsigned char *, size_t);
static void	utf8_trim(char *);
static struct exec_call *exec_call_new(struct worker *, struct step *,
		    const struct exec_conf *);
static void	exec_call_free(struct exec_call *);
static void	exec_atexit(void);

/* Kills the groups of calls still running when the worker exits. */
static void
exec_atexit(void)
{
	struct exec_call	*c;

	TAILQ_FOREACH(c, &calls, entry)
		if (c->pid > 0 && !c->reaped)
			(void)killpg(c->pid, SIGKILL);
}

/* Watches SIGCHLD (the programs are the worker's only children). */
void
exec_init(struct worker *w)
{
	w->chld_ev = evsignal_new(w->base, SIGCHLD, exec_sigchld_cb, w);
	if (w->chld_ev == NULL || evsignal_add(w->chld_ev, NULL) == -1)
		fatalx("cannot add the SIGCHLD event");
	if (atexit(exec_atexit) != 0)
		fatalx("cannot register the exec exit handler");
}

/* Calls that have not finished. */
int
exec_running(void)
{
	return ncalls;
}

/* Reads argv from a config; -1 if it is unusable. */
static int
exec_conf_argv(json_t *argv, struct exec_conf *c)
{
	json_t	*v;
	size_t	 i;

	if (!json_is_array(argv) || json_array_size(argv) == 0)
		return -1;
	c->argv = xcalloc(json_array_size(argv) + 1, sizeof(char *));
	json_array_foreach(argv, i, v) {
		if (!json_is_string(v))
			return -1;
		c->argv[i] = xstrdup(json_string_value(v));
	}
	return c->argv[0][0] == '/' ? 0 : -1;
}

/* Reads the optional rlimits of a config; 0 leaves a limit alone. */
static void
exec_conf_limits(json_t *rl, struct spawn_limits *l)
{
	json_int_t	v;

	memset(l, 0, sizeof(*l));
	if ((v = json_integer_value(json_object_get(rl, "cpu_s"))) > 0)
		l->cpu_s = (rlim_t)v;
	if ((v = json_integer_value(json_object_get(rl, "as_mb"))) > 0)
		l->as_bytes = (rlim_t)v * 1048576;
	if ((v = json_integer_value(json_object_get(rl, "nofile"))) > 0)
		l->nofile = (rlim_t)v;
}

/*
 * Reads a tool's config (JSON text from the claim, checked by SQL when it
 * was registered; checked again, since a row can be changed by hand).
 * Returns 0, or -1 with err set.
 */
static int
exec_conf_parse(const char *text, struct exec_conf *c, char *err,
    size_t len)
{
	json_t		*cfg;
	json_error_t	 jerr;
	json_int_t	 max;

	memset(c, 0, sizeof(*c));
	if (text == NULL || (cfg = json_loads(text, 0, &jerr)) == NULL) {
		snprintf(err, len, "the tool's config cannot be read");
		return -1;
	}
	if (exec_conf_argv(json_object_get(cfg, "argv"), c) == -1) {
		snprintf(err, len, "the tool's config has no usable argv");
		json_decref(cfg);
		exec_conf_free(c);
		return -1;
	}
	c->env = json_incref(json_object_get(cfg, "env"));
	max = json_integer_value(json_object_get(cfg, "max_output_bytes"));
	c->max_output = max > 0 && max <= EXEC_OUTPUT_MAX ? (size_t)max :
	    EXEC_OUTPUT_DEFAULT;
	exec_conf_limits(json_object_get(cfg, "rlimits"), &c->limits);
	json_decref(cfg);
	return 0;
}

/* Frees a NULL-terminated array of strings. */
static void
exec_strv_free(char **v)
{
	size_t	i;

	if (v == NULL)
		return;
	for (i = 0; v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

/* Frees what exec_conf_parse allocated. */
static void
exec_conf_free(struct exec_conf *c)
{
	exec_strv_free(c->argv);
	json_decref(c->env);
	memset(c, 0, sizeof(*c));
}

/* eav's own variables and database passwords never reach a program. */
static int
exec_env_refused(const char *name)
{
	return strncasecmp(name, "EAV_", 4) == 0 ||
	    strcasecmp(name, "PGPASSWORD") == 0 ||
	    strcasecmp(name, "PGPASSFILE") == 0;
}

/*
 * The program's whole environment: the allowlisted names that are set
 * in ours, then the call's identity.  The caller frees it.
 */
static char **
exec_env(const struct step *s, json_t *names)
{
	char		**envp = xcalloc(EXEC_MAX_ENV + 6, sizeof(char *));
	const char	 *name, *val;
	json_t		 *v;
	size_t		  i, n = 0;

	json_array_foreach(names, i, v) {
		if ((name = json_string_value(v)) == NULL || n >= EXEC_MAX_ENV)
			continue;
		if (exec_env_refused(name)) {
			log_warnx("step=%lld tool=%s: not passing %s to the "
			    "program (never passed to a tool)", s->id, s->tool,
			    name);
			continue;
		}
		if ((val = getenv(name)) != NULL)
			envp[n++] = xasprintf("%s=%s", name, val);
	}
	envp[n++] = xasprintf("EAV_IDEMPOTENCY_KEY=%s", s->idem_key);
	envp[n++] = xasprintf("EAV_TASK_ID=%lld", s->task_id);
	envp[n++] = xasprintf("EAV_STEP_ID=%lld", s->id);
	envp[n++] = xasprintf("EAV_ATTEMPT=%d", s->attempt);
	envp[n] = xasprintf("EAV_TRACE_ID=%s", s->trace_id);
	return envp;
}

/* stdin, stdout, stderr, the failure pipe and the go pipe. */
static int
exec_pipes(int p[5][2])
{
	int	i, saved;

	for (i = 0; i < 5; i++)
		p[i][0] = p[i][1] = -1;
	for (i = 0; i < 5; i++) {
		if (pipe2(p[i], O_CLOEXEC) == -1) {
			saved = errno;
			exec_pipes_close(p);
			errno = saved;
			return -1;
		}
	}
	return 0;
}

/* Closes the pipe ends exec_pipes made that are still open. */
static void
exec_pipes_close(int p[5][2])
{
	int	i, j;

	for (i = 0; i < 5; i++)
		for (j = 0; j < 2; j++)
			if (p[i][j] != -1) {
				close(p[i][j]);
				p[i][j] = -1;
			}
}

/*
 * Tells eavd the new process group, then lets the program exec; if eavd
 * cannot be told, the program exits before exec (it reads EOF).
 */
static void
exec_release(struct exec_call *c, int go)
{
	const char	byte = SPAWN_GO;

	if (worker_ctl_send("tool+", c->pid) == 0) {
		c->announced = 1;
		if (write(go, &byte, 1) != 1)
			c->withdrawn = 1;
	} else
		c->withdrawn = 1;
	close(go);
}

/*
 * Forks the program (see the header for what it gets) and releases it.
 * Returns 0, or -1 with errno set if it could not be forked.
 */
static int
exec_spawn(struct exec_call *c, const struct exec_conf *conf)
{
	int			 p[5][2], i, saved;
	char			**envp;
	struct spawn_io		 io;
	struct spawn_opts	 o;

	if (exec_pipes(p) == -1)
		return -1;
	io.in = p[0][0];
	io.out = p[1][1];
	io.err = p[2][1];
	memset(&o, 0, sizeof(o));
	o.io = &io;
	o.ctl_fd = -1;
	o.pdeathsig = SIGKILL;
	o.envp = envp = exec_env(c->s, conf->env);
	o.new_pgrp = 1;
	o.go_fd = p[4][0];
	o.err_fd = p[3][1];
	o.limits = &conf->limits;
	c->pid = spawn_start(conf->argv[0], conf->argv, &o);
	saved = errno;
	exec_strv_free(envp);
	if (c->pid == -1) {
		c->pid = 0;
		exec_pipes_close(p);
		errno = saved;
		return -1;
	}
	c->fds[FD_IN] = p[0][1];
	c->fds[FD_OUT] = p[1][0];
	c->fds[FD_ERR] = p[2][0];
	c->fds[FD_FAIL] = p[3][0];
	p[0][1] = p[1][0] = p[2][0] = p[3][0] = -1;
	for (i = 0; i < NFDS; i++)
		if (fcntl(c->fds[i], F_SETFL, O_NONBLOCK) == -1)
			fatal("fcntl");
	exec_release(c, p[4][1]);
	p[4][1] = -1;
	exec_pipes_close(p);
	return 0;
}

/* Watches the pipes, and the deadline of the call. */
static void
exec_watch(struct exec_call *c)
{
	struct event_base	*base = c->w->base;
	struct timeval		 tv = clock_tv(c->s->timeout_ms);
	int			 i;

	for (i = 0; i < NFDS; i++) {
		c->ev[i] = event_new(base, c->fds[i], (i == FD_IN ? EV_WRITE :
		    EV_READ) | EV_PERSIST, exec_io_cb, c);
		if (c->ev[i] == NULL || event_add(c->ev[i], NULL) == -1)
			fatalx("cannot watch an exec pipe");
	}
	c->timer = evtimer_new(base, exec_timer_cb, c);
	if (c->timer == NULL || evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot add an exec timer");
}

/* Closes one of the call's pipes. */
static void
exec_close(struct exec_call *c, int i)
{
	if (c->ev[i] != NULL) {
		event_free(c->ev[i]);
		c->ev[i] = NULL;
	}
	if (c->fds[i] != -1) {
		close(c->fds[i]);
		c->fds[i] = -1;
	}
}

/* One of the call's pipes is ready. */
static void
exec_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct exec_call	*c = arg;

	(void)what;
	if (fd == c->fds[FD_IN])
		exec_write_in(c);
	else if (fd == c->fds[FD_OUT])
		exec_read_out(c);
	else if (fd == c->fds[FD_ERR])
		exec_read_err(c);
	else if (fd == c->fds[FD_FAIL])
		exec_read_fail(c);
	/* Last: it may free c. */
	exec_check_done(c);
}

/* Feeds the input; a program that closes its stdin early is its business. */
static void
exec_write_in(struct exec_call *c)
{
	ssize_t	n;

	while (c->in_off < c->in_len) {
		n = write(c->fds[FD_IN], c->in + c->in_off,
		    c->in_len - c->in_off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n == -1)
			break;
		c->in_off += (size_t)n;
	}
	exec_close(c, FD_IN);
}

/*
 * One read from a pipe of the program: > 0 bytes read, 0 at its end (or
 * an error: the pipe is closed either way), -1 when nothing is there yet.
 */
static ssize_t
exec_read(int fd, void *buf, size_t len)
{
	ssize_t	n;

	while ((n = read(fd, buf, len)) == -1 && errno == EINTR)
		;
	if (n == -1 && errno == EAGAIN)
		return -1;
	return n < 0 ? 0 : n;
}

/* Reads stdout; one byte over the cap kills the program's group. */
static void
exec_read_out(struct exec_call *c)
{
	ssize_t	n;

	for (;;) {
		if (c->out_len == c->out_cap) {
			c->out_cap = c->out_cap == 0 ? 4096 : c->out_cap * 2;
			if (c->out_cap > c->max_output + 1)
				c->out_cap = c->max_output + 1;
			c->out = xreallocarray(c->out, c->out_cap, 1);
		}
		n = exec_read(c->fds[FD_OUT], c->out + c->out_len,
		    c->out_cap - c->out_len);
		if (n == -1)
			return;
		if (n == 0)
			break;
		c->out_len += (size_t)n;
		if (c->out_len > c->max_output) {
			exec_kill(c, KILL_OVERSIZE);
			break;
		}
	}
	exec_close(c, FD_OUT);
}

/* Keeps the first EXEC_STDERR_KEEP bytes of stderr, counts the rest. */
static void
exec_read_err(struct exec_call *c)
{
	char	buf[4096];
	size_t	keep;
	ssize_t	n;

	for (;;) {
		n = exec_read(c->fds[FD_ERR], buf, sizeof(buf));
		if (n == -1)
			return;
		if (n == 0)
			break;
		keep = sizeof(c->err) - c->err_len;
		if (keep > (size_t)n)
			keep = (size_t)n;
		memcpy(c->err + c->err_len, buf, keep);
		c->err_len += keep;
		c->err_dropped += (size_t)n - keep;
	}
	exec_close(c, FD_ERR);
}

/* Reads the child's report of a failure before exec; EOF: it exec'd. */
static void
exec_read_fail(struct exec_call *c)
{
	char	*p = (char *)&c->failure;
	ssize_t	 n;

	for (;;) {
		if (c->failure_len == sizeof(c->failure))
			break;
		n = exec_read(c->fds[FD_FAIL], p + c->failure_len,
		    sizeof(c->failure) - c->failure_len);
		if (n == -1)
			return;
		if (n == 0)
			break;
		c->failure_len += (size_t)n;
	}
	exec_close(c, FD_FAIL);
}

/* SIGKILLs the program's whole group, once, remembering why. */
static void
exec_kill(struct exec_call *c, enum exec_kill why)
{
	if (c->killed != KILL_NONE || c->reaped || c->pid <= 0)
		return;
	c->killed = why;
	if (killpg(c->pid, SIGKILL) == -1 && errno != ESRCH)
		log_warn("killpg %d", (int)c->pid);
}

/*
 * Before the exit: the call's deadline.  After it: the pipes' (a process
 * that left the group may hold them open).
 */
static void
exec_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct exec_call	*c = arg;

	(void)fd;
	(void)what;
	if (!c->reaped) {
		log_warnx("step=%lld attempt=%d tool=%s: timed out after %d "
		    "ms; killing process group %d", c->s->id, c->s->attempt,
		    c->s->tool, c->s->timeout_ms, (int)c->pid);
		exec_kill(c, KILL_TIMEOUT);
		return;
	}
	c->late = c->fds[FD_OUT] != -1;
	exec_close(c, FD_OUT);
	exec_close(c, FD_ERR);
	exec_close(c, FD_FAIL);
	exec_check_done(c);
}

/* The running call whose program has this pid, or NULL. */
static struct exec_call *
exec_by_pid(pid_t pid)
{
	struct exec_call	*c;

	TAILQ_FOREACH(c, &calls, entry)
		if (c->pid == pid && !c->reaped)
			return c;
	return NULL;
}

/*
 * SIGCHLD: for each program that ended, kill what it left in its group
 * while its zombie still holds the group id, tell eavd the group is
 * gone, then reap it.
 */
static void
exec_sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
	struct exec_call	*c;
	siginfo_t		 si;
	int			 status;

	(void)sig;
	(void)what;
	(void)arg;
	for (;;) {
		memset(&si, 0, sizeof(si));
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == -1) {
			if (errno == EINTR)
				continue;
			if (errno == ECHILD)
				return;
			fatal("waitid");
		}
		if (si.si_pid == 0)
			return;
		if ((c = exec_by_pid(si.si_pid)) != NULL) {
			(void)killpg(c->pid, SIGKILL);
			if (c->announced)
				(void)worker_ctl_send("tool-", c->pid);
		}
		while (waitpid(si.si_pid, &status, 0) == -1)
			if (errno != EINTR)
				fatal("waitpid");
		if (c == NULL)
			log_warnx("reaped unknown child pid %d",
			    (int)si.si_pid);
		else
			exec_exited(c, status);
	}
}

/* The program is reaped; its pipes get EXEC_DRAIN_MS to reach EOF. */
static void
exec_exited(struct exec_call *c, int status)
{
	struct timeval	tv = clock_tv(EXEC_DRAIN_MS);

	c->reaped = 1;
	c->status = status;
	exec_close(c, FD_IN);
	evtimer_del(c->timer);
	if ((c->fds[FD_OUT] != -1 || c->fds[FD_ERR] != -1 ||
	    c->fds[FD_FAIL] != -1) && evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot add an exec timer");
	exec_check_done(c);
}

/* Finishes the call once the program is reaped and its pipes closed. */
static void
exec_check_done(struct exec_call *c)
{
	if (!c->reaped || c->fds[FD_OUT] != -1 || c->fds[FD_ERR] != -1 ||
	    c->fds[FD_FAIL] != -1)
		return;
	exec_finish(c);
}

/* Completes the step with the call's outcome and frees the call. */
static void
exec_finish(struct exec_call *c)
{
	struct step		*s = c->s;
	struct worker		*w = c->w;
	json_t			*result = NULL;
	char			 err[1536];
	enum step_outcome	 o;

	o = exec_outcome(c, &result, err, sizeof(err));
	/* The completion batch is JSON: snprintf must not have cut a
	 * character in two. */
	utf8_trim(err);
	exec_log_stderr(c);
	if (o == OUT_SUCCEEDED)
		log_debug("step=%lld attempt=%d tool=%s: succeeded", s->id,
		    s->attempt, s->tool);
	else
		log_info("step=%lld attempt=%d tool=%s: %s", s->id, s->attempt,
		    s->tool, err);
	exec_call_free(c);
	step_finish(s, o, result, o == OUT_SUCCEEDED ? NULL : err);
	cycle_wake(w);
}

/* The outcome of an ended call; see the header for the mapping. */
static enum step_outcome
exec_outcome(struct exec_call *c, json_t **result, char *err, size_t len)
{
	struct step	*s = c->s;

	if (c->withdrawn) {
		s->ran = 0;
		snprintf(err, len, "not started: eavd could not be told of "
		    "the program's process group");
		return OUT_RELEASE;
	}
	if (c->failure_len == sizeof(c->failure)) {
		s->ran = 0;
		s->tool_error = 1;
		snprintf(err, len, "cannot run %s: %s: %s", c->program,
		    spawn_stage_name(c->failure.stage),
		    strerror(c->failure.error));
		return OUT_FAILED;
	}
	if (c->killed == KILL_OVERSIZE) {
		snprintf(err, len, "output larger than %zu bytes",
		    c->max_output);
		return OUT_FAILED;
	}
	if (c->killed == KILL_TIMEOUT) {
		s->detected_by = "tool_timeout";
		snprintf(err, len, "timed out after %d ms; its process group "
		    "was killed", s->timeout_ms);
		return OUT_UNKNOWN;
	}
	if (WIFSIGNALED(c->status)) {
		s->detected_by = "tool_signal";
		snprintf(err, len, "killed by signal %d (%s)",
		    WTERMSIG(c->status), strsignal(WTERMSIG(c->status)));
		return OUT_UNKNOWN;
	}
	return exec_exit_code(c, result, err, len);
}

/* exit 0: the result; 75: retry; other: failed, with stderr's start. */
static enum step_outcome
exec_exit_code(struct exec_call *c, json_t **result, char *err, size_t len)
{
	int	 code = WEXITSTATUS(c->status);
	char	*tail;

	if (code == 0)
		return exec_parse(c, result, err, len);
	tail = exec_clean(c->err, c->err_len < EXEC_STDERR_IN_ERROR ?
	    c->err_len : EXEC_STDERR_IN_ERROR);
	snprintf(err, len, "exited with code %d%s%s%s", code,
	    code == EXEC_EX_TEMPFAIL ? " (temporary failure)" : "",
	    *tail != '\0' ? "; stderr: " : "", tail);
	free(tail);
	c->s->tool_error = code == EXEC_EX_TEMPFAIL;
	return code == EXEC_EX_TEMPFAIL ? OUT_RETRY : OUT_FAILED;
}

/* stdout must be one JSON value, in UTF-8, with no duplicate keys. */
static enum step_outcome
exec_parse(struct exec_call *c, json_t **result, char *err, size_t len)
{
	json_error_t	 jerr;
	char		*why;

	if (c->late) {
		snprintf(err, len, "stdout was still open %d ms after the "
		    "program exited (a process it started left its process "
		    "group)", EXEC_DRAIN_MS);
		return OUT_FAILED;
	}
	if (c->out_len == 0) {
		snprintf(err, len, "stdout is empty: the result must be JSON");
		return OUT_FAILED;
	}
	*result = json_loadb(c->out, c->out_len, JSON_DECODE_ANY |
	    JSON_REJECT_DUPLICATES, &jerr);
	if (*result != NULL)
		return OUT_SUCCEEDED;
	why = exec_clean(jerr.text, strlen(jerr.text));
	snprintf(err, len, "stdout is not valid JSON: %s (line %d, column "
	    "%d)", why, jerr.line, jerr.column);
	free(why);
	return OUT_FAILED;
}

/* Logs the kept stderr, line by line. */
static void
exec_log_stderr(const struct exec_call *c)
{
	const char	*p = c->err, *end = c->err + c->err_len, *nl;
	char		*line;

	while (p < end) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			nl = end;
		line = exec_clean(p, (size_t)(nl - p));
		log_info("step=%lld stderr: %s", c->s->id, line);
		free(line);
		p = nl + 1;
	}
	if (c->err_dropped > 0)
		log_info("step=%lld stderr: %zu more bytes not logged",
		    c->s->id, c->err_dropped);
}

/* Length of the valid UTF-8 sequence at s (RFC 3629), or 0. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
	size_t	need, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		need = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		need = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		need = 4;
	else
		return 0;
	if (n < need)
		return 0;
	for (i = 1; i < need; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	/* Overlong forms, surrogates, and beyond U+10FFFF. */
	if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
	    (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
		return 0;
	return need;
}

/* Drops an incomplete UTF-8 sequence at the end of s (a cut string). */
static void
utf8_trim(char *s)
{
	size_t	n = strlen(s), i = n;

	while (i > 0 && n - i < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
		i--;
	if (i > 0 && (unsigned char)s[i - 1] >= 0xc0 &&
	    utf8_len((const unsigned char *)s + i - 1, n - i + 1) == 0)
		s[i - 1] = '\0';
}

/*
 * A program's bytes made fit for a log line and a text column: valid
 * UTF-8 is kept, control characters and invalid bytes become \xNN (a
 * newline \n).  The caller frees the result.
 */
static char *
exec_clean(const char *in, size_t n)
{
	const unsigned char	*p = (const unsigned char *)in;
	char			*out = xmalloc(n * 4 + 1), *o = out;
	size_t			 i = 0, k;

	while (i < n) {
		if (p[i] == '\n') {
			memcpy(o, "\\n", 2);
			o += 2;
			i++;
		} else if (p[i] >= 0x20 && p[i] < 0x7f)
			*o++ = (char)p[i++];
		else if (p[i] >= 0x80 && (k = utf8_len(p + i, n - i)) > 0) {
			memcpy(o, p + i, k);
			o += k;
			i += k;
		} else {
			snprintf(o, 5, "\\x%02x", p[i++]);
			o += 4;
		}
	}
	*o = '\0';
	return out;
}

/* A call for step, on the list of calls (the caller frees it). */
static struct exec_call *
exec_call_new(struct worker *w, struct step *s, const struct exec_conf *conf)
{
	struct exec_call	*c = xcalloc(1, sizeof(*c));
	char			*text;
	int			 i;

	c->w = w;
	c->s = s;
	c->program = xstrdup(conf->argv[0]);
	c->max_output = conf->max_output;
	for (i = 0; i < NFDS; i++)
		c->fds[i] = -1;
	if ((text = json_dumps(s->input, JSON_COMPACT)) == NULL)
		fatalx("cannot encode the input of step %lld", s->id);
	c->in = xasprintf("%s\n", text);
	c->in_len = strlen(c->in);
	free(text);
	TAILQ_INSERT_TAIL(&calls, c, entry);
	ncalls++;
	return c;
}

/* Takes a call off the list and frees it, closing what is open. */
static void
exec_call_free(struct exec_call *c)
{
	int	i;

	TAILQ_REMOVE(&calls, c, entry);
	ncalls--;
	for (i = 0; i < NFDS; i++)
		exec_close(c, i);
	if (c->timer != NULL)
		event_free(c->timer);
	free(c->program);
	free(c->in);
	free(c->out);
	free(c);
}

/*
 * Starts a claimed step of an exec tool.  A program that could not even
 * be forked had no effect: the step is retried after its back-off.
 */
void
exec_start(struct worker *w, struct step *s)
{
	struct exec_conf	 conf;
	struct exec_call	*c;
	char			 err[512];

	if (exec_conf_parse(s->config, &conf, err, sizeof(err)) == -1) {
		step_finish(s, OUT_FAILED, NULL, err);
		return;
	}
	c = exec_call_new(w, s, &conf);
	if (exec_spawn(c, &conf) == -1) {
		snprintf(err, sizeof(err), "cannot start %s: %s", c->program,
		    strerror(errno));
		exec_conf_free(&conf);
		exec_call_free(c);
		log_warnx("step=%lld tool=%s: %s", s->id, s->tool, err);
		step_finish(s, OUT_RETRY, NULL, err);
		return;
	}
	exec_conf_free(&conf);
	s->ran = !c->withdrawn;
	log_debug("step=%lld attempt=%d tool=%s: started %s pid=%d", s->id,
	    s->attempt, s->tool, c->program, (int)c->pid);
	exec_watch(c);
}
