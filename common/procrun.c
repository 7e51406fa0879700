/*
 * One program run to its end on the event loop (see procrun.h): its
 * stdin fed, its stdout read up to the cap, its stderr's start kept, its
 * deadline kept, and one callback when it is over.
 *
 * Invariants:
 *  - The callback comes exactly once, after the program is reaped and
 *    its pipes are closed (or PROCRUN_DRAIN_MS after its exit, if a
 *    process it started still holds them), and the run is freed right
 *    after it: the owner never frees a run.
 *  - A program is killed only as a group (SIGKILL), once, and the reason
 *    (time-out or oversize) is what its end reports, not the signal.
 *  - Nothing here blocks: every descriptor is non-blocking and watched.
 */
#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "log.h"
#include "procrun.h"
#include "toolproc.h"
#include "xalloc.h"

enum procrun_kill { KILL_NONE, KILL_TIMEOUT, KILL_OVERSIZE };

struct procrun {
	struct toolproc		 p;		/* the program, its pipes */
	struct tool_conf	 conf;		/* argv and limits for spawn */
	char			*label;
	int			 timeout_ms;
	int64_t			 started_ms;
	enum procrun_kill	 killed;
	int			 late;		/* stdout open at the drain */
	struct event		*ev[TP_NFDS];
	struct event		*timer;
	char			*in;
	size_t			 in_len, in_off;
	char			*out;
	size_t			 out_len, out_cap, max_output;
	char			 err[PROCRUN_ERR_KEEP];
	size_t			 err_len, err_dropped;
	struct spawn_failure	 failure;
	size_t			 failure_len;
	procrun_cb		 cb;
	void			*arg;
};

static struct procrun *procrun_new(const struct procrun_spec *, procrun_cb,
		    void *);
static void	procrun_free(struct procrun *);
static void	procrun_watch(struct procrun *, struct event_base *);
static void	procrun_io_cb(evutil_socket_t, short, void *);
static void	procrun_write_in(struct procrun *);
static void	procrun_read_out(struct procrun *);
static void	procrun_read_err(struct procrun *);
static void	procrun_read_fail(struct procrun *);
static void	procrun_close(struct procrun *, int);
static void	procrun_timer_cb(evutil_socket_t, short, void *);
static void	procrun_kill_why(struct procrun *, enum procrun_kill);
static void	procrun_exited(struct toolproc *);
static void	procrun_check_done(struct procrun *);
static void	procrun_finish(struct procrun *);
static enum procrun_end procrun_end_of(const struct procrun *, int *);

/* A name for an end, for messages. */
const char *
procrun_end_name(enum procrun_end e)
{
	static const char *const names[] = { "withdrawn", "exec failed",
	    "oversize", "timed out", "signaled", "late", "exited" };

	return e <= PROCRUN_EXITED ? names[e] : "?";
}

/* A run of spec, not started (procrun_free frees it). */
static struct procrun *
procrun_new(const struct procrun_spec *spec, procrun_cb cb, void *arg)
{
	struct procrun	*r = xcalloc(1, sizeof(*r));
	size_t		 n, i;

	for (n = 0; spec->argv[n] != NULL; n++)
		;
	r->conf.argv = xcalloc(n + 1, sizeof(char *));
	for (i = 0; i < n; i++)
		r->conf.argv[i] = xstrdup(spec->argv[i]);
	if (spec->limits != NULL)
		r->conf.limits = *spec->limits;
	r->label = xstrdup(spec->label != NULL ? spec->label : "program");
	r->timeout_ms = spec->timeout_ms;
	r->max_output = spec->max_output;
	if (spec->in_len > 0) {
		r->in = xmalloc(spec->in_len);
		memcpy(r->in, spec->in, spec->in_len);
		r->in_len = spec->in_len;
	}
	for (i = 0; i < TP_NFDS; i++)
		r->p.fds[i] = -1;
	r->cb = cb;
	r->arg = arg;
	return r;
}

/* Frees a run, closing what is open (the program must be reaped). */
static void
procrun_free(struct procrun *r)
{
	int	i;

	for (i = 0; i < TP_NFDS; i++)
		procrun_close(r, i);
	if (r->timer != NULL)
		event_free(r->timer);
	tool_strv_free(r->conf.argv);
	free(r->label);
	free(r->in);
	free(r->out);
	free(r);
}

/*
 * Starts the program of spec; cb(result, arg) comes once when it is
 * over.  Returns the run, or NULL with errno set if it could not be
 * forked (then cb never comes and nothing ran).
 */
struct procrun *
procrun_start(struct event_base *base, const struct procrun_spec *spec,
    procrun_cb cb, void *arg)
{
	struct procrun	*r = procrun_new(spec, cb, arg);
	char		*empty[] = { NULL };
	int		 saved;

	r->p.exited = procrun_exited;
	r->p.arg = r;
	r->started_ms = clock_ms();
	if (toolproc_spawn(&r->p, &r->conf, spec->envp != NULL ? spec->envp :
	    empty) == -1) {
		saved = errno;
		procrun_free(r);
		errno = saved;
		return NULL;
	}
	procrun_watch(r, base);
	return r;
}

/* The program's pid (and process group). */
pid_t
procrun_pid(const struct procrun *r)
{
	return r->p.pid;
}

/* 0 if the program can never have exec'd (eavd could not be told). */
int
procrun_ran(const struct procrun *r)
{
	return !r->p.withdrawn;
}

/* Kills the program's group now; the callback still comes. */
void
procrun_kill(struct procrun *r)
{
	toolproc_kill(&r->p, SIGKILL);
}

/* Watches the pipes, and the deadline of the run. */
static void
procrun_watch(struct procrun *r, struct event_base *base)
{
	struct timeval	tv = clock_tv(r->timeout_ms);
	int		i;

	for (i = 0; i < TP_NFDS; i++) {
		r->ev[i] = event_new(base, r->p.fds[i], (i == TP_IN ?
		    EV_WRITE : EV_READ) | EV_PERSIST, procrun_io_cb, r);
		if (r->ev[i] == NULL || event_add(r->ev[i], NULL) == -1)
			fatalx("cannot watch a program's pipe");
	}
	r->timer = evtimer_new(base, procrun_timer_cb, r);
	if (r->timer == NULL || evtimer_add(r->timer, &tv) == -1)
		fatalx("cannot add a program's timer");
}

/* Closes one of the run's pipes. */
static void
procrun_close(struct procrun *r, int i)
{
	if (r->ev[i] != NULL) {
		event_free(r->ev[i]);
		r->ev[i] = NULL;
	}
	if (r->p.fds[i] != -1) {
		close(r->p.fds[i]);
		r->p.fds[i] = -1;
	}
}

/* One of the run's pipes is ready. */
static void
procrun_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct procrun	*r = arg;

	(void)what;
	if (fd == r->p.fds[TP_IN])
		procrun_write_in(r);
	else if (fd == r->p.fds[TP_OUT])
		procrun_read_out(r);
	else if (fd == r->p.fds[TP_ERR])
		procrun_read_err(r);
	else if (fd == r->p.fds[TP_FAIL])
		procrun_read_fail(r);
	/* Last: it may free r. */
	procrun_check_done(r);
}

/* Feeds stdin; a program that closes its stdin early is its business. */
static void
procrun_write_in(struct procrun *r)
{
	ssize_t	n;

	while (r->in_off < r->in_len) {
		n = write(r->p.fds[TP_IN], r->in + r->in_off,
		    r->in_len - r->in_off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n == -1)
			break;
		r->in_off += (size_t)n;
	}
	procrun_close(r, TP_IN);
}

/* Reads stdout; one byte over the cap kills the program's group. */
static void
procrun_read_out(struct procrun *r)
{
	ssize_t	n;

	for (;;) {
		if (r->out_len == r->out_cap) {
			r->out_cap = r->out_cap == 0 ? 4096 : r->out_cap * 2;
			if (r->out_cap > r->max_output + 1)
				r->out_cap = r->max_output + 1;
			r->out = xreallocarray(r->out, r->out_cap + 1, 1);
		}
		n = tool_read(r->p.fds[TP_OUT], r->out + r->out_len,
		    r->out_cap - r->out_len);
		if (n == -1)
			return;
		if (n == 0)
			break;
		r->out_len += (size_t)n;
		if (r->out_len > r->max_output) {
			procrun_kill_why(r, KILL_OVERSIZE);
			break;
		}
	}
	procrun_close(r, TP_OUT);
}

/* Keeps the first PROCRUN_ERR_KEEP bytes of stderr, counts the rest. */
static void
procrun_read_err(struct procrun *r)
{
	char	buf[4096];
	size_t	keep;
	ssize_t	n;

	for (;;) {
		n = tool_read(r->p.fds[TP_ERR], buf, sizeof(buf));
		if (n == -1)
			return;
		if (n == 0)
			break;
		keep = sizeof(r->err) - r->err_len;
		if (keep > (size_t)n)
			keep = (size_t)n;
		memcpy(r->err + r->err_len, buf, keep);
		r->err_len += keep;
		r->err_dropped += (size_t)n - keep;
	}
	procrun_close(r, TP_ERR);
}

/* Reads the child's report of a failure before exec; EOF: it exec'd. */
static void
procrun_read_fail(struct procrun *r)
{
	char	*p = (char *)&r->failure;
	ssize_t	 n;

	for (;;) {
		if (r->failure_len == sizeof(r->failure))
			break;
		n = tool_read(r->p.fds[TP_FAIL], p + r->failure_len,
		    sizeof(r->failure) - r->failure_len);
		if (n == -1)
			return;
		if (n == 0)
			break;
		r->failure_len += (size_t)n;
	}
	procrun_close(r, TP_FAIL);
}

/* SIGKILLs the program's whole group, once, remembering why. */
static void
procrun_kill_why(struct procrun *r, enum procrun_kill why)
{
	if (r->killed != KILL_NONE || r->p.reaped || r->p.pid <= 0)
		return;
	r->killed = why;
	toolproc_kill(&r->p, SIGKILL);
}

/*
 * Before the exit: the run's deadline.  After it: the pipes' (a process
 * that left the group may hold them open).
 */
static void
procrun_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct procrun	*r = arg;

	(void)fd;
	(void)what;
	if (!r->p.reaped) {
		log_warnx("%s: timed out after %d ms; killing process group "
		    "%d", r->label, r->timeout_ms, (int)r->p.pid);
		procrun_kill_why(r, KILL_TIMEOUT);
		return;
	}
	r->late = r->p.fds[TP_OUT] != -1;
	procrun_close(r, TP_OUT);
	procrun_close(r, TP_ERR);
	procrun_close(r, TP_FAIL);
	procrun_check_done(r);
}

/* The program is reaped; its pipes get PROCRUN_DRAIN_MS to reach EOF. */
static void
procrun_exited(struct toolproc *p)
{
	struct procrun	*r = p->arg;
	struct timeval	 tv = clock_tv(PROCRUN_DRAIN_MS);

	procrun_close(r, TP_IN);
	evtimer_del(r->timer);
	if ((r->p.fds[TP_OUT] != -1 || r->p.fds[TP_ERR] != -1 ||
	    r->p.fds[TP_FAIL] != -1) && evtimer_add(r->timer, &tv) == -1)
		fatalx("cannot add a program's timer");
	procrun_check_done(r);
}

/* Finishes the run once the program is reaped and its pipes closed. */
static void
procrun_check_done(struct procrun *r)
{
	if (!r->p.reaped || r->p.fds[TP_OUT] != -1 ||
	    r->p.fds[TP_ERR] != -1 || r->p.fds[TP_FAIL] != -1)
		return;
	procrun_finish(r);
}

/* How the reaped program ended (code: its exit code or signal). */
static enum procrun_end
procrun_end_of(const struct procrun *r, int *code)
{
	*code = 0;
	if (r->p.withdrawn)
		return PROCRUN_WITHDRAWN;
	if (r->failure_len == sizeof(r->failure))
		return PROCRUN_EXEC_FAILED;
	if (r->killed == KILL_OVERSIZE)
		return PROCRUN_OVERSIZE;
	if (r->killed == KILL_TIMEOUT)
		return PROCRUN_TIMED_OUT;
	if (WIFSIGNALED(r->p.status)) {
		*code = WTERMSIG(r->p.status);
		return PROCRUN_SIGNALED;
	}
	*code = WEXITSTATUS(r->p.status);
	return r->late ? PROCRUN_LATE : PROCRUN_EXITED;
}

/* Calls back with the result, then frees the run. */
static void
procrun_finish(struct procrun *r)
{
	struct procrun_result	res;

	memset(&res, 0, sizeof(res));
	res.end = procrun_end_of(r, &res.code);
	res.failure = r->failure;
	if (r->out == NULL)
		r->out = xcalloc(1, 1);
	r->out[r->out_len] = '\0';
	res.out = r->out;
	res.out_len = r->out_len;
	res.err = r->err;
	res.err_len = r->err_len;
	res.err_dropped = r->err_dropped;
	res.pid = r->p.pid;
	res.elapsed_ms = clock_ms() - r->started_ms;
	r->cb(&res, r->arg);
	procrun_free(r);
}
