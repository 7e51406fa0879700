/*
 * The event classifier.  An event no rule routes waits in state
 * classifying (eav.inbox_ingest with p_classify) for a program to name
 * its route.  [producer] classifier names an exec tool of eav.tools, so
 * the program has what the worker's exec tool has: argv without a shell,
 * only its allowlisted environment, rlimits, an output cap and the
 * tool's timeout_ms.  This file leases the waiting events
 * (eav.event_classify_take: FOR UPDATE SKIP LOCKED, for the time-out and
 * CLASSIFY_LEASE_GRACE_MS), runs the program once per event with the
 * event as a JSON object on stdin, and reports its stdout, or why there
 * is none, to eav.event_classified, which routes the event by the rule
 * named in {"route": "<rule>"} or, on an error, a time-out, garbage, an
 * unknown route or a huge answer, creates its clarification task
 * (classifier.fallback).  Never a lost event.
 *
 * Invariants:
 *  - At most CLASSIFY_MAX programs run at once, and with the watchers'
 *    probes at most EAV_PRODUCER_PROBES_MAX (eavd tracks that many of
 *    our process groups and kills them if we die).
 *  - An answer that cannot be reported (the connection is gone, we were
 *    killed) is dropped: the lease runs out, a producer takes the event
 *    again, and past classifier_max_attempts leases the database falls
 *    back by itself.
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

#define CLASSIFY_MAX		4
#define CLASSIFY_LEASE_GRACE_MS	5000
#define CLASSIFY_STDERR_KEEP	256	/* bytes of stderr in the reason */

struct classify_run {
	TAILQ_ENTRY(classify_run)	 entry;
	struct producer			*p;
	char				*event_id;
	struct procrun			*run;
	int				 timeout_ms;
};

/* The classifier tool, as eav.tools has it at the time of a take. */
struct classify_tool {
	struct tool_conf	 conf;
	int			 timeout_ms;
};

static int	classify_tool_read(struct producer *, struct classify_tool *,
		    char *, size_t);
static int	classify_take(struct producer *, struct classify_tool *, int);
static void	classify_start(struct producer *, struct classify_tool *,
		    PGresult *, int);
static char    *classify_input(PGresult *, int);
static void	classify_done(const struct procrun_result *, void *);
static void	classify_reason(const struct classify_run *,
		    const struct procrun_result *, char *, size_t);
static void	classify_report(struct producer *, const char *, const char *,
		    const char *);
static void	classify_run_free(struct classify_run *);

/* True if [producer] classifier names a tool. */
int
classify_enabled(const struct producer *p)
{
	return p->cfg.producer_classifier != NULL &&
	    p->cfg.producer_classifier[0] != '\0';
}

void
classify_init(struct producer *p)
{
	TAILQ_INIT(&p->classify_runs);
}

/*
 * Reads the classifier tool; -1 with the reason in err if it is not an
 * exec tool eav can run (its events then fall back, with that reason).
 */
static int
classify_tool_read(struct producer *p, struct classify_tool *t, char *err,
    size_t len)
{
	const char	*params[1] = { p->cfg.producer_classifier };
	PGresult	*res = NULL;
	json_t		*config;
	json_error_t	 jerr;
	int		 r;

	if (db_call(&p->db, DB_CLASSIFIER_TOOL, params, &res) != DB_OK)
		return -2;
	if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 0), "exec")) {
		snprintf(err, len, "the classifier tool \"%s\" is not a "
		    "registered exec tool", p->cfg.producer_classifier);
		PQclear(res);
		return -1;
	}
	t->timeout_ms = atoi(PQgetvalue(res, 0, 2));
	config = json_loads(PQgetvalue(res, 0, 1), 0, &jerr);
	PQclear(res);
	r = config == NULL ? -1 : tool_conf_parse(config, &t->conf, err, len);
	if (config == NULL)
		snprintf(err, len, "the classifier tool's config cannot be "
		    "read: %s", jerr.text);
	json_decref(config);
	return r;
}

/*
 * Leases the waiting events there is room for and starts a program for
 * each.  Called after every ingest cycle and when a run ends.
 */
void
classify_wake(struct producer *p)
{
	struct classify_tool	 tool;
	char			 err[512];
	int			 room, r;

	if (!classify_enabled(p) || !db_is_connected(&p->db) || p->stopping)
		return;
	room = CLASSIFY_MAX - p->nclassify;
	if (EAV_PRODUCER_PROBES_MAX - p->nprobes < room)
		room = EAV_PRODUCER_PROBES_MAX - p->nprobes;
	if (room <= 0)
		return;
	memset(&tool, 0, sizeof(tool));
	if ((r = classify_tool_read(p, &tool, err, sizeof(err))) == -2) {
		if (!db_is_connected(&p->db))
			ingest_lost(p);
		return;
	}
	if (r == -1) {
		/* Nothing can run: each event falls back with the reason. */
		log_warnx("classifier: %s", err);
		while (classify_take(p, NULL, CLASSIFY_MAX) > 0)
			;
		return;
	}
	classify_take(p, &tool, room);
	tool_conf_free(&tool.conf);
}

/*
 * Takes up to room events.  tool NULL: the classifier cannot run, each
 * is reported with that error at once.  Returns how many were taken.
 */
static int
classify_take(struct producer *p, struct classify_tool *tool, int room)
{
	PGresult	*res = NULL;
	char		 lim[16], lease[16];
	const char	*params[3] = { lim, lease, p->actor };
	enum db_status	 st;
	int		 i, n;

	snprintf(lim, sizeof(lim), "%d", room);
	snprintf(lease, sizeof(lease), "%d", (tool != NULL ?
	    tool->timeout_ms : 0) + CLASSIFY_LEASE_GRACE_MS);
	st = db_call(&p->db, DB_CLASSIFY_TAKE, params, &res);
	if (st == DB_CONN_LOST)
		ingest_lost(p);
	if (st != DB_OK)
		return 0;
	n = PQntuples(res);
	for (i = 0; i < n; i++)
		if (tool != NULL)
			classify_start(p, tool, res, i);
		else
			classify_report(p, PQgetvalue(res, i, 0), NULL,
			    "the classifier tool cannot run: it is not a "
			    "registered exec tool with a valid config");
	PQclear(res);
	return n;
}

/* The event of row i as the program's stdin: a JSON object. */
static char *
classify_input(PGresult *res, int i)
{
	json_t		*o, *body;
	json_error_t	 jerr;
	char		*s;

	body = json_loads(PQgetvalue(res, i, 4), JSON_DECODE_ANY, &jerr);
	if (body == NULL)
		body = json_string(PQgetvalue(res, i, 4));
	o = json_pack("{s:I, s:s, s:s, s:s, s:o, s:i}",
	    "event_id", (json_int_t)strtoll(PQgetvalue(res, i, 0), NULL, 10),
	    "source", PQgetvalue(res, i, 1), "type", PQgetvalue(res, i, 2),
	    "event_key", PQgetvalue(res, i, 3), "body", body,
	    "attempt", atoi(PQgetvalue(res, i, 5)));
	if (o == NULL)
		fatalx("cannot build the classifier's input");
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (s == NULL)
		fatalx("cannot encode the classifier's input");
	return s;
}

/* Starts the program for the leased event of row i. */
static void
classify_start(struct producer *p, struct classify_tool *tool,
    PGresult *res, int i)
{
	struct classify_run	*c = xcalloc(1, sizeof(*c));
	struct procrun_spec	 spec;
	char			 label[64], err[128], **envp, *in;
	size_t			 n;

	c->p = p;
	c->event_id = xstrdup(PQgetvalue(res, i, 0));
	c->timeout_ms = tool->timeout_ms;
	snprintf(label, sizeof(label), "classifier event %s", c->event_id);
	envp = tool_env(tool->conf.env, 1, label, &n);
	envp[n] = xasprintf("EAV_EVENT_ID=%s", c->event_id);
	in = classify_input(res, i);
	memset(&spec, 0, sizeof(spec));
	spec.argv = tool->conf.argv;
	spec.envp = envp;
	spec.in = in;
	spec.in_len = strlen(in);
	spec.timeout_ms = tool->timeout_ms;
	spec.max_output = tool->conf.max_output;
	spec.limits = &tool->conf.limits;
	spec.label = label;
	TAILQ_INSERT_TAIL(&p->classify_runs, c, entry);
	p->nclassify++;
	p->nprobes++;
	c->run = procrun_start(p->base, &spec, classify_done, c);
	tool_strv_free(envp);
	free(in);
	if (c->run == NULL) {
		snprintf(err, sizeof(err), "cannot start: %s",
		    strerror(errno));
		classify_report(p, c->event_id, NULL, err);
		classify_run_free(c);
	}
}

/* Why a run gave no answer to report as output. */
static void
classify_reason(const struct classify_run *c, const struct procrun_result *r,
    char *err, size_t len)
{
	char	*tail;

	switch (r->end) {
	case PROCRUN_EXEC_FAILED:
		snprintf(err, len, "cannot run it: %s: %s",
		    spawn_stage_name(r->failure.stage),
		    strerror(r->failure.error));
		break;
	case PROCRUN_OVERSIZE:
		snprintf(err, len, "its output passed the tool's "
		    "max_output_bytes");
		break;
	case PROCRUN_TIMED_OUT:
		snprintf(err, len, "timed out after %d ms; its process group "
		    "was killed", c->timeout_ms);
		break;
	case PROCRUN_SIGNALED:
		snprintf(err, len, "killed by signal %d (%s)", r->code,
		    strsignal(r->code));
		break;
	case PROCRUN_LATE:
		snprintf(err, len, "stdout was still open %d ms after it "
		    "exited", PROCRUN_DRAIN_MS);
		break;
	default:
		tail = tool_clean(r->err, r->err_len < CLASSIFY_STDERR_KEEP ?
		    r->err_len : CLASSIFY_STDERR_KEEP);
		snprintf(err, len, "exited with code %d%s%s", r->code,
		    *tail != '\0' ? "; stderr: " : "", tail);
		free(tail);
	}
	tool_utf8_trim(err);
}

/* The program is over: its answer, or why there is none, is reported. */
static void
classify_done(const struct procrun_result *r, void *arg)
{
	struct classify_run	*c = arg;
	struct producer		*p = c->p;
	char			 err[1024];

	c->run = NULL;
	if (r->end == PROCRUN_WITHDRAWN) {
		/* Never ran (eavd was not told of it): the lease runs out. */
		log_warnx("classifier for event %s not started: eavd could "
		    "not be told of its process group", c->event_id);
	} else if (r->end == PROCRUN_EXITED && r->code == 0) {
		classify_report(p, c->event_id, r->out, NULL);
	} else {
		classify_reason(c, r, err, sizeof(err));
		log_info("classifier for event %s: %s", c->event_id, err);
		classify_report(p, c->event_id, NULL, err);
	}
	classify_run_free(c);
	classify_wake(p);
}

/* eav.event_classified: routes the event or makes its clarification. */
static void
classify_report(struct producer *p, const char *event_id, const char *out,
    const char *error)
{
	PGresult	*res = NULL;
	const char	*params[4] = { event_id, out, error, p->actor };
	enum db_status	 st;

	if (!db_is_connected(&p->db)) {
		log_warnx("classifier answer for event %s not reported (no "
		    "database); the event is classified again when its lease "
		    "runs out", event_id);
		return;
	}
	st = db_call(&p->db, DB_CLASSIFIED, params, &res);
	if (st == DB_OK) {
		log_debug("event %s classified: %s", event_id,
		    PQgetvalue(res, 0, 0));
		PQclear(res);
	} else if (st == DB_CONN_LOST)
		ingest_lost(p);
	else
		log_warnx("cannot report the classifier's answer for event "
		    "%s: %s", event_id, p->db.errmsg);
}

static void
classify_run_free(struct classify_run *c)
{
	TAILQ_REMOVE(&c->p->classify_runs, c, entry);
	c->p->nclassify--;
	c->p->nprobes--;
	free(c->event_id);
	free(c);
}

/* Ends the programs still running at exit (their leases run out). */
void
classify_free(struct producer *p)
{
	struct classify_run	*c, *next;

	TAILQ_FOREACH_SAFE(c, &p->classify_runs, entry, next) {
		if (c->run != NULL)
			procrun_kill(c->run);
		classify_run_free(c);
	}
}
