/*
 * The load client: enqueues tasks through eav.task_enqueue, as users do,
 * and records every operation in a Jepsen-style history:
 *
 *   invoke  the call is about to be sent
 *   ok      it returned a task id
 *   fail    it returned an error on a live connection: nothing was created
 *   info    timeout or lost connection: the task may or may not exist
 *
 * The load has two parts, both paced: a steady stream of tasks that are
 * runnable at once, so that workers hold running steps whenever a nemesis
 * strikes, and bursts: every burst_ms, burst_k tasks that were enqueued
 * during the previous burst_ms become runnable together (p_run_at), so
 * the workers drain a backlog whose drain rate is a throughput figure
 * whatever the enqueue speed.  The client names each task "soak:<op>" and
 * its step keys "soak:<seed>:<keyop>:<ordinal>" itself; an `info` op is
 * tried once more as a new op with the same keys, as a careful caller
 * would, and 1 % of the ops repeat a recent op's steps and keys on
 * purpose: both put two tasks with one key in front of the ledger.
 *
 * One process, CLIENT_CONNS non-blocking connections, one poll() loop.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "soak.h"
#include "xalloc.h"

#define CLIENT_CONNS	4
#define OP_TIMEOUT_NS	10000000000LL	/* an op older than this is info */
#define CONNECT_NS	5000000000LL
#define RECONNECT_NS	100000000LL
#define GRACE_NS	120000000000LL	/* after the load window */

enum cstate { CC_DOWN, CC_CONNECTING, CC_IDLE, CC_BUSY };

struct cop {
	long		 id;
	long		 keyop;
	long		 retry_of;
	int		 wave;		/* burst id; 0 in the stream */
	double		 run_at;	/* 0: runnable at once */
	char		 steps[768];
};

struct cconn {
	PGconn			*pg;
	enum cstate		 state;
	PostgresPollingStatusType poll;
	int64_t			 at;	/* reconnect time or deadline */
	int			 flush;	/* output still to send */
	struct cop		 op;
	PGresult		*res;
};

struct client {
	const char	*dsn;
	const char	*phase;
	uint64_t	 seed;
	long		 nstream;	/* stream tasks over the window */
	int		 nbursts;
	long		 burst_k;	/* tasks per burst */
	int		 burst_ms;
	int		 burst0;	/* id of the first burst */
	long		 op0;
	int64_t		 mono0;		/* run origin */
	int64_t		 load0;		/* monotonic start of the window */
	double		 real0;		/* the same instant, CLOCK_REALTIME */
	FILE		*hist;
	long		 next_stream;
	long		 next_burst;	/* over all bursts' tasks */
	long		 next_id;
	struct cop	*retries;
	int		 nretries;
	int		 retries_cap;
	long		 n_ok, n_fail, n_info;
	struct cconn	 conns[CLIENT_CONNS];
};

static void	client_usage(void) __attribute__((noreturn));
static void	client_args(struct client *, int, char **);
static int64_t	window_ns(const struct client *);
static int64_t	stream_due(const struct client *);
static int64_t	burst_due(const struct client *);
static int	scheduled(const struct client *);
static void	op_steps(const struct client *, long, char *, size_t);
static void	step_json(uint64_t *, const struct client *, long, int,
		    char *, size_t);
static void	hist(struct client *, const struct cop *, const char *,
		    json_t *);
static void	conn_down(struct cconn *);
static void	conn_start(struct client *, struct cconn *);
static void	conn_poll(struct cconn *);
static int	next_op(struct client *, struct cop *);
static void	op_invoke(struct client *, struct cconn *);
static void	op_end(struct client *, struct cconn *, const char *,
		    const char *);
static void	op_read(struct client *, struct cconn *);
static void	op_result(struct client *, struct cconn *);
static int	client_done(const struct client *);
static int	client_pollfds(struct client *, struct pollfd *, int64_t *);
static void	client_events(struct client *, struct pollfd *);
static void	client_timers(struct client *);

static void
client_usage(void)
{
	fprintf(stderr, "usage: eavsoak client -d dsn -o history -s seed "
	    "-P phase -m stream_tasks -b bursts -k burst_tasks -B burst_ms "
	    "-w first_burst -O op0 -M mono0_ns\n");
	exit(2);
}

static void
client_args(struct client *c, int argc, char **argv)
{
	const char	*out = NULL;
	int		 ch;

	while ((ch = getopt(argc, argv, "d:o:s:P:m:b:k:B:w:O:M:")) != -1) {
		switch (ch) {
		case 'd': c->dsn = optarg; break;
		case 'o': out = optarg; break;
		case 's': c->seed = strtoull(optarg, NULL, 10); break;
		case 'P': c->phase = optarg; break;
		case 'm': c->nstream = atol(optarg); break;
		case 'b': c->nbursts = atoi(optarg); break;
		case 'k': c->burst_k = atol(optarg); break;
		case 'B': c->burst_ms = atoi(optarg); break;
		case 'w': c->burst0 = atoi(optarg); break;
		case 'O': c->op0 = atol(optarg); break;
		case 'M': c->mono0 = strtoll(optarg, NULL, 10); break;
		default: client_usage();
		}
	}
	if (c->dsn == NULL || out == NULL || c->phase == NULL ||
	    c->nbursts < 1 || c->burst_k < 0 || c->nstream < 0 ||
	    c->burst_ms < 100 || c->burst0 < 1)
		client_usage();
	c->hist = jl_open(out);
}

static int64_t
window_ns(const struct client *c)
{
	return (int64_t)c->nbursts * c->burst_ms * 1000000;
}

/* When the next stream task is due (monotonic ns). */
static int64_t
stream_due(const struct client *c)
{
	return c->load0 + (int64_t)((double)c->next_stream * window_ns(c) /
	    (c->nstream ? c->nstream : 1));
}

/* When the next burst task is due: evenly over the burst_ms before. */
static int64_t
burst_due(const struct client *c)
{
	long	j = c->next_burst / c->burst_k, i = c->next_burst % c->burst_k;

	return c->load0 + (int64_t)j * c->burst_ms * 1000000 +
	    (int64_t)i * c->burst_ms * 1000000 / c->burst_k;
}

/* 1 if a stream task comes next, 2 a burst task, 0 none is left. */
static int
scheduled(const struct client *c)
{
	int	s = c->next_stream < c->nstream;
	int	b = c->burst_k > 0 && c->next_burst < c->nbursts * c->burst_k;

	if (s && b)
		return stream_due(c) <= burst_due(c) ? 1 : 2;
	return s ? 1 : b ? 2 : 0;
}

/*
 * One step of the mix.  D.2 asks for 40 % noop, 30 % ledger.transfer,
 * 25 % idempotent external calls and 5 % non-idempotent ones; exec and
 * http tools do not exist yet, so sleep stands in for the idempotent
 * calls and demo.notify (a non-idempotent sleep) for the others.  Sleeps
 * of 30-90 ms make workers hold running steps when they are killed.
 */
static void
step_json(uint64_t *r, const struct client *c, long keyop, int ord,
    char *buf, size_t len)
{
	static const char *const acct[] = { "alice", "bob", "carol", "dave" };
	char	key[96];
	int	x = rng_range(r, 1, 100), a, b;

	snprintf(key, sizeof(key), "\"idempotency_key\": \"soak:%llu:%ld:%d\", "
	    "\"max_attempts\": %d", (unsigned long long)c->seed, keyop, ord,
	    SOAK_MAX_ATTEMPTS);
	if (x <= 40)
		snprintf(buf, len, "{\"tool\": \"noop\", %s}", key);
	else if (x <= 70) {
		a = rng_range(r, 0, 3);
		b = (a + rng_range(r, 1, 3)) % 4;
		snprintf(buf, len, "{\"tool\": \"ledger.transfer\", \"input\": "
		    "{\"from\": \"%s\", \"to\": \"%s\", \"amount\": %d}, %s}",
		    acct[a], acct[b], rng_range(r, 1, 100), key);
	} else
		snprintf(buf, len, "{\"tool\": \"%s\", \"input\": "
		    "{\"ms\": %d}, %s}", x <= 95 ? "sleep" : "demo.notify",
		    rng_range(r, 30, 90), key);
}

/* The two steps of op keyop: the same for a seed, whatever the timing. */
static void
op_steps(const struct client *c, long keyop, char *buf, size_t len)
{
	uint64_t	r = c->seed * 0x100000001B3ULL ^ (uint64_t)keyop;
	char		s1[360], s2[360];

	(void)rng_next(&r);
	step_json(&r, c, keyop, 1, s1, sizeof(s1));
	step_json(&r, c, keyop, 2, s2, sizeof(s2));
	snprintf(buf, len, "[%s, %s]", s1, s2);
}

/* Appends one history record for op (and its extra fields). */
static void
hist(struct client *c, const struct cop *op, const char *type, json_t *extra)
{
	json_t	*o = json_pack("{s:I, s:s, s:f, s:f}", "op", (json_int_t)op->id,
	    "type", type, "mono", since_s(c->mono0), "real", real_s());

	if (o == NULL)
		fatalx("json_pack");
	if (extra != NULL && json_object_update(o, extra) == -1)
		fatalx("json_object_update");
	json_decref(extra);
	jl_write(c->hist, o);
}

static void
conn_down(struct cconn *cc)
{
	if (cc->pg != NULL)
		PQfinish(cc->pg);
	PQclear(cc->res);
	cc->res = NULL;
	cc->pg = NULL;
	cc->state = CC_DOWN;
	cc->at = mono_ns() + RECONNECT_NS;
}

/* Starts a non-blocking connection; no op is invoked until it is up. */
static void
conn_start(struct client *c, struct cconn *cc)
{
	const char	*keys[] = { "dbname", "application_name",
			    "connect_timeout", NULL };
	const char	*vals[] = { c->dsn, "soak-client", "5", NULL };

	cc->pg = PQconnectStartParams(keys, vals, 1);
	if (cc->pg == NULL || PQstatus(cc->pg) == CONNECTION_BAD) {
		conn_down(cc);
		return;
	}
	cc->state = CC_CONNECTING;
	cc->poll = PGRES_POLLING_WRITING;
	cc->at = mono_ns() + CONNECT_NS;
}

static void
conn_poll(struct cconn *cc)
{
	cc->poll = PQconnectPoll(cc->pg);
	if (cc->poll == PGRES_POLLING_FAILED)
		conn_down(cc);
	else if (cc->poll == PGRES_POLLING_OK) {
		if (PQsetnonblocking(cc->pg, 1) == -1) {
			conn_down(cc);
			return;
		}
		PQsetNoticeProcessor(cc->pg, soak_quiet, NULL);
		cc->state = CC_IDLE;
	}
}

/* The next op to invoke now (a retry first), or 0 if none is due. */
static int
next_op(struct client *c, struct cop *op)
{
	uint64_t	r;
	int		which = scheduled(c), k;
	long		j;

	if (c->nretries > 0) {
		*op = c->retries[--c->nretries];
		op->id = c->next_id++;
		return 1;
	}
	if (which == 0 ||
	    (which == 1 ? stream_due(c) : burst_due(c)) > mono_ns())
		return 0;
	memset(op, 0, sizeof(*op));
	op->id = op->keyop = c->next_id++;
	/*
	 * 1 % of the ops submit again the steps and keys of a recent op, as
	 * a caller that gave up waiting would: two tasks, one key each.
	 */
	r = c->seed * 0x9E3779B97F4A7C15ULL ^ (uint64_t)op->id;
	k = rng_range(&r, 1, 50);
	if (rng_range(&r, 1, 100) == 1 && op->id - k >= c->op0)
		op->keyop = op->id - k;
	if (which == 1)
		c->next_stream++;
	else {
		j = c->next_burst++ / c->burst_k;
		op->wave = c->burst0 + (int)j;
		op->run_at = c->real0 + (double)(j + 1) * c->burst_ms / 1000.0;
	}
	op_steps(c, op->keyop, op->steps, sizeof(op->steps));
	return 1;
}

static void
op_invoke(struct client *c, struct cconn *cc)
{
	struct cop	*op = &cc->op;
	char		 kind[32], run_at[32];
	const char	*params[5] = { SOAK_QUEUE, kind, op->steps,
			    "soak:client", op->run_at > 0 ? run_at : NULL };

	snprintf(kind, sizeof(kind), "soak:%ld", op->id);
	snprintf(run_at, sizeof(run_at), "%.6f", op->run_at);
	hist(c, op, "invoke", json_pack("{s:s, s:i, s:s, s:I, s:I, s:f, s:s}",
	    "phase", c->phase, "wave", op->wave, "kind", kind,
	    "keyop", (json_int_t)op->keyop, "retry_of",
	    (json_int_t)op->retry_of, "run_at", op->run_at, "steps",
	    op->steps));
	cc->state = CC_BUSY;
	cc->at = mono_ns() + OP_TIMEOUT_NS;
	if (!PQsendQueryParams(cc->pg, "SELECT eav.task_enqueue($1, $2, "
	    "$3::jsonb, $4, p_run_at => to_timestamp($5::float8))", 5, NULL,
	    params, NULL, NULL, 0)) {
		/* It may have left in part: the outcome is unknown. */
		op_end(c, cc, "info", PQerrorMessage(cc->pg));
		return;
	}
	cc->flush = PQflush(cc->pg);
	if (cc->flush == -1)
		op_end(c, cc, "info", PQerrorMessage(cc->pg));
}

/*
 * Records how op ended.  After `info` the connection is dropped (its
 * session may still be working on the call) and the op is tried once
 * more with the same keys.
 */
static void
op_end(struct client *c, struct cconn *cc, const char *type, const char *err)
{
	struct cop	*op = &cc->op;
	json_t		*extra = NULL;
	char		 msg[256];

	if (err != NULL) {
		snprintf(msg, sizeof(msg), "%s", err);
		msg[strcspn(msg, "\n")] = '\0';
		extra = json_pack("{s:s}", "error", msg);
	}
	hist(c, op, type, extra);
	if (strcmp(type, "info") == 0) {
		c->n_info++;
		if (op->retry_of == 0) {
			if (c->nretries == c->retries_cap) {
				c->retries_cap = c->retries_cap * 2 + 16;
				c->retries = xreallocarray(c->retries,
				    (size_t)c->retries_cap, sizeof(*op));
			}
			op->retry_of = op->id;
			c->retries[c->nretries++] = *op;
		}
		conn_down(cc);
		cc->at = mono_ns();
		return;
	}
	if (strcmp(type, "fail") == 0)
		c->n_fail++;
	PQclear(cc->res);
	cc->res = NULL;
	cc->state = CC_IDLE;
}

/*
 * Reads what arrived; ends the op once the whole result is in.  An error
 * after the row (the server dying between the statement and its commit)
 * wins: the row alone does not mean the task was committed.
 */
static void
op_read(struct client *c, struct cconn *cc)
{
	PGresult	*r;

	if (!PQconsumeInput(cc->pg)) {
		op_end(c, cc, "info", PQerrorMessage(cc->pg));
		return;
	}
	while (!PQisBusy(cc->pg)) {
		if ((r = PQgetResult(cc->pg)) == NULL) {
			op_result(c, cc);
			return;
		}
		if (cc->res == NULL ||
		    PQresultStatus(r) == PGRES_FATAL_ERROR) {
			PQclear(cc->res);
			cc->res = r;
		} else
			PQclear(r);
	}
}

/*
 * Classifies a complete result.  An error on a connection that is still
 * up, other than the server going away, means the transaction rolled
 * back: fail.  Anything else leaves the outcome open: info.
 */
static void
op_result(struct client *c, struct cconn *cc)
{
	const char	*st = NULL, *msg;
	json_t		*extra;
	long long	 task;

	if (cc->res != NULL && PQresultStatus(cc->res) == PGRES_TUPLES_OK &&
	    PQntuples(cc->res) == 1 && !PQgetisnull(cc->res, 0, 0) &&
	    PQstatus(cc->pg) == CONNECTION_OK) {
		task = strtoll(PQgetvalue(cc->res, 0, 0), NULL, 10);
		extra = json_pack("{s:I}", "task", (json_int_t)task);
		hist(c, &cc->op, "ok", extra);
		c->n_ok++;
		PQclear(cc->res);
		cc->res = NULL;
		cc->state = CC_IDLE;
		return;
	}
	if (cc->res != NULL)
		st = PQresultErrorField(cc->res, PG_DIAG_SQLSTATE);
	msg = cc->res ? PQresultErrorMessage(cc->res) : "";
	if (*msg == '\0')
		msg = PQerrorMessage(cc->pg);
	if (PQstatus(cc->pg) != CONNECTION_OK || st == NULL ||
	    strncmp(st, "08", 2) == 0 || strncmp(st, "57P0", 4) == 0)
		op_end(c, cc, "info", msg);
	else
		op_end(c, cc, "fail", msg);
}

static int
client_done(const struct client *c)
{
	int	i;

	if (scheduled(c) != 0 || c->nretries > 0)
		return 0;
	for (i = 0; i < CLIENT_CONNS; i++)
		if (c->conns[i].state == CC_BUSY)
			return 0;
	return 1;
}

/* Fills the poll set; *wake gets the earliest timer. */
static int
client_pollfds(struct client *c, struct pollfd *pfd, int64_t *wake)
{
	struct cconn	*cc;
	int64_t		 due;
	int		 i, which = scheduled(c);

	*wake = mono_ns() + 50000000;
	due = which == 1 ? stream_due(c) : which == 2 ? burst_due(c) : *wake;
	if (due < *wake)
		*wake = due;
	for (i = 0; i < CLIENT_CONNS; i++) {
		cc = &c->conns[i];
		pfd[i].fd = -1;
		pfd[i].events = 0;
		pfd[i].revents = 0;
		if (cc->state != CC_IDLE && cc->at < *wake)
			*wake = cc->at;
		if (cc->state == CC_CONNECTING) {
			pfd[i].fd = PQsocket(cc->pg);
			pfd[i].events = cc->poll == PGRES_POLLING_READING ?
			    POLLIN : POLLOUT;
		} else if (cc->state == CC_BUSY) {
			pfd[i].fd = PQsocket(cc->pg);
			pfd[i].events = POLLIN | (cc->flush == 1 ? POLLOUT : 0);
		}
	}
	return CLIENT_CONNS;
}

static void
client_events(struct client *c, struct pollfd *pfd)
{
	struct cconn	*cc;
	int		 i;

	for (i = 0; i < CLIENT_CONNS; i++) {
		cc = &c->conns[i];
		if (pfd[i].fd == -1 || pfd[i].revents == 0)
			continue;
		if (cc->state == CC_CONNECTING)
			conn_poll(cc);
		else if (cc->state == CC_BUSY) {
			if ((pfd[i].revents & POLLOUT) &&
			    (cc->flush = PQflush(cc->pg)) == -1) {
				op_end(c, cc, "info", PQerrorMessage(cc->pg));
				continue;
			}
			if (pfd[i].revents & (POLLIN | POLLERR | POLLHUP))
				op_read(c, cc);
		}
	}
}

/* Reconnects, times out, and hands due ops to idle connections. */
static void
client_timers(struct client *c)
{
	struct cconn	*cc;
	int64_t		 now = mono_ns();
	int		 i;

	for (i = 0; i < CLIENT_CONNS; i++) {
		cc = &c->conns[i];
		if (cc->state == CC_DOWN && now >= cc->at)
			conn_start(c, cc);
		else if (cc->state == CC_CONNECTING && now >= cc->at)
			conn_down(cc);
		else if (cc->state == CC_BUSY && now >= cc->at)
			op_end(c, cc, "info", "timed out after 10 s");
		if (cc->state == CC_IDLE && next_op(c, &cc->op))
			op_invoke(c, cc);
	}
}

int
client_main(int argc, char **argv)
{
	struct client	 c;
	struct pollfd	 pfd[CLIENT_CONNS];
	int64_t		 wake, end;
	int		 n, i, timeout;

	memset(&c, 0, sizeof(c));
	log_init("eavsoak-client");
	client_args(&c, argc, argv);
	c.load0 = mono_ns();
	c.real0 = real_s();
	c.next_id = c.op0;
	for (i = 0; i < CLIENT_CONNS; i++)
		c.conns[i].state = CC_DOWN;
	for (i = 0; i < c.nbursts && c.burst_k > 0; i++)
		jl_write(c.hist, json_pack("{s:s, s:s, s:i, s:f, s:I}",
		    "type", "wave", "phase", c.phase, "wave", c.burst0 + i,
		    "run_at", c.real0 + (double)(i + 1) * c.burst_ms / 1000.0,
		    "tasks", (json_int_t)c.burst_k));
	end = c.load0 + window_ns(&c) + GRACE_NS;
	while (!client_done(&c) && mono_ns() < end) {
		client_timers(&c);
		n = client_pollfds(&c, pfd, &wake);
		timeout = (int)((wake - mono_ns()) / 1000000);
		if (poll(pfd, (nfds_t)n, timeout < 0 ? 0 : timeout) == -1 &&
		    errno != EINTR)
			fatal("poll");
		client_events(&c, pfd);
	}
	for (i = 0; i < CLIENT_CONNS; i++)
		if (c.conns[i].state == CC_BUSY)
			op_end(&c, &c.conns[i], "info", "client deadline");
	fprintf(stderr, "eavsoak-client: %s: %ld ok, %ld fail, %ld info; "
	    "%ld stream and %ld burst tasks invoked\n", c.phase, c.n_ok,
	    c.n_fail, c.n_info, c.next_stream, c.next_burst);
	return scheduled(&c) == 0 ? 0 : 1;
}
