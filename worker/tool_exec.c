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
 *  - Pipes, deadline and output cap are procrun.c's; this file maps how
 *    the program ended to the step's outcome.
 *  - Outcomes: exit 0 with JSON on stdout succeeded; exit 75 retryable;
 *    any other exit failed; output over max_output_bytes, or stdout that
 *    is not JSON (or not UTF-8), failed; killed by a signal, or by us at
 *    the tool's timeout_ms: unknown (tool_signal, tool_timeout), which
 *    SQL turns into a retry with the same key or a held step, exactly as
 *    for a dead worker's step.  Nothing partial is ever kept.
 */
#include <sys/types.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "log.h"
#include "procrun.h"
#include "toolproc.h"
#include "worker.h"
#include "xalloc.h"

#define EXEC_STDERR_IN_ERROR	256	/* bytes of stderr in the error */
#define EXEC_EX_TEMPFAIL	75

/* A call in progress: what its callback needs. */
struct exec_call {
	struct worker		*w;
	struct step		*s;
	char			*program;
	size_t			 max_output;
};

/* The calls not finished. */
static int		 ncalls;

static int	exec_conf_parse(const char *, struct tool_conf *, char *,
		    size_t);
static char   **exec_env(const struct step *, json_t *);
static void	exec_done(const struct procrun_result *, void *);
static enum step_outcome exec_outcome(struct exec_call *,
		    const struct procrun_result *, json_t **, char *, size_t);
static enum step_outcome exec_exit_code(struct exec_call *,
		    const struct procrun_result *, json_t **, char *, size_t);
static enum step_outcome exec_parse(const struct procrun_result *,
		    json_t **, char *, size_t);
static void	exec_log_stderr(const struct exec_call *,
		    const struct procrun_result *);

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

/* The program is over: completes the step with its outcome. */
static void
exec_done(const struct procrun_result *r, void *arg)
{
	struct exec_call	*c = arg;
	struct step		*s = c->s;
	struct worker		*w = c->w;
	json_t			*result = NULL;
	char			 err[1536];
	enum step_outcome	 o;

	o = exec_outcome(c, r, &result, err, sizeof(err));
	/* The completion batch is JSON: snprintf must not have cut a
	 * character in two. */
	tool_utf8_trim(err);
	exec_log_stderr(c, r);
	free(c->program);
	free(c);
	ncalls--;
	step_finish(s, o, result, o == OUT_SUCCEEDED ? NULL : err);
	cycle_wake(w);
}

/* The outcome of an ended call; see the header for the mapping. */
static enum step_outcome
exec_outcome(struct exec_call *c, const struct procrun_result *r,
    json_t **result, char *err, size_t len)
{
	struct step	*s = c->s;

	switch (r->end) {
	case PROCRUN_WITHDRAWN:
		s->ran = 0;
		snprintf(err, len, "not started: eavd could not be told of "
		    "the program's process group");
		return OUT_RELEASE;
	case PROCRUN_EXEC_FAILED:
		s->ran = 0;
		s->tool_error = 1;
		snprintf(err, len, "cannot run %s: %s: %s", c->program,
		    spawn_stage_name(r->failure.stage),
		    strerror(r->failure.error));
		return OUT_FAILED;
	case PROCRUN_OVERSIZE:
		snprintf(err, len, "output larger than %zu bytes",
		    c->max_output);
		return OUT_FAILED;
	case PROCRUN_TIMED_OUT:
		s->detected_by = "tool_timeout";
		snprintf(err, len, "timed out after %d ms; its process group "
		    "was killed", s->timeout_ms);
		return OUT_UNKNOWN;
	case PROCRUN_SIGNALED:
		s->detected_by = "tool_signal";
		snprintf(err, len, "killed by signal %d (%s)", r->code,
		    strsignal(r->code));
		return OUT_UNKNOWN;
	default:
		return exec_exit_code(c, r, result, err, len);
	}
}

/* exit 0: the result; 75: retry; other: failed, with stderr's start. */
static enum step_outcome
exec_exit_code(struct exec_call *c, const struct procrun_result *r,
    json_t **result, char *err, size_t len)
{
	char	*tail;

	if (r->code == 0)
		return exec_parse(r, result, err, len);
	tail = tool_clean(r->err, r->err_len < EXEC_STDERR_IN_ERROR ?
	    r->err_len : EXEC_STDERR_IN_ERROR);
	snprintf(err, len, "exited with code %d%s%s%s", r->code,
	    r->code == EXEC_EX_TEMPFAIL ? " (temporary failure)" : "",
	    *tail != '\0' ? "; stderr: " : "", tail);
	free(tail);
	c->s->tool_error = r->code == EXEC_EX_TEMPFAIL;
	return r->code == EXEC_EX_TEMPFAIL ? OUT_RETRY : OUT_FAILED;
}

/* stdout must be one JSON value, in UTF-8, with no duplicate keys. */
static enum step_outcome
exec_parse(const struct procrun_result *r, json_t **result, char *err,
    size_t len)
{
	json_error_t	 jerr;
	char		*why;

	if (r->end == PROCRUN_LATE) {
		snprintf(err, len, "stdout was still open %d ms after the "
		    "program exited (a process it started left its process "
		    "group)", PROCRUN_DRAIN_MS);
		return OUT_FAILED;
	}
	if (r->out_len == 0) {
		snprintf(err, len, "stdout is empty: the result must be JSON");
		return OUT_FAILED;
	}
	*result = json_loadb(r->out, r->out_len, JSON_DECODE_ANY |
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
exec_log_stderr(const struct exec_call *c, const struct procrun_result *r)
{
	const char	*p = r->err, *end = r->err + r->err_len, *nl;
	char		*line;

	while (p < end) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			nl = end;
		line = tool_clean(p, (size_t)(nl - p));
		log_info("step=%lld stderr: %s", c->s->id, line);
		free(line);
		p = nl + 1;
	}
	if (r->err_dropped > 0)
		log_info("step=%lld stderr: %zu more bytes not logged",
		    c->s->id, r->err_dropped);
}

/*
 * Starts a claimed step of an exec tool.  A program that could not even
 * be forked had no effect: the step is retried after its back-off.
 */
void
exec_start(struct worker *w, struct step *s)
{
	struct tool_conf	 conf;
	struct procrun_spec	 spec;
	struct procrun		*run;
	struct exec_call	*c;
	char			 err[512], label[256], *text, *in, **envp;

	if (exec_conf_parse(s->config, &conf, err, sizeof(err)) == -1) {
		step_finish(s, OUT_FAILED, NULL, err);
		return;
	}
	if ((text = json_dumps(s->input, JSON_COMPACT)) == NULL)
		fatalx("cannot encode the input of step %lld", s->id);
	in = xasprintf("%s\n", text);
	free(text);
	envp = exec_env(s, conf.env);
	snprintf(label, sizeof(label), "step=%lld attempt=%d tool=%s", s->id,
	    s->attempt, s->tool);
	memset(&spec, 0, sizeof(spec));
	spec.argv = conf.argv;
	spec.envp = envp;
	spec.in = in;
	spec.in_len = strlen(in);
	spec.timeout_ms = s->timeout_ms;
	spec.max_output = conf.max_output;
	spec.limits = &conf.limits;
	spec.label = label;
	c = xcalloc(1, sizeof(*c));
	c->w = w;
	c->s = s;
	c->program = xstrdup(conf.argv[0]);
	c->max_output = conf.max_output;
	run = procrun_start(w->base, &spec, exec_done, c);
	free(in);
	tool_strv_free(envp);
	tool_conf_free(&conf);
	if (run == NULL) {
		snprintf(err, sizeof(err), "cannot start %s: %s", c->program,
		    strerror(errno));
		free(c->program);
		free(c);
		log_warnx("step=%lld tool=%s: %s", s->id, s->tool, err);
		step_finish(s, OUT_RETRY, NULL, err);
		return;
	}
	ncalls++;
	s->ran = procrun_ran(run);
	log_debug("step=%lld attempt=%d tool=%s: started %s pid=%d", s->id,
	    s->attempt, s->tool, c->program, (int)procrun_pid(run));
}
