/*
 * The mcp tool: a call to a tool of an MCP server that speaks JSON-RPC
 * 2.0 on its stdin and stdout, one message a line.  The worker keeps one
 * server process per MCP tool (started at the tool's first call, with
 * the recipe of toolproc.c) and sends it many calls at once, told apart
 * by their ids, all on the worker's event loop.
 *
 * A server's life: DOWN (no process) -> STARTING (initialize sent) ->
 * LISTING (tools/list sent, page after page while its answer names a
 * nextCursor and not the tool, up to MCP_LIST_PAGES) -> READY (calls are
 * sent as they come); a
 * server that dies, times out or breaks the protocol is SIGKILLed (its
 * whole group) and is DOWN again, to be started anew after a back-off
 * (100 ms, doubling to 30 s, reset by a successful initialize).  A
 * server whose tool's config changed, or whose worker stops, is CLOSING:
 * it gets no new call, and once its calls are answered its stdin is
 * closed, its group gets SIGTERM and, MCP_CLOSE_MS later, SIGKILL.
 *
 * Invariants:
 *  - A call is "sent" once it is queued for the server's stdin; from then
 *    on only an answer tells what happened.  A call never sent (the
 *    server did not start in time, or is being replaced) is a retryable
 *    failure; a sent call whose server dies, closes its stdout, breaks the
 *    protocol (invalid JSON, an answer to an id no request in flight
 *    has) or takes longer than the tool's timeout_ms has an unknown
 *    outcome (tool_lost, tool_timeout), and the server is killed: after
 *    that nothing it says can reach a step.
 *  - An answer is taken whole or not at all: a result is stored only if
 *    it is a JSON object no larger than max_output_bytes.  A line longer
 *    than that plus MCP_LINE_SLACK is never held: it is scanned as it
 *    passes (jscan.c) and judged at its end, as a line is judged, but
 *    for what it carries: a response to a call fails it ("response
 *    larger than N bytes": the server answered, so the outcome is known),
 *    a notification or request is dropped (a request gets an error).
 *    Messages cannot hold a newline, so the next line starts after it
 *    and the server is kept; a line that is not JSON loses it at once.
 *  - Outcomes: a result succeeded, unless its isError is true (failed);
 *    JSON-RPC errors -32700, -32600, -32601 and -32602 failed, any other
 *    code retryable.  tool_error marks the outcomes that count against
 *    the tool's health: everything but invalid params and a tool's own
 *    isError result.
 */
#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "clock.h"
#include "config.h"
#include "jscan.h"
#include "log.h"
#include "toolproc.h"
#include "worker.h"
#include "xalloc.h"

#define MCP_PROTOCOL		"2025-06-18"
#define MCP_BACKOFF_MIN		100
#define MCP_BACKOFF_MAX		30000
#define MCP_CLOSE_MS		2000	/* from SIGTERM to SIGKILL */
#define MCP_INIT_DEFAULT	10000
#define MCP_LIST_PAGES		100	/* of tools/list before giving up */
#define MCP_LINE_SLACK		65536	/* a message's size over the result */
#define MCP_STDERR_LOG		65536	/* bytes of stderr logged a process */
#define MCP_STDERR_LINE		4096
#define MCP_TEXT_MAX		512	/* of a server's text in an error */
#define MCP_READ		65536
#define MCP_READS		16	/* of stdout in one callback, at most */
#define MCP_SKIP_CHUNK		16384	/* bytes of a skipped line a pass */
#define MCP_INVALID_RESPONSE	"the MCP server sent an invalid response " \
				"(an id that is not an integer, no result " \
				"or error, or both)"

enum mcp_state { MCP_DOWN, MCP_STARTING, MCP_LISTING, MCP_READY,
	MCP_CLOSING };

struct mcp_server;

struct mcp_call {
	TAILQ_ENTRY(mcp_call)	 entry;
	struct mcp_server	*srv;
	struct step		*s;
	long long		 id;		/* 0: not sent yet */
	struct event		*timer;		/* the tool's timeout_ms */
};

TAILQ_HEAD(mcp_calls, mcp_call);

struct mcp_server {
	TAILQ_ENTRY(mcp_server)	 entry;
	struct worker		*w;
	char			*tool;		/* the eav tool */
	char			*config;	/* its config, as claimed */
	char			*remote;	/* its name on the server */
	struct tool_conf	 conf;
	int			 init_timeout_ms;
	enum mcp_state		 state;
	struct toolproc		*proc;		/* NULL: no process */
	struct event		*ev[TP_NFDS];	/* TP_IN: while output waits */
	struct evbuffer		*out, *in, *err;
	struct jscan		*skip;		/* a line over the cap */
	size_t			 skip_len;	/* bytes of it so far */
	size_t			 err_logged, err_dropped;
	long long		 next_id, init_id, list_id;
	int			 pages;		/* of tools/list asked for */
	int			 missing;	/* tools/list lacks the tool */
	struct event		*timer;		/* see mcp_timer_cb */
	int			 backoff_ms;
	int64_t			 retry_at;	/* DOWN: no start before */
	char			 why[256];	/* why the last start failed */
	struct mcp_calls	 calls;		/* sent and waiting */
	int			 ncalls, nsent;
	int64_t			 used_at;
};

TAILQ_HEAD(mcp_servers, mcp_server);

static struct mcp_servers servers = TAILQ_HEAD_INITIALIZER(servers);
static int		  nservers;
static int		  ncalls;

static struct mcp_server *mcp_server_get(struct worker *, struct step *,
		    enum step_outcome *, char *, size_t);
static struct mcp_server *mcp_server_new(struct worker *, struct step *,
		    char *, size_t);
static int	mcp_server_evict(void);
static void	mcp_server_retire(struct mcp_server *);
static void	mcp_server_close(struct mcp_server *);
static void	mcp_server_free(struct mcp_server *);
static void	mcp_spawn(struct mcp_server *);
static void	mcp_watch(struct mcp_server *);
static void	mcp_proc_drop(struct mcp_server *);
static void	mcp_exited(struct toolproc *);
static void	mcp_orphan_exited(struct toolproc *);
static void	mcp_why_ended(struct mcp_server *, char *, size_t,
		    const char *);
static void	mcp_start_failed(struct mcp_server *, const char *);
static void	mcp_lost(struct mcp_server *, const char *);
static void	mcp_backoff(struct mcp_server *);
static void	mcp_timer_cb(evutil_socket_t, short, void *);
static void	mcp_io_cb(evutil_socket_t, short, void *);
static void	mcp_send(struct mcp_server *, json_t *);
static void	mcp_flush(struct mcp_server *);
static void	mcp_read_out(struct mcp_server *);
static int	mcp_lines(struct mcp_server *);
static size_t	mcp_line_max(const struct mcp_server *);
static void	mcp_skip(struct mcp_server *, ev_ssize_t);
static void	mcp_skipped(struct mcp_server *);
static void	mcp_skipped_request(struct mcp_server *, struct jscan *);
static void	mcp_skipped_response(struct mcp_server *, struct jscan *);
static json_t  *mcp_member_value(const struct jscan *, const char *);
static void	mcp_read_err(struct mcp_server *);
static void	mcp_log_err(struct mcp_server *, int);
static void	mcp_message(struct mcp_server *, const char *, size_t);
static void	mcp_request(struct mcp_server *, json_t *);
static void	mcp_response(struct mcp_server *, json_t *);
static int	mcp_response_valid(struct mcp_server *, json_t *, int, int);
static int	mcp_kind(json_t *);
static void	mcp_unasked(struct mcp_server *, long long);
static void	mcp_initialized(struct mcp_server *, json_t *, json_t *);
static void	mcp_list(struct mcp_server *, const char *);
static void	mcp_listed(struct mcp_server *, json_t *, json_t *);
static void	mcp_ready(struct mcp_server *, int);
static void	mcp_send_queued(struct mcp_server *);
static void	mcp_missing_text(struct mcp_server *, char *, size_t);
static void	mcp_fail_queued(struct mcp_server *, enum step_outcome,
		    const char *);
static void	mcp_fail_sent(struct mcp_server *, const char *);
static char    *mcp_error_text(json_t *, long long *);
static char    *mcp_result_text(json_t *);
static struct mcp_call *mcp_call_new(struct mcp_server *, struct step *);
static struct mcp_call *mcp_call_by_id(struct mcp_server *, long long);
static void	mcp_call_send(struct mcp_call *);
static void	mcp_call_timer_cb(evutil_socket_t, short, void *);
static void	mcp_answered(struct mcp_call *, json_t *, json_t *);
static void	mcp_call_finish(struct mcp_call *, enum step_outcome,
		    json_t *, const char *);

/* Calls that have not finished (sent or waiting for their server). */
int
mcp_running(void)
{
	return ncalls;
}

/* Servers this worker has, running or not; 0 once all are closed. */
int
mcp_servers(void)
{
	return nservers;
}

/*
 * Starts a claimed step of an mcp tool: on its server if it is ready,
 * else once it is.
 */
void
mcp_start(struct worker *w, struct step *s)
{
	struct mcp_server	*srv;
	struct mcp_call		*c;
	enum step_outcome	 o;
	char			 err[512];
	int64_t			 wait;

	if ((srv = mcp_server_get(w, s, &o, err, sizeof(err))) == NULL) {
		step_finish(s, o, NULL, err);
		return;
	}
	if (srv->state == MCP_READY && srv->missing) {
		mcp_missing_text(srv, err, sizeof(err));
		step_finish(s, OUT_FAILED, NULL, err);
		return;
	}
	wait = srv->retry_at - clock_ms();
	if (srv->state == MCP_DOWN && wait >= s->timeout_ms) {
		s->tool_error = 1;
		snprintf(err, sizeof(err), "not sent: the MCP server is down "
		    "(%s); next start in %lld ms", srv->why, (long long)wait);
		tool_utf8_trim(err);
		step_finish(s, OUT_RETRY, NULL, err);
		return;
	}
	c = mcp_call_new(srv, s);
	if (srv->state == MCP_READY)
		mcp_call_send(c);
	else if (srv->state == MCP_DOWN && !evtimer_pending(srv->timer, NULL))
		mcp_spawn(srv);
}

/*
 * The server for a step's tool and config, made if there is none (an
 * older one for another config is retired).  NULL with *o and err set if
 * there can be none.
 */
static struct mcp_server *
mcp_server_get(struct worker *w, struct step *s, enum step_outcome *o,
    char *err, size_t len)
{
	struct mcp_server	*srv;

	TAILQ_FOREACH(srv, &servers, entry) {
		if (srv->state == MCP_CLOSING ||
		    strcmp(srv->tool, s->tool) != 0)
			continue;
		if (s->config != NULL && strcmp(srv->config, s->config) == 0) {
			srv->used_at = clock_ms();
			return srv;
		}
		log_info("tool=%s: its config changed; its MCP server is "
		    "closed once its calls are done", s->tool);
		mcp_server_retire(srv);
		break;
	}
	if (nservers >= EAV_TOOL_SERVERS_MAX && !mcp_server_evict()) {
		*o = OUT_RETRY;
		snprintf(err, len, "not sent: this worker already has %d MCP "
		    "servers, all busy", nservers);
		return NULL;
	}
	if ((srv = mcp_server_new(w, s, err, len)) == NULL)
		*o = OUT_FAILED;
	return srv;
}

/* Retires the idle server used longest ago; 0 if none is idle. */
static int
mcp_server_evict(void)
{
	struct mcp_server	*srv, *lru = NULL;

	TAILQ_FOREACH(srv, &servers, entry)
		if (srv->state != MCP_CLOSING && srv->ncalls == 0 &&
		    (lru == NULL || srv->used_at < lru->used_at))
			lru = srv;
	if (lru == NULL)
		return 0;
	log_info("tool=%s: closing its idle MCP server to make room",
	    lru->tool);
	mcp_server_retire(lru);
	return 1;
}

/* A server (DOWN) for the step's tool; NULL with err if its config is
 * unusable. */
static struct mcp_server *
mcp_server_new(struct worker *w, struct step *s, char *err, size_t len)
{
	struct mcp_server	*srv;
	struct tool_conf	 conf;
	json_t			*cfg;
	json_error_t		 jerr;
	json_int_t		 ms;
	const char		*remote;

	if (s->config == NULL || (cfg = json_loads(s->config, 0, &jerr)) ==
	    NULL) {
		snprintf(err, len, "the tool's config cannot be read");
		return NULL;
	}
	if (tool_conf_parse(cfg, &conf, err, len) == -1) {
		json_decref(cfg);
		return NULL;
	}
	srv = xcalloc(1, sizeof(*srv));
	srv->w = w;
	srv->tool = xstrdup(s->tool);
	srv->config = xstrdup(s->config);
	remote = json_string_value(json_object_get(cfg, "tool"));
	srv->remote = xstrdup(remote != NULL ? remote : s->tool);
	ms = json_integer_value(json_object_get(cfg, "init_timeout_ms"));
	srv->init_timeout_ms = ms > 0 && ms <= 600000 ? (int)ms :
	    MCP_INIT_DEFAULT;
	json_decref(cfg);
	srv->conf = conf;
	srv->state = MCP_DOWN;
	srv->used_at = clock_ms();
	TAILQ_INIT(&srv->calls);
	if ((srv->out = evbuffer_new()) == NULL ||
	    (srv->in = evbuffer_new()) == NULL ||
	    (srv->err = evbuffer_new()) == NULL ||
	    (srv->timer = evtimer_new(w->base, mcp_timer_cb, srv)) == NULL)
		fatalx("cannot make an MCP server's buffers");
	TAILQ_INSERT_TAIL(&servers, srv, entry);
	nservers++;
	return srv;
}

/* No new call for this server: fail those not sent, close it when the
 * sent ones are answered. */
static void
mcp_server_retire(struct mcp_server *srv)
{
	srv->state = MCP_CLOSING;
	mcp_fail_queued(srv, OUT_RETRY, "not sent: the tool's MCP server "
	    "is being closed (config changed, or the worker is stopping)");
	if (srv->nsent == 0)
		mcp_server_close(srv);
}

/*
 * Closes a CLOSING server with no call left: EOF on its stdin and
 * SIGTERM, SIGKILL after MCP_CLOSE_MS; freed once its process is gone.
 */
static void
mcp_server_close(struct mcp_server *srv)
{
	struct timeval	tv = clock_tv(MCP_CLOSE_MS);

	if (srv->proc != NULL && srv->proc->fds[TP_IN] == -1)
		return;		/* closing already */
	evtimer_del(srv->timer);
	if (srv->proc == NULL) {
		/* Not from here: a caller may still hold srv. */
		event_active(srv->timer, EV_TIMEOUT, 1);
		return;
	}
	log_info("tool=%s: closing its MCP server pid %d", srv->tool,
	    (int)srv->proc->pid);
	if (srv->ev[TP_IN] != NULL) {
		event_free(srv->ev[TP_IN]);
		srv->ev[TP_IN] = NULL;
	}
	if (srv->proc->fds[TP_IN] != -1) {
		close(srv->proc->fds[TP_IN]);
		srv->proc->fds[TP_IN] = -1;
	}
	evbuffer_drain(srv->out, evbuffer_get_length(srv->out));
	toolproc_kill(srv->proc, SIGTERM);
	if (evtimer_add(srv->timer, &tv) == -1)
		fatalx("cannot add an MCP timer");
}

/* Frees a closed server (no process, no call). */
static void
mcp_server_free(struct mcp_server *srv)
{
	struct worker	*w = srv->w;

	TAILQ_REMOVE(&servers, srv, entry);
	nservers--;
	event_free(srv->timer);
	evbuffer_free(srv->out);
	evbuffer_free(srv->in);
	evbuffer_free(srv->err);
	tool_conf_free(&srv->conf);
	free(srv->tool);
	free(srv->config);
	free(srv->remote);
	free(srv);
	worker_maybe_exit(w);
}

/* Starts the server's process and sends initialize. */
static void
mcp_spawn(struct mcp_server *srv)
{
	struct toolproc	*p = xcalloc(1, sizeof(*p));
	struct timeval	 tv = clock_tv(srv->init_timeout_ms);
	char		 who[128], why[512], **envp;
	size_t		 n;
	int		 rc, saved;

	snprintf(who, sizeof(who), "tool=%s", srv->tool);
	envp = tool_env(srv->conf.env, 0, who, &n);
	rc = toolproc_spawn(p, &srv->conf, envp);
	saved = errno;
	tool_strv_free(envp);
	if (rc == -1) {
		free(p);
		snprintf(why, sizeof(why), "cannot start %s: %s",
		    srv->conf.argv[0], strerror(saved));
		mcp_start_failed(srv, why);
		return;
	}
	p->exited = mcp_exited;
	p->arg = srv;
	srv->proc = p;
	srv->err_logged = srv->err_dropped = 0;
	if (p->withdrawn) {
		mcp_start_failed(srv, "not started: eavd could not be told of "
		    "the server's process group");
		return;
	}
	mcp_watch(srv);
	srv->state = MCP_STARTING;
	srv->init_id = ++srv->next_id;
	if (evtimer_add(srv->timer, &tv) == -1)
		fatalx("cannot add an MCP timer");
	log_info("tool=%s: started MCP server %s pid=%d", srv->tool,
	    srv->conf.argv[0], (int)p->pid);
	mcp_send(srv, json_pack("{s:s, s:I, s:s, s:{s:s, s:{}, s:{s:s, s:s}}}",
	    "jsonrpc", "2.0", "id", (json_int_t)srv->init_id, "method",
	    "initialize", "params", "protocolVersion", MCP_PROTOCOL,
	    "capabilities", "clientInfo", "name", "eav-worker", "version",
	    EAV_VERSION));
}

/* Events on the server's stdout and stderr; its stdin's is added when
 * output waits. */
static void
mcp_watch(struct mcp_server *srv)
{
	struct event_base	*base = srv->w->base;
	int			 i;

	for (i = TP_IN; i <= TP_ERR; i++) {
		srv->ev[i] = event_new(base, srv->proc->fds[i], (i == TP_IN ?
		    EV_WRITE : EV_READ) | EV_PERSIST, mcp_io_cb, srv);
		if (srv->ev[i] == NULL || (i != TP_IN &&
		    event_add(srv->ev[i], NULL) == -1))
			fatalx("cannot watch an MCP server's pipe");
	}
}

/*
 * Lets go of the server's process: its pipes are closed, what it wrote
 * on stderr is logged, and unless it is reaped already its group is
 * SIGKILLed (it is freed when reaped).
 */
static void
mcp_proc_drop(struct mcp_server *srv)
{
	struct toolproc	*p = srv->proc;
	int		 i;

	if (p == NULL)
		return;
	mcp_log_err(srv, 1);
	if (srv->err_dropped > 0)
		log_info("tool=%s MCP server pid %d stderr: %zu more bytes "
		    "not logged", srv->tool, (int)p->pid, srv->err_dropped);
	for (i = 0; i < TP_NFDS; i++) {
		if (srv->ev[i] != NULL) {
			event_free(srv->ev[i]);
			srv->ev[i] = NULL;
		}
		if (p->fds[i] != -1) {
			close(p->fds[i]);
			p->fds[i] = -1;
		}
	}
	evbuffer_drain(srv->out, evbuffer_get_length(srv->out));
	evbuffer_drain(srv->in, evbuffer_get_length(srv->in));
	evbuffer_drain(srv->err, evbuffer_get_length(srv->err));
	free(srv->skip);
	srv->skip = NULL;
	srv->proc = NULL;
	if (p->reaped) {
		free(p);
		return;
	}
	p->exited = mcp_orphan_exited;
	p->arg = NULL;
	toolproc_kill(p, SIGKILL);
}

/* A process let go of is reaped. */
static void
mcp_orphan_exited(struct toolproc *p)
{
	free(p);
}

/* The server's process is reaped: the server is lost. */
static void
mcp_exited(struct toolproc *p)
{
	struct mcp_server	*srv = p->arg;
	char			 why[512];

	if (WIFSIGNALED(p->status))
		snprintf(why, sizeof(why), "the MCP server was killed by "
		    "signal %d (%s)", WTERMSIG(p->status),
		    strsignal(WTERMSIG(p->status)));
	else
		snprintf(why, sizeof(why), "the MCP server exited with code "
		    "%d", WEXITSTATUS(p->status));
	mcp_why_ended(srv, why, sizeof(why), why);
	mcp_lost(srv, why);
}

/*
 * Why the server's process ended: its report of a failed exec if there
 * is one (fills why), else dflt.
 */
static void
mcp_why_ended(struct mcp_server *srv, char *why, size_t len,
    const char *dflt)
{
	struct spawn_failure	f = { 0, 0 };
	ssize_t			n = -1;

	if (srv->proc != NULL && srv->proc->fds[TP_FAIL] != -1)
		n = tool_read(srv->proc->fds[TP_FAIL], &f, sizeof(f));
	if (n == (ssize_t)sizeof(f))
		snprintf(why, len, "cannot run %s: %s: %s", srv->conf.argv[0],
		    spawn_stage_name(f.stage), strerror(f.error));
	else if (why != dflt)
		snprintf(why, len, "%s", dflt);
	tool_utf8_trim(why);
}

/*
 * The server did not get to READY: the calls waiting for it fail
 * (retryable: none was sent), and it is started again after a back-off
 * when a call needs it.
 */
static void
mcp_start_failed(struct mcp_server *srv, const char *why)
{
	char	err[512];

	log_warnx("tool=%s: MCP server %s did not start: %s", srv->tool,
	    srv->conf.argv[0], why);
	mcp_proc_drop(srv);
	snprintf(srv->why, sizeof(srv->why), "%s", why);
	tool_utf8_trim(srv->why);
	snprintf(err, sizeof(err), "not sent: the MCP server did not start: "
	    "%s", why);
	mcp_fail_queued(srv, OUT_RETRY, err);
	mcp_backoff(srv);
}

/*
 * The server died, or can no longer be trusted: it is killed, and every
 * call sent to it has an unknown outcome.
 */
static void
mcp_lost(struct mcp_server *srv, const char *why)
{
	if (srv->state == MCP_STARTING || srv->state == MCP_LISTING) {
		mcp_start_failed(srv, why);
		return;
	}
	if (srv->proc == NULL)
		return;
	if (srv->state == MCP_CLOSING && srv->nsent == 0) {
		/* Its end was asked for. */
		mcp_proc_drop(srv);
		mcp_server_close(srv);
		return;
	}
	log_warnx("tool=%s: MCP server pid %d lost: %s; killing its process "
	    "group (%d calls in flight)", srv->tool, (int)srv->proc->pid, why,
	    srv->nsent);
	mcp_proc_drop(srv);
	mcp_fail_sent(srv, why);
	if (srv->state == MCP_CLOSING)
		mcp_server_close(srv);
	else
		mcp_backoff(srv);
}

/* DOWN until the back-off has passed. */
static void
mcp_backoff(struct mcp_server *srv)
{
	struct timeval	tv;

	srv->state = MCP_DOWN;
	srv->backoff_ms = srv->backoff_ms == 0 ? MCP_BACKOFF_MIN :
	    srv->backoff_ms * 2 > MCP_BACKOFF_MAX ? MCP_BACKOFF_MAX :
	    srv->backoff_ms * 2;
	srv->retry_at = clock_ms() + srv->backoff_ms;
	tv = clock_tv(srv->backoff_ms);
	if (evtimer_add(srv->timer, &tv) == -1)
		fatalx("cannot add an MCP timer");
}

/*
 * DOWN: the back-off is over (start if a call waits).  STARTING or
 * LISTING: no answer in time.  CLOSING: the grace after SIGTERM is over,
 * or the server is closed.
 */
static void
mcp_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mcp_server	*srv = arg;
	char			 why[128];

	(void)fd;
	(void)what;
	switch (srv->state) {
	case MCP_DOWN:
		if (srv->ncalls > 0)
			mcp_spawn(srv);
		break;
	case MCP_STARTING:
		snprintf(why, sizeof(why), "no answer to initialize within %d "
		    "ms", srv->init_timeout_ms);
		mcp_start_failed(srv, why);
		break;
	case MCP_LISTING:
		snprintf(why, sizeof(why), "no answer to tools/list (page %d) "
		    "within %d ms", srv->pages, srv->init_timeout_ms);
		mcp_start_failed(srv, why);
		break;
	case MCP_CLOSING:
		if (srv->proc != NULL)
			log_warnx("tool=%s: MCP server pid %d still runs %d ms "
			    "after SIGTERM; killing its group", srv->tool,
			    (int)srv->proc->pid, MCP_CLOSE_MS);
		mcp_proc_drop(srv);
		mcp_server_free(srv);
		break;
	default:
		break;
	}
}

/* One of the server's pipes is ready. */
static void
mcp_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mcp_server	*srv = arg;

	(void)what;
	if (srv->proc == NULL)
		return;
	if (fd == srv->proc->fds[TP_IN])
		mcp_flush(srv);
	else if (fd == srv->proc->fds[TP_OUT])
		mcp_read_out(srv);
	else if (fd == srv->proc->fds[TP_ERR])
		mcp_read_err(srv);
}

/* Queues one message (and takes it) for the server's stdin. */
static void
mcp_send(struct mcp_server *srv, json_t *msg)
{
	char	*text;

	if (msg == NULL || (text = json_dumps(msg, JSON_COMPACT)) == NULL)
		fatalx("cannot encode a message to an MCP server");
	json_decref(msg);
	log_debug("tool=%s: to MCP server: %.200s", srv->tool, text);
	if (evbuffer_add(srv->out, text, strlen(text)) == -1 ||
	    evbuffer_add(srv->out, "\n", 1) == -1)
		fatalx("evbuffer_add failed");
	free(text);
	mcp_flush(srv);
}

/* Writes what waits for the server's stdin, as far as the pipe takes it. */
static void
mcp_flush(struct mcp_server *srv)
{
	char	why[512];
	int	n;

	if (srv->proc == NULL || srv->proc->fds[TP_IN] == -1)
		return;
	while (evbuffer_get_length(srv->out) > 0) {
		n = evbuffer_write(srv->out, srv->proc->fds[TP_IN]);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN) {
			if (event_add(srv->ev[TP_IN], NULL) == -1)
				fatalx("cannot watch an MCP server's stdin");
			return;
		}
		if (n <= 0) {
			snprintf(why, sizeof(why), "cannot write to the MCP "
			    "server: %s", strerror(errno));
			mcp_why_ended(srv, why, sizeof(why), why);
			mcp_lost(srv, why);
			return;
		}
	}
	if (srv->ev[TP_IN] != NULL)
		event_del(srv->ev[TP_IN]);
}

/*
 * Reads stdout and handles each whole line; EOF or a broken message
 * loses the server.  MCP_READS reads at most: a server that never stops
 * writing (a line without end) must not keep the loop from its timers.
 */
static void
mcp_read_out(struct mcp_server *srv)
{
	struct toolproc	*p = srv->proc;
	char		 why[512];
	int		 i, n;

	for (i = 0; i < MCP_READS; i++) {
		n = evbuffer_read(srv->in, p->fds[TP_OUT], MCP_READ);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n <= 0) {
			mcp_why_ended(srv, why, sizeof(why), "the MCP server "
			    "closed its stdout");
			mcp_lost(srv, why);
			return;
		}
		if (mcp_lines(srv) == -1)
			return;
	}
}

/*
 * Handles the lines read so far: each whole line up to the cap; a line
 * over it is read past (mcp_skip) as far as it has come.  -1 if the
 * server's process was let go of meanwhile.
 */
static int
mcp_lines(struct mcp_server *srv)
{
	struct toolproc		*p = srv->proc;
	struct evbuffer_ptr	 eol;
	size_t			 len, max = mcp_line_max(srv);
	char			*line;

	for (;;) {
		eol = evbuffer_search(srv->in, "\n", 1, NULL);
		if (srv->skip == NULL && (eol.pos == -1 ?
		    evbuffer_get_length(srv->in) <= max :
		    (size_t)eol.pos <= max)) {
			if (eol.pos == -1)
				return 0;	/* a line not whole yet */
			if ((line = evbuffer_readln(srv->in, &len,
			    EVBUFFER_EOL_LF)) == NULL)
				fatalx("cannot read a line of an MCP server");
			mcp_message(srv, line, len);
			free(line);
		} else
			mcp_skip(srv, eol.pos);
		if (srv->proc != p)
			return -1;
		if (eol.pos == -1)
			return 0;
	}
}

/* The longest line kept: max_output_bytes and the JSON-RPC envelope. */
static size_t
mcp_line_max(const struct mcp_server *srv)
{
	return srv->conf.max_output + MCP_LINE_SLACK;
}

/*
 * Reads past a line over the cap, scanning instead of keeping it: what
 * has come of it, up to its end if eol (the offset of its newline) is
 * not -1, where it is judged.  A line that is not JSON loses the server
 * at once, as any other line would, without waiting for its end.
 */
static void
mcp_skip(struct mcp_server *srv, ev_ssize_t eol)
{
	char	buf[MCP_SKIP_CHUNK], why[512];
	size_t	left;
	int	n;

	left = eol == -1 ? evbuffer_get_length(srv->in) : (size_t)eol;
	if (srv->skip == NULL) {
		srv->skip = xcalloc(1, sizeof(*srv->skip));
		jscan_init(srv->skip, (const char *const []){ "id", "method",
		    "result", "error", NULL });
		srv->skip_len = 0;
	}
	for (; left > 0; left -= (size_t)n) {
		n = evbuffer_remove(srv->in, buf, left < sizeof(buf) ? left :
		    sizeof(buf));
		if (n <= 0)
			fatalx("cannot take a line of an MCP server");
		srv->skip_len += (size_t)n;
		if (jscan_feed(srv->skip, buf, (size_t)n) == -1)
			break;
	}
	if (left > 0) {
		snprintf(why, sizeof(why), "the MCP server sent invalid "
		    "JSON-RPC: %s (of a message over %zu bytes)",
		    srv->skip->err, mcp_line_max(srv));
		mcp_lost(srv, why);
	} else if (eol != -1) {
		evbuffer_drain(srv->in, 1);
		mcp_skipped(srv);
	}
}

/*
 * A line over the cap has ended: judged by its members as a line kept
 * would be, its result or params never read.  White space only is
 * ignored, as a blank line is.
 */
static void
mcp_skipped(struct mcp_server *srv)
{
	struct jscan			*js = srv->skip;
	const struct jscan_member	*method = jscan_member(js, "method");
	char				 why[512];
	int				 rc = jscan_end(js);

	srv->skip = NULL;
	if (rc == -1) {
		snprintf(why, sizeof(why), "the MCP server sent invalid "
		    "JSON-RPC: %s (of a message of %zu bytes)", js->err,
		    srv->skip_len);
		mcp_lost(srv, why);
	} else if (rc == 0 && method->seen && method->raw[0] == '"')
		mcp_skipped_request(srv, js);
	else if (rc == 0)
		mcp_skipped_response(srv, js);
	free(js);
}

/*
 * A request or notification over the cap is dropped; a request whose
 * id can be echoed gets an error, so the server need not wait for an
 * answer (one it might hold a call back for).
 */
static void
mcp_skipped_request(struct mcp_server *srv, struct jscan *js)
{
	json_t		*method = mcp_member_value(js, "method");
	json_t		*id = mcp_member_value(js, "id");
	const char	*name = json_string_value(method);
	char		*clean, text[128];
	size_t		 len;

	if (name == NULL)
		name = "(a name too long to keep)";
	len = strlen(name);
	clean = tool_clean(name, len > MCP_TEXT_MAX ? MCP_TEXT_MAX : len);
	log_warnx("tool=%s: MCP server pid %d sent a %s %s of %zu bytes, "
	    "over the cap of %zu: dropped%s", srv->tool, (int)srv->proc->pid,
	    jscan_member(js, "id")->seen ? "request" : "notification", clean,
	    srv->skip_len, mcp_line_max(srv), id != NULL ? ", answered with "
	    "an error" : "");
	free(clean);
	if (id != NULL) {
		snprintf(text, sizeof(text), "request larger than %zu bytes, "
		    "not read", mcp_line_max(srv));
		mcp_send(srv, json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc",
		    "2.0", "id", id, "error", "code", -32600, "message",
		    text));
	}
	json_decref(method);
	json_decref(id);
}

/*
 * A response over the cap.  The server answered, so the outcome is
 * known though not kept: the call failed; to initialize or tools/list,
 * the server did not start.  Invalid, or to no request in flight: the
 * server is lost, as for a line kept.
 */
static void
mcp_skipped_response(struct mcp_server *srv, struct jscan *js)
{
	const struct jscan_member	*r = jscan_member(js, "result");
	const struct jscan_member	*e = jscan_member(js, "error");
	json_t				*id = mcp_member_value(js, "id");
	struct mcp_call			*c;
	char				 why[512];
	long long			 n;

	if (!mcp_response_valid(srv, id, !r->seen ? 0 : r->raw[0] == '{' ?
	    1 : -1, !e->seen ? 0 : e->raw[0] == '{' ? 1 : -1)) {
		json_decref(id);
		return;
	}
	n = json_integer_value(id);
	json_decref(id);
	snprintf(why, sizeof(why), "response larger than %zu bytes (%zu), not "
	    "read: max_output_bytes %zu plus %d for the JSON-RPC envelope",
	    mcp_line_max(srv), srv->skip_len, srv->conf.max_output,
	    MCP_LINE_SLACK);
	log_warnx("tool=%s: MCP server pid %d answered id %lld with a %s",
	    srv->tool, (int)srv->proc->pid, n, why);
	if ((srv->state == MCP_STARTING && n == srv->init_id) ||
	    (srv->state == MCP_LISTING && n == srv->list_id)) {
		snprintf(why, sizeof(why), "%s got a response larger than %zu "
		    "bytes (%zu)", srv->state == MCP_STARTING ? "initialize" :
		    "tools/list", mcp_line_max(srv), srv->skip_len);
		mcp_start_failed(srv, why);
	} else if ((c = mcp_call_by_id(srv, n)) != NULL)
		mcp_call_finish(c, OUT_FAILED, NULL, why);
	else
		mcp_unasked(srv, n);
}

/* A named member's value decoded, if it was short enough to be kept
 * (else NULL).  The caller decrefs it. */
static json_t *
mcp_member_value(const struct jscan *js, const char *name)
{
	const struct jscan_member	*m = jscan_member(js, name);

	if (m == NULL || !m->seen || m->len > JSCAN_RAW)
		return NULL;
	return json_loadb(m->raw, m->len, JSON_DECODE_ANY |
	    JSON_REJECT_DUPLICATES, NULL);
}

/* Reads stderr, logging it line by line. */
static void
mcp_read_err(struct mcp_server *srv)
{
	int	n;

	for (;;) {
		n = evbuffer_read(srv->err, srv->proc->fds[TP_ERR], MCP_READ);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n <= 0)
			break;
		mcp_log_err(srv, 0);
	}
	mcp_log_err(srv, 1);
	event_free(srv->ev[TP_ERR]);
	srv->ev[TP_ERR] = NULL;
	close(srv->proc->fds[TP_ERR]);
	srv->proc->fds[TP_ERR] = -1;
}

/*
 * Logs the whole lines of stderr read so far (all: the rest too), up to
 * MCP_STDERR_LOG bytes a process; a line longer than MCP_STDERR_LINE is
 * logged in pieces.
 */
static void
mcp_log_err(struct mcp_server *srv, int all)
{
	char	*line, *clean, buf[MCP_STDERR_LINE];
	size_t	 len;

	for (;;) {
		line = evbuffer_readln(srv->err, &len, EVBUFFER_EOL_LF);
		if (line == NULL && (evbuffer_get_length(srv->err) >=
		    MCP_STDERR_LINE || (all &&
		    evbuffer_get_length(srv->err) > 0))) {
			len = (size_t)evbuffer_remove(srv->err, buf,
			    sizeof(buf));
			line = xmalloc(len + 1);
			memcpy(line, buf, len);
		}
		if (line == NULL)
			return;
		if (srv->err_logged + len > MCP_STDERR_LOG)
			srv->err_dropped += len;
		else {
			srv->err_logged += len;
			clean = tool_clean(line, len);
			log_info("tool=%s MCP server pid %d stderr: %s",
			    srv->tool, srv->proc ? (int)srv->proc->pid : 0,
			    clean);
			free(clean);
		}
		free(line);
	}
}

/* One line from the server. */
static void
mcp_message(struct mcp_server *srv, const char *line, size_t len)
{
	json_t		*msg;
	json_error_t	 jerr;
	char		*clean, why[512];

	if (strspn(line, " \t\r") == len)
		return;
	log_debug("tool=%s: from MCP server: %.200s", srv->tool, line);
	msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (msg == NULL || !json_is_object(msg)) {
		clean = tool_clean(msg == NULL ? jerr.text : "not an object",
		    strlen(msg == NULL ? jerr.text : "not an object"));
		snprintf(why, sizeof(why), "the MCP server sent invalid "
		    "JSON-RPC: %s", clean);
		free(clean);
		json_decref(msg);
		mcp_lost(srv, why);
		return;
	}
	if (json_is_string(json_object_get(msg, "method")))
		mcp_request(srv, msg);
	else
		mcp_response(srv, msg);
	json_decref(msg);
}

/* A request or notification from the server: ping is answered, other
 * requests are refused (this client offers no capability). */
static void
mcp_request(struct mcp_server *srv, json_t *msg)
{
	const char	*method = json_string_value(json_object_get(msg,
			    "method"));
	json_t		*id = json_object_get(msg, "id");

	if (id == NULL) {
		log_debug("tool=%s: MCP notification %s", srv->tool, method);
		return;
	}
	if (strcmp(method, "ping") == 0)
		mcp_send(srv, json_pack("{s:s, s:O, s:{}}", "jsonrpc", "2.0",
		    "id", id, "result"));
	else
		mcp_send(srv, json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc",
		    "2.0", "id", id, "error", "code", -32601, "message",
		    "method not found"));
}

/* A response: to initialize, to tools/list, or to a call in flight. */
static void
mcp_response(struct mcp_server *srv, json_t *msg)
{
	json_t		*id = json_object_get(msg, "id");
	json_t		*result = json_object_get(msg, "result");
	json_t		*error = json_object_get(msg, "error");
	struct mcp_call	*c;
	long long	 n;

	if (!mcp_response_valid(srv, id, mcp_kind(result), mcp_kind(error)))
		return;
	n = json_integer_value(id);
	if (srv->state == MCP_STARTING && n == srv->init_id)
		mcp_initialized(srv, result, error);
	else if (srv->state == MCP_LISTING && n == srv->list_id)
		mcp_listed(srv, result, error);
	else if ((c = mcp_call_by_id(srv, n)) != NULL)
		mcp_answered(c, result, error);
	else
		mcp_unasked(srv, n);
}

/*
 * True if a response has an integer id and a result or an error, not
 * both, an object (result, error: 0 absent, 1 an object, -1 another
 * value); if not, the server is lost.
 */
static int
mcp_response_valid(struct mcp_server *srv, json_t *id, int result,
    int error)
{
	if (json_is_integer(id) && (result == 0) != (error == 0) &&
	    result != -1 && error != -1)
		return 1;
	mcp_lost(srv, MCP_INVALID_RESPONSE);
	return 0;
}

/* 0 for a member absent, 1 for an object, -1 for another value. */
static int
mcp_kind(json_t *v)
{
	return v == NULL ? 0 : json_is_object(v) ? 1 : -1;
}

/* The server answered an id no request in flight has: it is lost. */
static void
mcp_unasked(struct mcp_server *srv, long long n)
{
	char	why[256];

	snprintf(why, sizeof(why), "the MCP server answered id %lld, which no "
	    "request in flight has", n);
	mcp_lost(srv, why);
}

/* The answer to initialize: then notifications/initialized, tools/list. */
static void
mcp_initialized(struct mcp_server *srv, json_t *result, json_t *error)
{
	char	*text, why[512];

	if (error != NULL) {
		text = mcp_error_text(error, NULL);
		snprintf(why, sizeof(why), "initialize failed: %s", text);
		free(text);
		mcp_start_failed(srv, why);
		return;
	}
	log_debug("tool=%s: MCP server pid %d speaks protocol %s", srv->tool,
	    (int)srv->proc->pid, json_is_string(json_object_get(result,
	    "protocolVersion")) ? json_string_value(json_object_get(result,
	    "protocolVersion")) : "?");
	srv->state = MCP_LISTING;
	srv->pages = 0;
	mcp_send(srv, json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method",
	    "notifications/initialized"));
	if (srv->state == MCP_LISTING)
		mcp_list(srv, NULL);
}

/*
 * Asks for a page of tools/list (the first if cursor is NULL); each page
 * gets init_timeout_ms of its own.
 */
static void
mcp_list(struct mcp_server *srv, const char *cursor)
{
	struct timeval	 tv = clock_tv(srv->init_timeout_ms);
	json_t		*params = json_object();

	if (params == NULL || (cursor != NULL && json_object_set_new(params,
	    "cursor", json_string(cursor)) == -1))
		fatalx("cannot make a tools/list request");
	srv->list_id = ++srv->next_id;
	srv->pages++;
	if (evtimer_add(srv->timer, &tv) == -1)
		fatalx("cannot add an MCP timer");
	mcp_send(srv, json_pack("{s:s, s:I, s:s, s:o}", "jsonrpc", "2.0", "id",
	    (json_int_t)srv->list_id, "method", "tools/list", "params",
	    params));
}

/*
 * A page of tools/list: the server is READY once a page names the tool,
 * or once the last page (no nextCursor) did not.  A server whose pages
 * go on past MCP_LIST_PAGES (a cursor that loops, say) did not start.
 */
static void
mcp_listed(struct mcp_server *srv, json_t *result, json_t *error)
{
	json_t		*tools = json_object_get(result, "tools"), *t;
	const char	*cursor, *name;
	char		*text, why[512];
	size_t		 i;

	if (error != NULL || !json_is_array(tools)) {
		text = error != NULL ? mcp_error_text(error, NULL) :
		    xstrdup("the result has no \"tools\" array");
		snprintf(why, sizeof(why), "tools/list failed: %s", text);
		free(text);
		mcp_start_failed(srv, why);
		return;
	}
	json_array_foreach(tools, i, t)
		if ((name = json_string_value(json_object_get(t, "name"))) !=
		    NULL && strcmp(name, srv->remote) == 0) {
			mcp_ready(srv, 1);
			return;
		}
	cursor = json_string_value(json_object_get(result, "nextCursor"));
	if (cursor == NULL)
		mcp_ready(srv, 0);
	else if (srv->pages < MCP_LIST_PAGES)
		mcp_list(srv, cursor);
	else {
		snprintf(why, sizeof(why), "tools/list still had a nextCursor "
		    "after %d pages, none naming the tool \"%s\"", srv->pages,
		    srv->remote);
		tool_utf8_trim(why);
		mcp_start_failed(srv, why);
	}
}

/* The handshake is over: calls are sent, or failed if the tool is not
 * there. */
static void
mcp_ready(struct mcp_server *srv, int found)
{
	srv->missing = !found;
	srv->state = MCP_READY;
	srv->backoff_ms = 0;
	srv->retry_at = 0;
	srv->why[0] = '\0';
	evtimer_del(srv->timer);
	log_info("tool=%s: MCP server pid %d ready%s (tools/list: %d "
	    "page%s)", srv->tool, (int)srv->proc->pid, found ? "" :
	    " without the tool", srv->pages, srv->pages == 1 ? "" : "s");
	mcp_send_queued(srv);
}

/* Sends the calls that waited for the server (or fails them if it has
 * no such tool). */
static void
mcp_send_queued(struct mcp_server *srv)
{
	struct mcp_call	*c;
	char		 err[512];

	for (;;) {
		TAILQ_FOREACH(c, &srv->calls, entry)
			if (c->id == 0)
				break;
		if (c == NULL || srv->state != MCP_READY)
			return;
		if (!srv->missing) {
			mcp_call_send(c);
			continue;
		}
		mcp_missing_text(srv, err, sizeof(err));
		mcp_call_finish(c, OUT_FAILED, NULL, err);
	}
}

/* The error of a call to a server whose tools/list lacks the tool. */
static void
mcp_missing_text(struct mcp_server *srv, char *err, size_t len)
{
	snprintf(err, len, "the MCP server has no tool \"%s\" (not in its "
	    "tools/list, %d page%s)", srv->remote, srv->pages,
	    srv->pages == 1 ? "" : "s");
	tool_utf8_trim(err);
}

/* Finishes every call not sent yet with o (a retry counts against the
 * tool's health). */
static void
mcp_fail_queued(struct mcp_server *srv, enum step_outcome o,
    const char *err)
{
	struct mcp_call	*c, *next;

	TAILQ_FOREACH_SAFE(c, &srv->calls, entry, next)
		if (c->id == 0) {
			c->s->tool_error = o == OUT_RETRY;
			mcp_call_finish(c, o, NULL, err);
		}
}

/* Every call sent to a lost server: unknown (tool_lost). */
static void
mcp_fail_sent(struct mcp_server *srv, const char *why)
{
	struct mcp_call	*c, *next;

	TAILQ_FOREACH_SAFE(c, &srv->calls, entry, next)
		if (c->id != 0) {
			c->s->detected_by = "tool_lost";
			c->s->tool_error = 1;
			mcp_call_finish(c, OUT_UNKNOWN, NULL, why);
		}
}

/*
 * "MCP error <code>: <message>" from a JSON-RPC error object, made
 * printable and capped; *code (if not NULL) gets the code, or -32603 if
 * it has none.  The caller frees it.
 */
static char *
mcp_error_text(json_t *error, long long *code)
{
	json_t		*c = json_object_get(error, "code");
	const char	*msg = json_string_value(json_object_get(error,
			    "message"));
	char		*clean, *text;
	size_t		 len = msg != NULL ? strlen(msg) : 0;

	clean = tool_clean(msg != NULL ? msg : "", len > MCP_TEXT_MAX ?
	    MCP_TEXT_MAX : len);
	if (json_is_integer(c))
		text = xasprintf("MCP error %lld: %s",
		    (long long)json_integer_value(c), clean);
	else
		text = xasprintf("MCP error (no code): %s", clean);
	if (code != NULL)
		*code = json_is_integer(c) ? json_integer_value(c) : -32603;
	free(clean);
	return text;
}

/* The text of a result's first text content item, made printable and
 * capped.  The caller frees it. */
static char *
mcp_result_text(json_t *result)
{
	json_t		*item;
	const char	*text = NULL;
	size_t		 i, len;

	json_array_foreach(json_object_get(result, "content"), i, item)
		if ((text = json_string_value(json_object_get(item,
		    "text"))) != NULL)
			break;
	if (text == NULL)
		return xstrdup("(no text)");
	len = strlen(text);
	return tool_clean(text, len > MCP_TEXT_MAX ? MCP_TEXT_MAX : len);
}

/* A call of step s on srv, not sent yet, its deadline running. */
static struct mcp_call *
mcp_call_new(struct mcp_server *srv, struct step *s)
{
	struct mcp_call	*c = xcalloc(1, sizeof(*c));
	struct timeval	 tv = clock_tv(s->timeout_ms);

	c->srv = srv;
	c->s = s;
	c->timer = evtimer_new(srv->w->base, mcp_call_timer_cb, c);
	if (c->timer == NULL || evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot add an MCP call timer");
	TAILQ_INSERT_TAIL(&srv->calls, c, entry);
	srv->ncalls++;
	ncalls++;
	return c;
}

/* The sent call with this id, or NULL. */
static struct mcp_call *
mcp_call_by_id(struct mcp_server *srv, long long id)
{
	struct mcp_call	*c;

	TAILQ_FOREACH(c, &srv->calls, entry)
		if (c->id == id && id != 0)
			return c;
	return NULL;
}

/* Sends tools/call, with the step's identity in _meta. */
static void
mcp_call_send(struct mcp_call *c)
{
	struct mcp_server	*srv = c->srv;
	struct step		*s = c->s;
	json_t			*params;

	c->id = ++srv->next_id;
	srv->nsent++;
	s->ran = 1;
	log_debug("step=%lld attempt=%d tool=%s: MCP call id %lld to pid %d",
	    s->id, s->attempt, s->tool, c->id, (int)srv->proc->pid);
	params = json_pack("{s:s, s:O, s:{s:s, s:I, s:I, s:i, s:s}}", "name",
	    srv->remote, "arguments", s->input, "_meta",
	    "eav/idempotency_key", s->idem_key, "eav/step_id",
	    (json_int_t)s->id, "eav/task_id", (json_int_t)s->task_id,
	    "eav/attempt", s->attempt, "eav/trace_id", s->trace_id);
	mcp_send(srv, json_pack("{s:s, s:I, s:s, s:o}", "jsonrpc", "2.0", "id",
	    (json_int_t)c->id, "method", "tools/call", "params", params));
}

/*
 * The tool's timeout_ms passed.  Not sent: retryable.  Sent: unknown,
 * and the server is killed, since its late answer could not be told
 * from a fresh one.
 */
static void
mcp_call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mcp_call		*c = arg;
	struct mcp_server	*srv = c->srv;
	struct step		*s = c->s;
	char			 err[512];

	(void)fd;
	(void)what;
	s->tool_error = 1;
	if (c->id == 0) {
		snprintf(err, sizeof(err), "not sent: the MCP server was not "
		    "ready within the tool's timeout_ms (%d ms)%s%s",
		    s->timeout_ms, srv->why[0] != '\0' ? "; " : "", srv->why);
		mcp_call_finish(c, OUT_RETRY, NULL, err);
		return;
	}
	s->detected_by = "tool_timeout";
	snprintf(err, sizeof(err), "timed out after %d ms; the MCP server was "
	    "killed (a late answer could not be trusted)", s->timeout_ms);
	mcp_call_finish(c, OUT_UNKNOWN, NULL, err);
	snprintf(err, sizeof(err), "a call on it (step %lld) timed out",
	    s->id);
	mcp_lost(srv, err);
}

/* The server answered a call: the outcome, by the mapping above. */
static void
mcp_answered(struct mcp_call *c, json_t *result, json_t *error)
{
	struct step	*s = c->s;
	size_t		 size, max = c->srv->conf.max_output;
	long long	 code;
	char		*text, err[768];

	if (error != NULL) {
		text = mcp_error_text(error, &code);
		s->tool_error = code != -32602;
		mcp_call_finish(c, code == -32700 || code == -32600 ||
		    code == -32601 || code == -32602 ? OUT_FAILED : OUT_RETRY,
		    NULL, text);
		free(text);
		return;
	}
	if (json_is_true(json_object_get(result, "isError"))) {
		text = mcp_result_text(result);
		snprintf(err, sizeof(err), "the MCP tool reported an error: %s",
		    text);
		free(text);
		mcp_call_finish(c, OUT_FAILED, NULL, err);
		return;
	}
	if ((size = json_dumpb(result, NULL, 0, JSON_COMPACT)) > max) {
		snprintf(err, sizeof(err), "result larger than %zu bytes (%zu)",
		    max, size);
		mcp_call_finish(c, OUT_FAILED, NULL, err);
		return;
	}
	mcp_call_finish(c, OUT_SUCCEEDED, json_incref(result), NULL);
}

/*
 * Completes the call's step and frees the call; a CLOSING server whose
 * last call this was is closed.
 */
static void
mcp_call_finish(struct mcp_call *c, enum step_outcome o, json_t *result,
    const char *error)
{
	struct mcp_server	*srv = c->srv;
	struct step		*s = c->s;
	char			 err[1024];

	snprintf(err, sizeof(err), "%s", error != NULL ? error : "");
	tool_utf8_trim(err);
	TAILQ_REMOVE(&srv->calls, c, entry);
	srv->ncalls--;
	if (c->id != 0)
		srv->nsent--;
	ncalls--;
	event_free(c->timer);
	free(c);
	step_finish(s, o, result, o == OUT_SUCCEEDED ? NULL : err);
	cycle_wake(srv->w);
	if (srv->state == MCP_CLOSING && srv->ncalls == 0)
		mcp_server_close(srv);
}

/*
 * Shutdown: a call not sent yet had no effect and is released (1); a
 * sent one must be waited for (0).
 */
int
mcp_cancel(struct step *s)
{
	struct mcp_server	*srv;
	struct mcp_call		*c;

	TAILQ_FOREACH(srv, &servers, entry)
		TAILQ_FOREACH(c, &srv->calls, entry)
			if (c->s == s && c->id == 0) {
				mcp_call_finish(c, OUT_RELEASE, NULL, "worker "
				    "stopping; MCP call not sent");
				return 1;
			}
	return 0;
}

/* Shutdown: every server is closed once its calls are answered. */
void
mcp_shutdown(struct worker *w)
{
	struct mcp_server	*srv, *next;

	(void)w;
	TAILQ_FOREACH_SAFE(srv, &servers, entry, next)
		if (srv->state != MCP_CLOSING)
			mcp_server_retire(srv);
}
