/*
 * The exec tool: runs the program of a tool's config (argv, no shell)
 * with the step's input JSON on stdin, and reads its result JSON from
 * stdout, all on the worker's event loop, so many calls run side by side.
 *
 * Invariants:
 *  - The program sees only descriptors 0, 1 and 2 and only the
 *    environment it is given: the config's allowlist, read from our
 *    environment, plus EAV_IDEMPOTENCY_KEY, EAV_TASK_ID, EAV_STEP_ID,
 *    EAV_ATTEMPT and EAV_TRACE_ID.  Never EAV_DSN or a database password:
 *    the worker's own credentials come from eavd over fd 3, not the
 *    environment (toolproc.c).
 *  - The program runs in a process group of its own, known to eavd before
 *    the program may exec (toolproc.c).  If this worker dies, eavd
 *    SIGKILLs every group it was told of before it reconciles the
 *    worker's steps, so no effect of an interrupted call can land after
 *    its retry began; PR_SET_PDEATHSIG(SIGKILL) kills the program itself
 *    even if eavd is gone too.  What a SIGKILL of eavd and its worker at
 *    once cannot reach is a descendant that left the program's group.
 *  - When the program ends, whatever it left in its group is SIGKILLed
 *    before "tool- <pgid>" is sent and the zombie reaped (toolproc.c).
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
#include "toolproc.h"
#include "worker.h"
#include "xalloc.h"

#define EXEC_STDERR_KEEP	4096	/* bytes of stderr logged */
#define EXEC_STDERR_IN_ERROR	256	/* of which in the step's error */
#define EXEC_DRAIN_MS		1000	/* stdout EOF after the exit */
#define EXEC_EX_TEMPFAIL	75

enum exec_kill { KILL_NONE, KILL_TIMEOUT, KILL_OVERSIZE };
enum {
	FD_IN = TP_IN,
	FD_OUT = TP_OUT,
	FD_ERR = TP_ERR,
	FD_FAIL = TP_FAIL,
	NFDS = TP_NFDS
};

struct exec_call {
	TAILQ_ENTRY(exec_call)	 entry;
	struct worker		*w;
	struct step		*s;
	char			*program;
	struct toolproc		 p;		/* the program, its pipes */
	enum exec_kill		 killed;
	int			 late;		/* stdout open at the drain */
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

/* The calls not finished. */
static struct exec_calls calls = TAILQ_HEAD_INITIALIZER(calls);
static int		 ncalls;

static int	exec_conf_parse(const char *, struct tool_conf *, char *,
		    size_t);
static char   **exec_env(const struct step *, json_t *);
static int	exec_spawn(struct exec_call *, const struct tool_conf *);
static void	exec_watch(struct exec_call *);
static void	exec_io_cb(evutil_socket_t, short, void *);
static void	exec_write_in(struct exec_call *);
static void	exec_read_out(struct exec_call *);
static void	exec_read_err(struct exec_call *);
static void	exec_read_fail(struct exec_call *);
static void	exec_close(struct exec_call *, int);
static void	exec_timer_cb(evutil_socket_t, short, void *);
static void	exec_kill(struct exec_call *, enum exec_kill);
static void	exec_exited(struct toolproc *);
static void	exec_check_done(struct exec_call *);
static void	exec_finish(struct exec_call *);
static enum step_outcome exec_outcome(struct exec_call *, json_t **,
		    char *, size_t);
static enum step_outcome exec_exit_code(struct exec_call *, json_t **,
		    char *, size_t);
static enum step_outcome exec_parse(struct exec_call *, json_t **, char *,
		    size_t);
static void	exec_log_stderr(const struct exec_call *);
static struct exec_call *exec_call_new(struct worker *, struct step *,
		    const struct tool_conf *);
static void	exec_call_free(struct exec_call *);

/* Calls that have not finished. */
int
exec_running(void)
{
	return ncalls;
}

/*
 * Reads a tool's config (JSON text from the claim).  Returns 0, or -1
 * with err set.
 */
static int
exec_conf_parse(const char *text, struct tool_conf *c, char *err,
    size_t len)
{
	json_t		*cfg;
	json_error_t	 jerr;
	int		 rc;

	memset(c, 0, sizeof(*c));
	if (text == NULL || (cfg = json_loads(text, 0, &jerr)) == NULL) {
		snprintf(err, len, "the tool's config cannot be read");
		return -1;
	}
	rc = tool_conf_parse(cfg, c, err, len);
	json_decref(cfg);
	return rc;
}

/*
 * The program's whole environment: the allowlisted names that are set
 * in ours, then the call's identity.  The caller frees it.
 */
static char **
exec_env(const struct step *s, json_t *names)
{
	char	**envp, who[128];
	size_t	  n;

	snprintf(who, sizeof(who), "step=%lld tool=%s", s->id, s->tool);
	envp = tool_env(names, 5, who, &n);
	envp[n++] = xasprintf("EAV_IDEMPOTENCY_KEY=%s", s->idem_key);
	envp[n++] = xasprintf("EAV_TASK_ID=%lld", s->task_id);
	envp[n++] = xasprintf("EAV_STEP_ID=%lld", s->id);
	envp[n++] = xasprintf("EAV_ATTEMPT=%d", s->attempt);
	envp[n] = xasprintf("EAV_TRACE_ID=%s", s->trace_id);
	return envp;
}

/*
 * Forks the program (see the header for what it gets) and releases it.
 * Returns 0, or -1 with errno set if it could not be forked.
 */
static int
exec_spawn(struct exec_call *c, const struct tool_conf *conf)
{
	char	**envp = exec_env(c->s, conf->env);
	int	  rc, saved;

	c->p.exited = exec_exited;
	c->p.arg = c;
	rc = toolproc_spawn(&c->p, conf, envp);
	saved = errno;
	tool_strv_free(envp);
	errno = saved;
	return rc;
}

/* Watches the pipes, and the deadline of the call. */
static void
exec_watch(struct exec_call *c)
{
	struct event_base	*base = c->w->base;
	struct timeval		 tv = clock_tv(c->s->timeout_ms);
	int			 i;

	for (i = 0; i < NFDS; i++) {
		c->ev[i] = event_new(base, c->p.fds[i], (i == FD_IN ? EV_WRITE :
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
	if (c->p.fds[i] != -1) {
		close(c->p.fds[i]);
		c->p.fds[i] = -1;
	}
}

/* One of the call's pipes is ready. */
static void
exec_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct exec_call	*c = arg;

	(void)what;
	if (fd == c->p.fds[FD_IN])
		exec_write_in(c);
	else if (fd == c->p.fds[FD_OUT])
		exec_read_out(c);
	else if (fd == c->p.fds[FD_ERR])
		exec_read_err(c);
	else if (fd == c->p.fds[FD_FAIL])
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
		n = write(c->p.fds[FD_IN], c->in + c->in_off,
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
		n = tool_read(c->p.fds[FD_OUT], c->out + c->out_len,
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
		n = tool_read(c->p.fds[FD_ERR], buf, sizeof(buf));
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
		n = tool_read(c->p.fds[FD_FAIL], p + c->failure_len,
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
	if (c->killed != KILL_NONE || c->p.reaped || c->p.pid <= 0)
		return;
	c->killed = why;
	toolproc_kill(&c->p, SIGKILL);
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
	if (!c->p.reaped) {
		log_warnx("step=%lld attempt=%d tool=%s: timed out after %d "
		    "ms; killing process group %d", c->s->id, c->s->attempt,
		    c->s->tool, c->s->timeout_ms, (int)c->p.pid);
		exec_kill(c, KILL_TIMEOUT);
		return;
	}
	c->late = c->p.fds[FD_OUT] != -1;
	exec_close(c, FD_OUT);
	exec_close(c, FD_ERR);
	exec_close(c, FD_FAIL);
	exec_check_done(c);
}

/* The program is reaped; its pipes get EXEC_DRAIN_MS to reach EOF. */
static void
exec_exited(struct toolproc *p)
{
	struct exec_call	*c = p->arg;
	struct timeval		 tv = clock_tv(EXEC_DRAIN_MS);

	exec_close(c, FD_IN);
	evtimer_del(c->timer);
	if ((c->p.fds[FD_OUT] != -1 || c->p.fds[FD_ERR] != -1 ||
	    c->p.fds[FD_FAIL] != -1) && evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot add an exec timer");
	exec_check_done(c);
}

/* Finishes the call once the program is reaped and its pipes closed. */
static void
exec_check_done(struct exec_call *c)
{
	if (!c->p.reaped || c->p.fds[FD_OUT] != -1 || c->p.fds[FD_ERR] != -1 ||
	    c->p.fds[FD_FAIL] != -1)
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
	tool_utf8_trim(err);
	exec_log_stderr(c);
	exec_call_free(c);
	step_finish(s, o, result, o == OUT_SUCCEEDED ? NULL : err);
	cycle_wake(w);
}

/* The outcome of an ended call; see the header for the mapping. */
static enum step_outcome
exec_outcome(struct exec_call *c, json_t **result, char *err, size_t len)
{
	struct step	*s = c->s;

	if (c->p.withdrawn) {
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
	if (WIFSIGNALED(c->p.status)) {
		s->detected_by = "tool_signal";
		snprintf(err, len, "killed by signal %d (%s)",
		    WTERMSIG(c->p.status), strsignal(WTERMSIG(c->p.status)));
		return OUT_UNKNOWN;
	}
	return exec_exit_code(c, result, err, len);
}

/* exit 0: the result; 75: retry; other: failed, with stderr's start. */
static enum step_outcome
exec_exit_code(struct exec_call *c, json_t **result, char *err, size_t len)
{
	int	 code = WEXITSTATUS(c->p.status);
	char	*tail;

	if (code == 0)
		return exec_parse(c, result, err, len);
	tail = tool_clean(c->err, c->err_len < EXEC_STDERR_IN_ERROR ?
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
	why = tool_clean(jerr.text, strlen(jerr.text));
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
		line = tool_clean(p, (size_t)(nl - p));
		log_info("step=%lld stderr: %s", c->s->id, line);
		free(line);
		p = nl + 1;
	}
	if (c->err_dropped > 0)
		log_info("step=%lld stderr: %zu more bytes not logged",
		    c->s->id, c->err_dropped);
}

/* A call for step, on the list of calls (the caller frees it). */
static struct exec_call *
exec_call_new(struct worker *w, struct step *s, const struct tool_conf *conf)
{
	struct exec_call	*c = xcalloc(1, sizeof(*c));
	char			*text;
	int			 i;

	c->w = w;
	c->s = s;
	c->program = xstrdup(conf->argv[0]);
	c->max_output = conf->max_output;
	for (i = 0; i < NFDS; i++)
		c->p.fds[i] = -1;
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
	struct tool_conf	 conf;
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
		tool_conf_free(&conf);
		exec_call_free(c);
		log_warnx("step=%lld tool=%s: %s", s->id, s->tool, err);
		step_finish(s, OUT_RETRY, NULL, err);
		return;
	}
	tool_conf_free(&conf);
	s->ran = !c->p.withdrawn;
	log_debug("step=%lld attempt=%d tool=%s: started %s pid=%d", s->id,
	    s->attempt, s->tool, c->program, (int)c->p.pid);
	exec_watch(c);
}
