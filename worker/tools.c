/*
 * Built-in tools, and the dispatch to the other kinds (exec: tool_exec.c,
 * mcp: tool_mcp.c).
 * noop, fail and ledger.transfer finish at once (ledger's effect runs at
 * completion, in the same transaction); sleep is a timer on the worker's
 * loop, so many run side by side.  A tool's input arrives already parsed;
 * bad input is a permanent failure naming the field.
 */
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "clock.h"
#include "inject.h"
#include "log.h"
#include "worker.h"

#define SLEEP_MAX_MS	86400000

static void	tool_sleep(struct worker *, struct step *);
static void	tool_fail(struct step *);
static void	sleep_done_cb(evutil_socket_t, short, void *);

static void
sleep_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct step	*s = arg;
	struct worker	*w = s->w;

	(void)fd;
	(void)what;
	if (json_integer_value(json_object_get(s->input, "ms")) >
	    s->timeout_ms)
		step_finish(s, OUT_RETRY, NULL, "timed out: input.ms is more "
		    "than the tool's timeout_ms");
	else
		step_finish(s, OUT_SUCCEEDED, json_pack("{s:O?}", "slept_ms",
		    json_object_get(s->input, "ms")), NULL);
	cycle_wake(w);
}

static void
tool_sleep(struct worker *w, struct step *s)
{
	json_t		*ms = json_object_get(s->input, "ms");
	struct timeval	 tv;

	if (!json_is_integer(ms) || json_integer_value(ms) < 0 ||
	    json_integer_value(ms) > SLEEP_MAX_MS) {
		step_finish(s, OUT_FAILED, NULL, "input.ms must be an integer "
		    "from 0 to 86400000");
		return;
	}
	/* A sleep has no effect, so a time-out is a plain retryable failure. */
	tv = clock_tv(json_integer_value(ms) < s->timeout_ms ?
	    json_integer_value(ms) : s->timeout_ms);
	s->timer = evtimer_new(w->base, sleep_done_cb, s);
	if (s->timer == NULL || evtimer_add(s->timer, &tv) == -1)
		fatalx("cannot add sleep timer");
}

static void
tool_fail(struct step *s)
{
	json_t		*retry = json_object_get(s->input, "retryable");
	json_t		*msg = json_object_get(s->input, "message");
	const char	*text = json_is_string(msg) ? json_string_value(msg) :
			    "failed on purpose";

	if (retry != NULL && !json_is_boolean(retry)) {
		step_finish(s, OUT_FAILED, NULL, "input.retryable must be true "
		    "or false");
		return;
	}
	step_finish(s, json_is_true(retry) ? OUT_RETRY : OUT_FAILED, NULL,
	    text);
}

/* Starts a claimed step's tool; the step stays on the running list until
 * step_finish moves it to done. */
void
tool_start(struct worker *w, struct step *s)
{
	if (!json_is_object(s->input)) {
		step_finish(s, OUT_FAILED, NULL, "input must be a JSON object");
		return;
	}
	switch (INJECT(INJ_WORKER_BEFORE_EFFECT, s->id, s->tool)) {
	case INJECT_ERROR:
		step_finish(s, OUT_RETRY, NULL, "injected error");
		return;
	case INJECT_DROP:
		/* Dropped before the next database call: before the effect of
		 * ledger.transfer (made in that call), after a local tool's. */
		w->inject_drop = 1;
		break;
	}
	if (strcmp(s->kind, "exec") == 0) {
		exec_start(w, s);
		return;
	}
	if (strcmp(s->kind, "http") == 0) {
		http_start(w, s);
		return;
	}
	if (strcmp(s->kind, "mcp") == 0) {
		mcp_start(w, s);
		return;
	}
	if (strcmp(s->builtin, "ledger.transfer") == 0) {
		/* The effect runs at flush, in the completing transaction. */
		step_finish(s, OUT_LEDGER, NULL, NULL);
		return;
	}
	s->ran = 1;
	if (strcmp(s->builtin, "noop") == 0)
		step_finish(s, OUT_SUCCEEDED, json_object(), NULL);
	else if (strcmp(s->builtin, "sleep") == 0)
		tool_sleep(w, s);
	else if (strcmp(s->builtin, "fail") == 0)
		tool_fail(s);
	else {
		s->ran = 0;
		step_finish(s, OUT_FAILED, NULL, "this worker cannot run the "
		    "tool's kind");
	}
}

/*
 * Interrupts a running step on shutdown if its tool allows it: a sleep
 * that is cut short, or an MCP call not sent yet, has had no effect, so
 * the step is released.  Returns 1 if the step was released.
 */
int
tool_cancel(struct step *s)
{
	if (strcmp(s->kind, "mcp") == 0)
		return mcp_cancel(s);
	if (strcmp(s->builtin, "sleep") != 0 || s->timer == NULL)
		return 0;
	event_del(s->timer);
	step_finish(s, OUT_RELEASE, NULL, "worker stopping; sleep "
	    "interrupted before its end");
	return 1;
}
