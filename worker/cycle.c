/*
 * The claim/complete cycle.  A cycle completes what has finished, then
 * claims as many steps as there are free slots (at most batch_size per
 * claim), starts them all at once, completes those that finished at once,
 * and repeats while claims come back full.  Every claimed step is started
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

static int	cycle_claim(struct worker *, int);
static struct step *step_new(struct worker *, PGresult *, int);
static int	flush_ledger(struct worker *, struct step *);
static int	flush_batch(struct worker *);
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
	if (o != OUT_LEDGER)
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
	s->timeout_ms = atoi(PQgetvalue(res, row, 9));
	/* jsonb holds numbers jansson cannot (beyond 64 bits): that step
	 * fails on its own, the worker goes on. */
	s->input = json_loads(PQgetvalue(res, row, 6), JSON_DECODE_ANY, &jerr);
	if (s->input == NULL)
		s->input_error = xasprintf("input cannot be read by the "
		    "worker: %s", jerr.text);
	return s;
}

/* Claims up to limit steps and starts them; returns how many, or -1. */
static int
cycle_claim(struct worker *w, int limit)
{
	PGresult	*res = NULL;
	struct step	*s;
	char		 inc[24], pid[16], lim[16];
	const char	*params[5] = { w->node, inc, pid, lim, w->queues };
	enum db_status	 st;
	int		 i, n;

	snprintf(inc, sizeof(inc), "%lld", w->incarnation);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(lim, sizeof(lim), "%d", limit);
	st = db_call(&w->db, DB_CLAIM, params, &res);
	switch (st) {
	case DB_OK:
		break;
	case DB_RETRY:
		return 0;
	case DB_REFUSED:
		log_error("claim refused: %s; this worker belongs to a "
		    "superseded eavd", w->db.errmsg);
		exit(EAV_EXIT_FATAL);
	default:
		return cycle_db_error(w, st, "claim");
	}
	w->db_errors = 0;
	n = PQntuples(res);
	for (i = 0; i < n; i++) {
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
		tool_start(w, s);
	}
	PQclear(res);
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
	if (INJECT(INJ_WORKER_BEFORE_EFFECT, s->id, s->tool) == INJECT_DROP) {
		conn_lost(w);
		return -1;
	}
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
		if (strcmp(PQgetvalue(res, i, 1), "fenced") == 0)
			log_warnx("completion of step %s was fenced: the step "
			    "was reconciled meanwhile", PQgetvalue(res, i, 0));
		else if (strcmp(PQgetvalue(res, i, 1), "already_applied") == 0)
			log_info("completion of step %s was already applied",
			    PQgetvalue(res, i, 0));
	}
}

/* Completes every non-ledger step of the done list in one statement. */
static int
flush_batch(struct worker *w)
{
	struct step	*s;
	json_t		*batch = json_array(), *o;
	PGresult	*res = NULL;
	char		*text;
	const char	*params[2];
	enum db_status	 st = DB_OK;
	int		 tries;

	TAILQ_FOREACH(s, &w->done, entry) {
		if (s->outcome == OUT_LEDGER)
			continue;
		o = json_pack("{s:I, s:I, s:s, s:O?, s:s?}", "id",
		    (json_int_t)s->id, "epoch", (json_int_t)s->epoch,
		    "outcome", outcome_name(s->outcome), "result", s->result,
		    "error", s->error);
		if (o == NULL || json_array_append_new(batch, o) == -1)
			fatalx("cannot build completion batch");
	}
	if (json_array_size(batch) == 0) {
		json_decref(batch);
		return 0;
	}
	if ((text = json_dumps(batch, JSON_COMPACT)) == NULL)
		fatalx("cannot encode completion batch");
	json_decref(batch);
	params[0] = w->actor;
	params[1] = text;
	for (tries = 0; tries < DB_RETRIES; tries++) {
		if ((st = db_send(&w->db, DB_COMPLETE, params)) != DB_OK)
			break;
		(void)INJECT(INJ_WORKER_MID_COMPLETE, 0, NULL);
		if ((st = db_finish(&w->db, DB_COMPLETE, &res)) != DB_RETRY)
			break;
	}
	free(text);
	if (st != DB_OK)
		return cycle_db_error(w, st, "completion");
	flush_report(w, res);
	PQclear(res);
	return 0;
}

/*
 * Completes every step of the done list.  Returns 0, or -1 if the
 * connection broke (the list is kept for after the reconnect).
 */
int
cycle_flush(struct worker *w)
{
	struct step	*s, *next;

	if (w->ndone == 0)
		return 0;
	TAILQ_FOREACH_SAFE(s, &w->done, entry, next) {
		if (s->outcome != OUT_LEDGER)
			continue;
		if (flush_ledger(w, s) == -1)
			return -1;
		TAILQ_REMOVE(&w->done, s, entry);
		w->ndone--;
		step_free(s);
	}
	if (flush_batch(w) == -1)
		return -1;
	w->db_errors = 0;
	while ((s = TAILQ_FIRST(&w->done)) != NULL) {
		TAILQ_REMOVE(&w->done, s, entry);
		w->ndone--;
		step_free(s);
	}
	return 0;
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

	if (!db_is_connected(&w->db))
		return;
	if (cycle_flush(w) == -1)
		return;
	for (round = 0; round < CYCLE_MAX_ROUNDS && !w->stopping; round++) {
		free_slots = w->cfg.worker_concurrency - w->nrunning;
		if (free_slots <= 0)
			break;
		limit = free_slots < w->cfg.worker_batch_size ? free_slots :
		    w->cfg.worker_batch_size;
		if ((n = cycle_claim(w, limit)) == -1)
			return;
		if (cycle_flush(w) == -1)
			return;
		if (n < limit)
			break;
	}
	/* Wake-ups read by our own calls would otherwise be lost. */
	if (round == CYCLE_MAX_ROUNDS || db_drain_notifies(&w->db) > 0)
		cycle_wake(w);
	worker_maybe_exit(w);
}
