/*
 * The claim/complete cycle.  Each round is one transaction
 * (eav.complete_and_claim): it completes what has finished and claims as
 * many steps as there are free slots (at most batch_size), then starts
 * them all at once; rounds repeat while claims come back full or
 * outcomes wait.  Every claimed step is started
 * immediately: a step is never "running" in the database while it waits
 * in a local queue, so an unknown outcome always means the tool may have
 * run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "exitcode.h"
#include "inject.h"
#include "log.h"
#include "worker.h"
#include "xalloc.h"

#define CYCLE_MAX_ROUNDS	16
#define DB_RETRIES		5
#define DB_MAX_ERRORS		5	/* failed calls in a row before exit */
#define KEY_WAIT_MS		1000	/* a step waiting for its key's turn */

static struct step *step_new(struct worker *, PGresult *, int);
static int	cycle_start_claimed(struct worker *, PGresult *);
static int	cycle_exchange(struct worker *, int);
static int	exchange_call(struct worker *, const char *, int, PGresult **);
static int	key_given(const struct step *);
static json_t	*batch_elem(const struct step *);
static char	*batch_json(struct worker *);
static int	gate_apply(struct step *, const char *);
static int	flush_ledger(struct worker *, struct step *);
static int	flush_ledgers(struct worker *);
static void	flush_report(struct worker *, PGresult *);
static const char *outcome_name(enum step_outcome);
static void	cycle_cb(evutil_socket_t, short, void *);

static const char *
outcome_name(enum step_outcome o)
{
	switch (o) {
	case OUT_SUCCEEDED:
		return "succeeded";
	case OUT_FAILED:
		return "failed";
	case OUT_RETRY:
		return "retry";
	case OUT_RELEASE:
		return "release";
	case OUT_UNKNOWN:
		return "unknown";
	case OUT_DEFERRED:
		return "deferred";
	case OUT_REPLAY:
		return "replay";
	case OUT_COLLISION:
		return "collision";
	case OUT_CONFLICT:
		return "conflict";
	default:
		return "?";
	}
}

/*
 * A call failed.  The outcomes in hand are kept: the connection is
 * dropped and made again with back-off, and the completion is sent again
 * then (it is idempotent per claim epoch).  Only a call that keeps
 * failing for another reason than the connection ends the worker, whose
 * steps eavd then reconciles.  Returns -1.
 */
int
cycle_db_error(struct worker *w, enum db_status st, const char *what)
{
	if (st != DB_CONN_LOST && ++w->db_errors >= DB_MAX_ERRORS)
		fatalx("%s failed %d times in a row: %s", what, w->db_errors,
		    w->db.errmsg);
	if (st != DB_CONN_LOST)
		log_warnx("%s failed (%s): %s; reconnecting and trying again",
		    what, db_status_name(st), w->db.errmsg);
	conn_lost(w);
	return -1;
}

/* Asks for a cycle on the next loop iteration. */
void
cycle_wake(struct worker *w)
{
	if (w->cycle_ev != NULL)
		event_active(w->cycle_ev, 0, 0);
}

/* Frees a step that is on no list. */
void
step_free(struct step *s)
{
	if (s->timer != NULL)
		event_free(s->timer);
	json_decref(s->input);
	json_decref(s->result);
	free(s->input_error);
	free(s->tool);
	free(s->builtin);
	free(s->kind);
	free(s->config);
	free(s->idem_key);
	free(s->trace_id);
	free(s->error);
	free(s);
}

/*
 * Records a tool's outcome and moves the step from running to done.
 * Takes ownership of result.
 */
void
step_finish(struct step *s, enum step_outcome o, json_t *result,
    const char *error)
{
	struct worker	*w = s->w;

	if (s->outcome == OUT_NONE) {
		TAILQ_REMOVE(&w->running, s, entry);
		w->nrunning--;
	} else
		fatalx("step %lld finished twice", s->id);
	s->outcome = o;
	s->result = result;
	s->error = error ? xstrdup(error) : NULL;
	/* Calls that leave the worker are worth a line; builtins are not. */
	if (strcmp(s->kind, "builtin") != 0 && o == OUT_SUCCEEDED)
		log_debug("step=%lld attempt=%d tool=%s: succeeded", s->id,
		    s->attempt, s->tool);
	else if (strcmp(s->kind, "builtin") != 0 && error != NULL)
		log_info("step=%lld attempt=%d tool=%s: %s", s->id, s->attempt,
		    s->tool, error);
	/* Only after a tool really ran: not for a release, an injected
	 * error or an input refused before the call. */
	if (s->ran && o != OUT_RELEASE)
		(void)INJECT(INJ_WORKER_AFTER_EFFECT_BEFORE_COMPLETE, s->id,
		    s->tool);
	TAILQ_INSERT_TAIL(&w->done, s, entry);
	w->ndone++;
}

static struct step *
step_new(struct worker *w, PGresult *res, int row)
{
	struct step	*s = xcalloc(1, sizeof(*s));
	json_error_t	 jerr;
	const char	*builtin;

	s->w = w;
	s->id = strtoll(PQgetvalue(res, row, 0), NULL, 10);
	s->task_id = strtoll(PQgetvalue(res, row, 1), NULL, 10);
	s->epoch = strtoll(PQgetvalue(res, row, 2), NULL, 10);
	s->attempt = atoi(PQgetvalue(res, row, 3));
	s->tool = xstrdup(PQgetvalue(res, row, 4));
	builtin = PQgetisnull(res, row, 5) ? "" : PQgetvalue(res, row, 5);
	s->builtin = xstrdup(builtin);
	s->idem_key = xstrdup(PQgetvalue(res, row, 7));
	s->trace_id = xstrdup(PQgetvalue(res, row, 8));
	s->timeout_ms = atoi(PQgetvalue(res, row, 9));
	/* A step of a tool that is not registered has no kind. */
	s->kind = xstrdup(PQgetvalue(res, row, 11));
	if (!PQgetisnull(res, row, 12))
		s->config = xstrdup(PQgetvalue(res, row, 12));
	/* jsonb holds numbers jansson cannot (beyond 64 bits): that step
	 * fails on its own, the worker goes on. */
	s->retry_after_ms = -1;
	s->input = json_loads(PQgetvalue(res, row, 6), JSON_DECODE_ANY, &jerr);
	if (s->input == NULL)
		s->input_error = xasprintf("input cannot be read by the "
		    "worker: %s", jerr.text);
	return s;
}

/*
 * The claim's gate for a step (see sql/0009, 0010, 0015, 0018): anything
 * but "" means the tool is not called, and the gate goes back as the
 * outcome for SQL to apply.  Returns 1 if the step was finished here.
 */
static int
gate_apply(struct step *s, const char *gate)
{
	char	err[160];

	if (*gate == '\0')
		return 0;
	s->gated = 1;
	if (strcmp(gate, "replay") == 0)
		step_finish(s, OUT_REPLAY, NULL, NULL);
	else if (strcmp(gate, "collision") == 0)
		step_finish(s, OUT_COLLISION, NULL, NULL);
	else if (strcmp(gate, "conflict") == 0)
		step_finish(s, OUT_CONFLICT, NULL, NULL);
	else if (strcmp(gate, "fail") == 0) {
		snprintf(err, sizeof(err), "not called: tool %s is "
		    "unavailable", s->tool);
		step_finish(s, OUT_FAILED, NULL, err);
	} else if (strcmp(gate, "wait") == 0) {
		s->retry_after_ms = KEY_WAIT_MS;
		step_finish(s, OUT_DEFERRED, NULL, "not called: another step "
		    "with this idempotency key is in flight");
	} else if (strncmp(gate, "budget:", 7) == 0) {
		s->retry_after_ms = strtoll(gate + 7, NULL, 10);
		step_finish(s, OUT_DEFERRED, NULL, "not called: the retry "
		    "budget of its queue or tool is spent");
	} else	/* defer, or one this worker does not know: the safe one */
		step_finish(s, OUT_DEFERRED, NULL, "not called: the tool is "
		    "rate limited or unavailable");
	return 1;
}

/* Starts the steps a claim returned (rows with status "claimed"). */
static int
cycle_start_claimed(struct worker *w, PGresult *res)
{
	struct step	*s;
	int		 i, n = 0;

	for (i = 0; i < PQntuples(res); i++) {
		if (strcmp(PQgetvalue(res, i, 10), "claimed") != 0)
			continue;
		n++;
		s = step_new(w, res, i);
		TAILQ_INSERT_TAIL(&w->running, s, entry);
		w->nrunning++;
		log_debug("claimed step=%lld epoch=%lld attempt=%d tool=%s",
		    s->id, s->epoch, s->attempt, s->tool);
		if (INJECT(INJ_WORKER_AFTER_CLAIM, s->id, s->tool) ==
		    INJECT_ERROR) {
			step_finish(s, OUT_RETRY, NULL, "injected error");
			continue;
		}
		if (s->input == NULL) {
			step_finish(s, OUT_FAILED, NULL, s->input_error);
			continue;
		}
		if (gate_apply(s, PQgetvalue(res, i, 13)) == 0)
			tool_start(w, s);
	}
	return n;
}

/* Runs an in-database tool: its effect and completion are one call. */
static int
flush_ledger(struct worker *w, struct step *s)
{
	PGresult	*res = NULL;
	char		 id[24], epoch[24];
	const char	*params[3] = { id, epoch, w->actor };
	enum db_status	 st;
	int		 tries;

	snprintf(id, sizeof(id), "%lld", s->id);
	snprintf(epoch, sizeof(epoch), "%lld", s->epoch);
	for (tries = 0; tries < DB_RETRIES; tries++)
		if ((st = db_call(&w->db, DB_LEDGER_TRANSFER, params,
		    &res)) != DB_RETRY)
			break;
	if (st != DB_OK)
		return cycle_db_error(w, st, "ledger.transfer");
	if (strcmp(PQgetvalue(res, 0, 0), "fenced") == 0)
		log_warnx("completion of step %lld epoch %lld was fenced: "
		    "the step was reconciled meanwhile", s->id, s->epoch);
	PQclear(res);
	return 0;
}

static void
flush_report(struct worker *w, PGresult *res)
{
	int	i;

	(void)w;
	for (i = 0; i < PQntuples(res); i++) {
		if (strcmp(PQgetvalue(res, i, 10), "fenced") == 0)
			log_warnx("completion of step %s was fenced: the step "
			    "was reconciled meanwhile", PQgetvalue(res, i, 0));
		else if (strcmp(PQgetvalue(res, i, 10), "already_applied") == 0)
			log_info("completion of step %s was already applied",
			    PQgetvalue(res, i, 0));
	}
}

/* True if the step's key was given by a client (not eav:<task>:<n>). */
static int
key_given(const struct step *s)
{
	char	derived[64];

	snprintf(derived, sizeof(derived), "eav:%lld:%lld", s->task_id,
	    s->id - s->task_id * 128);
	return strcmp(s->idem_key, derived) != 0;
}

/*
 * One step of a completion batch.  Besides the outcome: "rec" asks SQL to
 * record a client-given key's final outcome; "tool" and "tool_error" say
 * what a call of a non-builtin tool tells about the tool's health;
 * "retry_after_ms" and "rate_limited" go with a deferral.
 */
static json_t *
batch_elem(const struct step *s)
{
	json_t	*o;
	int	 final;

	final = s->outcome == OUT_SUCCEEDED || s->outcome == OUT_FAILED;
	o = json_pack("{s:I, s:I, s:s, s:O?, s:s?, s:s?}", "id",
	    (json_int_t)s->id, "epoch", (json_int_t)s->epoch,
	    "outcome", outcome_name(s->outcome), "result", s->result,
	    "error", s->error, "detected_by", s->detected_by);
	if (o == NULL)
		fatalx("cannot build completion batch");
	if (final && !s->gated && key_given(s))
		json_object_set_new(o, "rec", json_true());
	if (!s->gated && strcmp(s->kind, "builtin") != 0 &&
	    s->outcome != OUT_RELEASE && (s->ran || s->tool_error)) {
		json_object_set_new(o, "tool", json_string(s->tool));
		json_object_set_new(o, "tool_error", json_boolean(
		    s->tool_error || s->outcome == OUT_UNKNOWN));
	}
	if (s->outcome == OUT_DEFERRED && s->retry_after_ms >= 0)
		json_object_set_new(o, "retry_after_ms",
		    json_integer(s->retry_after_ms));
	if (s->rate_limited)
		json_object_set_new(o, "rate_limited", json_true());
	return o;
}

/* The done list (ledger steps excepted) as a completion batch; the
 * caller frees the text. */
static char *
batch_json(struct worker *w)
{
	struct step	*s;
	json_t		*batch = json_array();
	char		*text;

	TAILQ_FOREACH(s, &w->done, entry) {
		if (s->outcome == OUT_LEDGER)
			continue;
		if (json_array_append_new(batch, batch_elem(s)) == -1)
			fatalx("cannot build completion batch");
	}
	if ((text = json_dumps(batch, JSON_COMPACT)) == NULL)
		fatalx("cannot encode completion batch");
	json_decref(batch);
	return text;
}

/* Runs the ledger steps of the done list, one transaction each. */
static int
flush_ledgers(struct worker *w)
{
	struct step	*s, *next;

	TAILQ_FOREACH_SAFE(s, &w->done, entry, next) {
		if (s->outcome != OUT_LEDGER)
			continue;
		if (flush_ledger(w, s) == -1)
			return -1;
		TAILQ_REMOVE(&w->done, s, entry);
		w->ndone--;
		step_free(s);
	}
	return 0;
}

/* Sends one complete-and-claim call, retrying deadlocks; -1 on error. */
static int
exchange_call(struct worker *w, const char *batch, int limit, PGresult **res)
{
	char		 inc[24], pid[16], lim[16];
	const char	*params[7] = { w->actor, batch, w->node, inc, pid, lim,
			    w->queues };
	enum db_status	 st = DB_OK;
	int		 tries;

	snprintf(inc, sizeof(inc), "%lld", w->incarnation);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(lim, sizeof(lim), "%d", limit);
	for (tries = 0; tries < DB_RETRIES; tries++) {
		if ((st = db_send(&w->db, DB_EXCHANGE, params)) != DB_OK)
			break;
		if (w->ndone > 0)
			(void)INJECT(INJ_WORKER_MID_COMPLETE, 0, NULL);
		if ((st = db_finish(&w->db, DB_EXCHANGE, res)) != DB_RETRY)
			break;
	}
	if (st == DB_REFUSED) {
		log_error("claim refused: %s; this worker belongs to a "
		    "superseded eavd", w->db.errmsg);
		exit(EAV_EXIT_FATAL);
	}
	if (st != DB_OK)
		return cycle_db_error(w, st, "complete and claim");
	return 0;
}

/*
 * Completes the done list and claims up to limit steps (0: none) in one
 * transaction, then starts what it claimed.  Returns how many steps were
 * claimed, or -1 if the call failed (the done list is kept for after the
 * reconnect).
 */
static int
cycle_exchange(struct worker *w, int limit)
{
	struct step	*s;
	PGresult	*res = NULL;
	char		*batch;
	int		 n;

	if (w->inject_drop) {
		w->inject_drop = 0;
		conn_lost(w);
		return -1;
	}
	if (flush_ledgers(w) == -1)
		return -1;
	if (w->ndone == 0 && limit == 0)
		return 0;
	batch = batch_json(w);
	n = exchange_call(w, batch, limit, &res);
	free(batch);
	if (n == -1)
		return -1;
	w->db_errors = 0;
	while ((s = TAILQ_FIRST(&w->done)) != NULL) {
		TAILQ_REMOVE(&w->done, s, entry);
		w->ndone--;
		step_free(s);
	}
	flush_report(w, res);
	n = cycle_start_claimed(w, res);
	PQclear(res);
	return n;
}

/* Completes every step of the done list; 0, or -1 (see cycle_exchange). */
int
cycle_flush(struct worker *w)
{
	return cycle_exchange(w, 0) == -1 ? -1 : 0;
}

static void
cycle_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cycle_run(arg);
}

/* Creates the event that cycle_wake activates. */
void
cycle_init(struct worker *w)
{
	w->cycle_ev = event_new(w->base, -1, 0, cycle_cb, w);
	if (w->cycle_ev == NULL)
		fatalx("event_new failed");
}

/* One cycle; see the header.  Called from the loop via cycle_wake. */
void
cycle_run(struct worker *w)
{
	int	round, free_slots, limit, n;

	if (!db_is_connected(&w->db)) {
		/* libpq closed it under us: nobody else will notice. */
		if (w->db.conn != NULL)
			conn_lost(w);
		return;
	}
	for (round = 0; round < CYCLE_MAX_ROUNDS; round++) {
		free_slots = w->cfg.worker_concurrency - w->nrunning;
		limit = w->stopping || w->kill.stopped_all ||
		    free_slots <= 0 ? 0 :
		    free_slots < w->cfg.worker_batch_size ? free_slots :
		    w->cfg.worker_batch_size;
		if (w->ndone == 0 && limit == 0)
			break;
		if ((n = cycle_exchange(w, limit)) == -1)
			return;
		if (n < limit && w->ndone == 0)
			break;
	}
	/* Wake-ups read by our own calls would otherwise be lost. */
	if (round == CYCLE_MAX_ROUNDS || db_drain_notifies(&w->db) > 0)
		cycle_wake(w);
	conn_reload(w);
	worker_maybe_exit(w);
}
