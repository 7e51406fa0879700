/*
 * Watcher probes: which kind runs, and the exec probe.  An exec probe is
 * a program run by procrun.c, so it has what the worker's exec tool has:
 * no shell, only descriptors 0-2, only its allowlisted environment (plus
 * EAV_WATCHER and EAV_WATCHER_SLOT), a process group of its own that
 * eavd knows before it may exec (and kills if we die), a time-out after
 * which the group is SIGKILLed, and a cap on stdout.
 *
 * Outcome: exit 0 holds, and stdout (a JSON object, or nothing for {})
 * is the event body; the config's false_exit (default 1) does not hold;
 * every other end is a tick error with the reason: could not start,
 * timed out, killed by a signal, another exit code (with stderr's
 * start), stdout over the cap or not a JSON object.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "procrun.h"
#include "producer.h"
#include "toolproc.h"
#include "xalloc.h"

#define PROBE_STDERR_IN_ERROR	256	/* bytes of stderr in the reason */

static void	probe_exec_start(struct watch_tick *);
static char   **probe_exec_env(const struct watch_tick *, json_t *);
static void	probe_exec_done(const struct procrun_result *, void *);
static const char *probe_exec_outcome(const struct watch_tick *,
		    const struct procrun_result *, char **, char *, size_t);
static const char *probe_exec_exit(const struct watch_tick *,
		    const struct procrun_result *, char **, char *, size_t);
static const char *probe_exec_body(const struct procrun_result *, char **,
		    char *, size_t);

/* Starts the probe of a claimed tick; its end calls watcher_tick_done. */
void
probe_start(struct watch_tick *t)
{
	if (t->config == NULL) {
		watcher_tick_done(t, "error", NULL, "the watcher's config "
		    "cannot be read");
		return;
	}
	if (strcmp(t->kind, "http") == 0)
		probe_http_start(t);
	else
		probe_exec_start(t);
}

/*
 * Stops an exec probe at exit (its group is SIGKILLed; the callback never
 * comes, the loop being over); its tick is freed by the caller.
 */
void
probe_cancel(struct watch_tick *t)
{
	if (t->run != NULL)
		procrun_kill(t->run);
}

/*
 * The probe's whole environment: the allowlisted names set in ours, and
 * which watcher and slot it probes.  The caller frees it.
 */
static char **
probe_exec_env(const struct watch_tick *t, json_t *names)
{
	char	**envp, who[192];
	size_t	  n;

	snprintf(who, sizeof(who), "watcher %s", t->name);
	envp = tool_env(names, 2, who, &n);
	envp[n++] = xasprintf("EAV_WATCHER=%s", t->name);
	envp[n] = xasprintf("EAV_WATCHER_SLOT=%s", t->slot);
	return envp;
}

static void
probe_exec_start(struct watch_tick *t)
{
	struct tool_conf	 conf;
	struct procrun_spec	 spec;
	char			 err[512], label[256], **envp;

	if (tool_conf_parse(t->config, &conf, err, sizeof(err)) == -1) {
		watcher_tick_done(t, "error", NULL, err);
		return;
	}
	envp = probe_exec_env(t, conf.env);
	snprintf(label, sizeof(label), "watcher %s slot %s", t->name,
	    t->slot);
	memset(&spec, 0, sizeof(spec));
	spec.argv = conf.argv;
	spec.envp = envp;
	spec.timeout_ms = t->timeout_ms;
	spec.max_output = conf.max_output;
	spec.label = label;
	t->run = procrun_start(t->p->base, &spec, probe_exec_done, t);
	tool_strv_free(envp);
	if (t->run == NULL) {
		snprintf(err, sizeof(err), "cannot start %s: %s",
		    conf.argv[0], strerror(errno));
		tool_conf_free(&conf);
		watcher_tick_done(t, "error", NULL, err);
		return;
	}
	log_debug("watcher %s slot %s: started %s pid=%d", t->name, t->slot,
	    conf.argv[0], (int)procrun_pid(t->run));
	tool_conf_free(&conf);
}

/* The probe program is over: records the tick's outcome. */
static void
probe_exec_done(const struct procrun_result *r, void *arg)
{
	struct watch_tick	*t = arg;
	char			 err[1024] = "", *body = NULL;
	const char		*outcome;

	t->run = NULL;
	outcome = probe_exec_outcome(t, r, &body, err, sizeof(err));
	tool_utf8_trim(err);
	watcher_tick_done(t, outcome, body, *err != '\0' ? err : NULL);
	free(body);
}

/* holds (with *body), false, or error (with err); see the header. */
static const char *
probe_exec_outcome(const struct watch_tick *t, const struct procrun_result *r,
    char **body, char *err, size_t len)
{
	const char	*prog = json_string_value(json_array_get(
			    json_object_get(t->config, "argv"), 0));

	switch (r->end) {
	case PROCRUN_WITHDRAWN:
		snprintf(err, len, "not started: eavd could not be told of "
		    "the probe's process group");
		return "error";
	case PROCRUN_EXEC_FAILED:
		snprintf(err, len, "cannot run %s: %s: %s", prog,
		    spawn_stage_name(r->failure.stage),
		    strerror(r->failure.error));
		return "error";
	case PROCRUN_OVERSIZE:
		snprintf(err, len, "output larger than %zu bytes",
		    (size_t)json_integer_value(json_object_get(t->config,
		    "max_output_bytes")));
		return "error";
	case PROCRUN_TIMED_OUT:
		snprintf(err, len, "timed out after %d ms; its process group "
		    "was killed", t->timeout_ms);
		return "error";
	case PROCRUN_SIGNALED:
		snprintf(err, len, "killed by signal %d (%s)", r->code,
		    strsignal(r->code));
		return "error";
	case PROCRUN_LATE:
		snprintf(err, len, "stdout was still open %d ms after the "
		    "probe exited (a process it started left its process "
		    "group)", PROCRUN_DRAIN_MS);
		return "error";
	default:
		return probe_exec_exit(t, r, body, err, len);
	}
}

/* 0: holds; false_exit: false; any other code: error with stderr. */
static const char *
probe_exec_exit(const struct watch_tick *t, const struct procrun_result *r,
    char **body, char *err, size_t len)
{
	json_int_t	 fx = json_integer_value(json_object_get(t->config,
			    "false_exit"));
	char		*tail;

	if (r->code == 0)
		return probe_exec_body(r, body, err, len);
	if (r->code == (fx > 0 ? fx : 1))
		return "false";
	tail = tool_clean(r->err, r->err_len < PROBE_STDERR_IN_ERROR ?
	    r->err_len : PROBE_STDERR_IN_ERROR);
	snprintf(err, len, "exited with code %d%s%s", r->code,
	    *tail != '\0' ? "; stderr: " : "", tail);
	free(tail);
	return "error";
}

/* stdout as the event body: a JSON object, or nothing for {}. */
static const char *
probe_exec_body(const struct procrun_result *r, char **body, char *err,
    size_t len)
{
	json_error_t	 jerr;
	json_t		*v;
	char		*why;
	size_t		 i;

	for (i = 0; i < r->out_len && strchr(" \t\r\n", r->out[i]) != NULL;
	    i++)
		;
	if (i == r->out_len) {
		*body = xstrdup("{}");
		return "holds";
	}
	v = json_loadb(r->out, r->out_len, JSON_REJECT_DUPLICATES, &jerr);
	if (v == NULL || !json_is_object(v)) {
		why = tool_clean(v == NULL ? jerr.text : "not an object",
		    strlen(v == NULL ? jerr.text : "not an object"));
		snprintf(err, len, "stdout is not a JSON object: %s", why);
		free(why);
		json_decref(v);
		return "error";
	}
	if ((*body = json_dumps(v, JSON_COMPACT)) == NULL)
		fatalx("cannot encode a probe's output");
	json_decref(v);
	return "holds";
}
