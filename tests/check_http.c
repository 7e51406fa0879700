/*
 * The http tool, for real: eavd's workers call tests/far/httpd (built into
 * the build directory) on 127.0.0.1, whose answer each step's input
 * chooses (see the top of tests/far/httpd.c).  One test per outcome
 * mapping (2xx, 4xx, 5xx, 429 with Retry-After in seconds, as a date and
 * as garbage, connect refused, connection lost after the request, a hung
 * answer, unreadable and oversized answers), secrets that reach the far
 * side and nowhere else, health (degraded, unavailable with an alarm,
 * fail fast, probe), client idempotency keys (replay, collision), and
 * SIGKILLs of workers in the middle of calls: at most one effect per key.
 * https against the far side under --tls, with a throwaway CA and
 * certificates the openssl program makes for each test: calls by name
 * and by address, certificates that do not verify, handshakes that fail.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/ssl.h>

#include "harness.h"

#define DEADLINE_MS	TH_TOOL_DEADLINE_MS
#define KILLS		50
#define KILL_MS		120000

static char	every[] = "--every";

struct far {
	pid_t	pid;
	int	port;
	int	tls;		/* serves https only */
	char	host[64];	/* it listens on host's first address */
	char	portfile[256];
};


static const char register_sql[] =
    "SELECT eav.tool_register($1, 'http', $2::jsonb, $3::boolean, $4::int)";

/*
 * Starts the far side on host's first address, with extra arguments
 * (NULL-terminated), and reads its port.
 */
static void
far_spawn(struct far *f, const char *host, char *const extra[])
{
	char	*argv[12], buf[32];
	FILE	*fp;
	long long deadline = th_now_ms() + DEADLINE_MS;
	int	 i;

	snprintf(f->host, sizeof(f->host), "%s", host);
	snprintf(f->portfile, sizeof(f->portfile), "%s/httpd.%d.port",
	    th_tmpdir(), (int)getpid());
	unlink(f->portfile);
	argv[0] = th_bin("httpd");
	argv[1] = "-p";
	argv[2] = f->portfile;
	argv[3] = "-b";
	argv[4] = f->host;
	for (i = 0; extra[i] != NULL && i < 6; i++)
		argv[5 + i] = extra[i];
	argv[5 + i] = NULL;
	f->pid = fork();
	ck_assert_int_ne(f->pid, -1);
	if (f->pid == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	f->port = 0;
	while (f->port == 0) {
		ck_assert_msg(th_now_ms() < deadline, "httpd did not start");
		if ((fp = fopen(f->portfile, "r")) != NULL) {
			if (fgets(buf, sizeof(buf), fp) != NULL)
				f->port = atoi(buf);
			fclose(fp);
		}
		if (f->port == 0)
			th_pause_ms(5);
	}
}

/* Starts the plain far side (flag: NULL or "--every") on 127.0.0.1. */
static void
far_start(struct far *f, char *flag)
{
	char	*extra[] = { flag, NULL };

	f->tls = 0;
	far_spawn(f, "127.0.0.1", extra);
}

/*
 * Starts the far side serving https with cert and key, on localhost:
 * where a client that resolves "localhost" connects (127.0.0.1 or ::1,
 * whichever the machine lists first).
 */
static void
far_start_tls(struct far *f, char *cert, char *key)
{
	char	*extra[] = { "--tls", cert, key, NULL };

	f->tls = 1;
	far_spawn(f, "localhost", extra);
}

static void
far_stop(struct far *f)
{
	kill(f->pid, SIGTERM);
	ck_assert_int_ne(th_waitpid(f->pid, DEADLINE_MS), -1);
}

/* The first address of the far side's host, as a URL writes it. */
static void
far_addr(const struct far *f, char *buf, size_t len)
{
	struct addrinfo	 hints, *ai;
	char		 a[INET6_ADDRSTRLEN];

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	ck_assert_int_eq(getaddrinfo(f->host, NULL, &hints, &ai), 0);
	ck_assert_int_eq(getnameinfo(ai->ai_addr, ai->ai_addrlen, a,
	    sizeof(a), NULL, 0, NI_NUMERICHOST), 0);
	snprintf(buf, len, ai->ai_family == AF_INET6 ? "[%s]" : "%s", a);
	freeaddrinfo(ai);
}

/* A socket connected to the far side, as the worker connects. */
static int
far_connect(const struct far *f)
{
	struct addrinfo	 hints, *ai;
	char		 port[16];
	int		 s;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", f->port);
	ck_assert_int_eq(getaddrinfo(f->host, port, &hints, &ai), 0);
	ck_assert_int_ne(s = socket(ai->ai_family, SOCK_STREAM, 0), -1);
	ck_assert_int_eq(connect(s, ai->ai_addr, ai->ai_addrlen), 0);
	freeaddrinfo(ai);
	return s;
}

/*
 * Sends req over TLS on s and reads the answer into buf (len bytes at
 * most, NUL-terminated).  Unverified: this is the test looking at its
 * own far side, not the worker's verification under test.
 */
static size_t
far_tls_exchange(int s, const char *req, char *buf, size_t len)
{
	SSL_CTX	*ctx = SSL_CTX_new(TLS_client_method());
	SSL	*ssl;
	size_t	 got = 0;
	int	 n;

	ck_assert_ptr_nonnull(ctx);
	ck_assert_ptr_nonnull(ssl = SSL_new(ctx));
	ck_assert_int_eq(SSL_set_fd(ssl, s), 1);
	ck_assert_int_eq(SSL_connect(ssl), 1);
	ck_assert_int_eq(SSL_write(ssl, req, (int)strlen(req)),
	    (int)strlen(req));
	while (got < len - 1 && (n = SSL_read(ssl, buf + got,
	    (int)(len - 1 - got))) > 0)
		got += (size_t)n;
	buf[got] = '\0';
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	return got;
}

/* GET path from the far side; its JSON body (caller decrefs). */
static json_t *
far_get(const struct far *f, const char *path)
{
	char			 req[256], buf[65536], *body;
	size_t			 len = 0;
	ssize_t			 n;
	json_t			*v;
	int			 s = far_connect(f);

	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n"
	    "Connection: close\r\n\r\n", path);
	if (f->tls)
		len = far_tls_exchange(s, req, buf, sizeof(buf));
	else {
		ck_assert_int_eq(write(s, req, strlen(req)),
		    (ssize_t)strlen(req));
		while (len < sizeof(buf) - 1 && (n = read(s, buf + len,
		    sizeof(buf) - 1 - len)) > 0)
			len += (size_t)n;
	}
	close(s);
	buf[len] = '\0';
	body = strstr(buf, "\r\n\r\n");
	ck_assert_ptr_nonnull(body);
	v = json_loads(body + 4, 0, NULL);
	ck_assert_msg(v != NULL, "far side answered %s", buf);
	return v;
}

/* One number of /_stats. */
static long long
far_stat(const struct far *f, const char *name)
{
	json_t		*v = far_get(f, "/_stats");
	long long	 n = json_integer_value(json_object_get(v, name));

	json_decref(v);
	return n;
}

/* Registers tool name at url; extra is more config. */
static void
reg_url(PGconn *c, const char *name, const char *url, int idempotent,
    int timeout_ms, const char *extra)
{
	char	cfg[1024], t[16];

	snprintf(cfg, sizeof(cfg), "{\"url\": \"%s\"%s%s}", url,
	    extra ? ", " : "", extra ? extra : "");
	snprintf(t, sizeof(t), "%d", timeout_ms);
	PQclear(th_exec(c, register_sql, 4, name, cfg,
	    idempotent ? "true" : "false", t));
}

/* Registers tool name at the far side's path; extra is more config. */
static void
reg(PGconn *c, const struct far *f, const char *name, const char *path,
    int idempotent, int timeout_ms, const char *extra)
{
	char	url[512];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/%s", f->port, path);
	reg_url(c, name, url, idempotent, timeout_ms, extra);
}

/* Registers tool name at https://host:port/path of f; extra as reg's. */
static void
reg_tls(PGconn *c, const struct far *f, const char *host, const char *name,
    int idempotent, int timeout_ms, const char *extra)
{
	char	url[512];

	snprintf(url, sizeof(url), "https://%s:%d/%s", host, f->port, name);
	reg_url(c, name, url, idempotent, timeout_ms, extra);
}

static void
setup(struct th_db *db, struct th_eavd *e, struct far *f, const char *node,
    int workers, char *flag)
{
	th_far_db(db);
	far_start(f, flag);
	th_far_conf(e, db, node, workers, 4);
}

static void
teardown(struct th_db *db, struct th_eavd *e, struct far *f)
{
	th_eavd_stop_ok(e);
	far_stop(f);
	th_db_free(db);
}

/* Enqueues one step with a client idempotency key. */
static const char *
enqueue_key(PGconn *c, const char *tool, const char *input, const char *key)
{
	static char	id[4][24];
	static int	i;

	i = (i + 1) % 4;
	snprintf(id[i], sizeof(id[i]), "%lld", th_ll(c, "SELECT "
	    "eav.step_id(eav.enqueue($1, $2::jsonb, p_idempotency_key => $3), "
	    "1)", 3, tool, input, key));
	return id[i];
}

/* Asserts the step's error contains want. */
static void
assert_error(PGconn *c, const char *step, const char *want)
{
	char	*err = th_step_error(c, step);

	ck_assert_msg(strstr(err, want) != NULL, "step %s: error \"%s\" "
	    "lacks \"%s\"", step, err, want);
	free(err);
}

static long long
step_ll(PGconn *c, const char *step, const char *expr)
{
	char	sql[256];

	snprintf(sql, sizeof(sql), "SELECT (%s)::bigint FROM eav.steps WHERE "
	    "id = $1::bigint", expr);
	return th_ll(c, sql, 1, step);
}

/* 2xx: succeeded; the far side saw the key, attempt, method and body. */
/* FM-060 */
START_TEST(test_http_succeeded)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step;
	char		 url[128];

	setup(&db, &e, &f, "http1", 1, NULL);
	reg(db.conn, &f, "far", "charge", 1, 5000, NULL);
	reg(db.conn, &f, "far.get", "o/{id}?x=1", 1, 5000,
	    "\"method\": \"GET\", \"body\": \"none\"");
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far", "{\"order\": 7}", 3);
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND (result->>'status')::int = 200 AND "
	    "result->'body'->>'key' = idempotency_key AND "
	    "(result->'body'->'body'->>'order')::int = 7 AND "
	    "result->'body'->>'method' = 'POST' AND "
	    "result->'body'->>'path' = '/charge' AND attempt = 1", 1, step), 1);
	step = th_enqueue(db.conn, "far.get", "{\"id\": \"a b/c\"}", 3);
	th_wait_state(db.conn, &e, step, "succeeded");
	snprintf(url, sizeof(url), "/o/a%%20b%%2Fc");
	ck_assert_msg(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND result->'body'->>'method' = 'GET' AND "
	    "result->'body'->>'path' = $2 AND result->'body'->>'query' = "
	    "'x=1' AND result->'body'->'body' = 'null'", 2, step, url) == 1,
	    "result %s", th_str(db.conn, "SELECT result FROM eav.steps WHERE "
	    "id = $1::bigint", 1, step));
	/* An input the URL needs and lacks: failed without a call. */
	step = th_enqueue(db.conn, "far.get", "{}", 3);
	th_wait_state(db.conn, &e, step, "failed");
	assert_error(db.conn, step, "the URL needs input.id");
	ck_assert_int_eq(far_stat(&f, "deliveries"), 2);
	teardown(&db, &e, &f);
}
END_TEST

/* 4xx: failed at once; 5xx: retried, then it succeeds. */
/* FM-061 */
START_TEST(test_http_status_classes)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*bad, *flaky;

	setup(&db, &e, &f, "http2", 1, NULL);
	reg(db.conn, &f, "far", "x", 1, 5000, NULL);
	th_eavd_up(&e, db.conn, 1);
	bad = th_enqueue(db.conn, "far", "{\"mode\": \"status\", "
	    "\"status\": 422, \"body\": \"no such account\"}", 5);
	flaky = th_enqueue(db.conn, "far", "{\"mode\": \"status\", \"status\": "
	    "503, \"until_attempt\": 3}", 5);
	th_wait_state(db.conn, &e, bad, "failed");
	assert_error(db.conn, bad, "HTTP 422: no such account");
	ck_assert_int_eq(step_ll(db.conn, bad, "attempt"), 1);
	th_wait_state(db.conn, &e, flaky, "succeeded");
	ck_assert_int_eq(step_ll(db.conn, flaky, "attempt"), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE step_id = $1::bigint AND type = 'step.retry_scheduled' AND "
	    "payload->>'error' LIKE 'HTTP 503%'", 1, flaky), 2);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * 429: the step waits for Retry-After (seconds, or an HTTP date) without
 * spending an attempt, and the tool's reset time moves; an unusable
 * Retry-After (garbage, negative, huge) waits the default 30 s.
 */
/* FM-042 */
START_TEST(test_http_rate_limited)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step, *bad;
	static const char *const garbage[] = { "soon", "-5", "99999999999",
	    "Tue, 99 Foo 2026 25:61:61 GMT" };
	char		 input[256];
	size_t		 i;

	setup(&db, &e, &f, "http3", 1, NULL);
	reg(db.conn, &f, "far", "x", 1, 5000, NULL);
	reg(db.conn, &f, "far.b", "y", 1, 5000, NULL);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far", "{\"mode\": \"status\", \"status\": "
	    "429, \"retry_after\": \"1\", \"times\": 1}", 1);
	th_wait_state(db.conn, &e, step, "succeeded");
	/* One attempt allowed, and it was enough: the 429 spent none. */
	ck_assert_int_eq(step_ll(db.conn, step, "attempt"), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE step_id = $1::bigint AND type = 'step.released' AND "
	    "(payload->>'deferred')::boolean", 1, step), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'tool.rate_limited' AND payload->>'tool' = 'far'",
	    0), 1);
	/* The second call came no sooner than the reset. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " c WHERE c.step_id = $1::bigint AND c.type = 'step.claimed' AND "
	    "(c.payload->>'epoch')::int = 2 AND c.at >= (SELECT "
	    "(payload->>'resets_at')::timestamptz - interval '20 ms' FROM "
	    "eav.audit_events WHERE type = 'tool.rate_limited')", 1, step), 1);
	for (i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		snprintf(input, sizeof(input), "{\"mode\": \"status\", "
		    "\"status\": 429, \"retry_after\": \"%s\"}", garbage[i]);
		bad = th_enqueue(db.conn, "far.b", input, 1);
		ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT state = "
		    "'pending' AND claim_epoch = 1 FROM eav.steps WHERE id = "
		    "$1::bigint", 1, bad), "step %s not deferred", bad);
		assert_error(db.conn, bad, "unusable Retry-After");
		ck_assert_int_eq(step_ll(db.conn, bad, "attempt"), 0);
		ck_assert_int_eq(step_ll(db.conn, bad, "(extract(epoch from "
		    "run_at - now()) BETWEEN 25 AND 31)::int"), 1);
		PQclear(th_exec(db.conn, "SELECT eav.task_cancel($1::bigint / "
		    "128)", 1, bad));
		PQclear(th_exec(db.conn, "UPDATE eav.tools SET "
		    "rate_limit_resets_at = NULL WHERE name = 'far.b'", 0));
	}
	teardown(&db, &e, &f);
}
END_TEST

/*
 * Nothing listens: the request never left, so the step is retried (not
 * unknown) until its attempts run out.  Errors in a row degrade the tool.
 */
/* FM-062 */
START_TEST(test_http_refused_retried)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f, dead;
	const char	*step;

	setup(&db, &e, &f, "http4", 1, NULL);
	far_start(&dead, NULL);
	far_stop(&dead);
	reg(db.conn, &dead, "gone", "x", 0, 5000, "\"health\": "
	    "{\"degraded_after\": 2, \"unavailable_after\": 50}");
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "gone", "{}", 3);
	th_wait_state(db.conn, &e, step, "failed");
	assert_error(db.conn, step, "cannot connect before the request was "
	    "sent");
	ck_assert_int_eq(step_ll(db.conn, step, "attempt"), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'gone' AND health = 'degraded' AND consecutive_errors = 3",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE type = 'tool.health_changed' AND payload->>'to' = "
	    "'degraded'", 0), 1);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * The far side acts, then closes without answering: unknown (tool_lost);
 * the idempotent tool is called again with the same key, and the far
 * side's effect stays one.
 */
/* FM-063 */
START_TEST(test_http_lost_after_send)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step;

	setup(&db, &e, &f, "http5", 1, NULL);
	reg(db.conn, &f, "far", "x", 1, 5000, NULL);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far", "{\"mode\": \"close\", \"times\": 1}",
	    3);
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND detected_by "
	    "= 'tool_lost' AND reason LIKE 'connection lost after the request "
	    "was sent%'", 1, step), 1);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 2);
	ck_assert_int_eq(far_stat(&f, "effects"), 1);
	ck_assert_int_eq(step_ll(db.conn, step, "(result->'body'->>'effects')"
	    "::int"), 1);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * No answer within the tool's timeout, non-idempotent tool: unknown
 * (tool_timeout), held with an alarm, never called again by itself.
 */
/* FM-064 */
START_TEST(test_http_timeout_held)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step;

	setup(&db, &e, &f, "http6", 1, every);
	reg(db.conn, &f, "pay", "x", 0, 300, NULL);
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "pay", "{\"mode\": \"hang\"}", 3);
	th_wait_state(db.conn, &e, step, "held");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND detected_by "
	    "= 'tool_timeout' AND decision = 'held'", 1, step), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'unknown_outcome_held' AND state = 'open'", 0), 1);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 1);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * Answers that cannot be read: a bad status line or broken chunking
 * after the request left is unknown; an answer over max_output_bytes
 * fails; an answer without Content-Length ended by close is read whole.
 * No result is ever kept from them, and the worker goes on.
 */
/* FM-065 */
START_TEST(test_http_bad_answers)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*chunks, *line, *big, *noclen;

	setup(&db, &e, &f, "http7", 1, every);
	reg(db.conn, &f, "far", "x", 0, 5000, "\"max_output_bytes\": 1000");
	th_eavd_up(&e, db.conn, 1);
	chunks = th_enqueue(db.conn, "far", "{\"mode\": \"raw\", \"raw\": "
	    "\"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
	    "zz\\r\\nhello\\r\\n\"}", 3);
	line = th_enqueue(db.conn, "far", "{\"mode\": \"raw\", \"raw\": "
	    "\"garbage\\r\\n\\r\\n\"}", 3);
	big = th_enqueue(db.conn, "far", "{\"mode\": \"big\", \"bytes\": "
	    "5000}", 3);
	noclen = th_enqueue(db.conn, "far", "{\"mode\": \"raw\", \"raw\": "
	    "\"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\n\\r\\n"
	    "{\\\"fine\\\": true}\"}", 3);
	th_wait_state(db.conn, &e, chunks, "failed");
	assert_error(db.conn, chunks, "chunk size that cannot be read");
	th_wait_state(db.conn, &e, line, "held");
	assert_error(db.conn, line, "after the request was sent");
	th_wait_state(db.conn, &e, big, "failed");
	assert_error(db.conn, big, "larger than the tool's max_output_bytes");
	th_wait_state(db.conn, &e, noclen, "succeeded");
	ck_assert_int_eq(step_ll(db.conn, noclen, "(result->'body'->>'fine')"
	    "::boolean::int"), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "state <> 'succeeded' AND result IS NOT NULL", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT owner_pid) FROM "
	    "eav.steps", 0), 1);
	teardown(&db, &e, &f);
}
END_TEST

/* Configs refused with the field named, nothing stored. */
/* FM-066 */
START_TEST(test_http_bad_config)
{
	struct th_db	 db;
	static const struct {
		const char	*config;
		const char	*timeout;
		const char	*want;
	} bad[] = {
		{ "{\"url\": \"http://h/\", \"verb\": \"GET\"}", "1000",
		    "unknown field \"verb\"" },
		{ "{\"method\": \"GET\"}", "1000", "\"url\" is missing" },
		{ "{\"url\": \"ftp://h/x\"}", "1000",
		    "must use http or https" },
		{ "{\"url\": \"h/x\"}", "1000", "must be an absolute URL" },
		{ "{\"url\": \"http://u:p@h/x\"}", "1000", "without spaces or "
		    "user info" },
		{ "{\"url\": \"http://h/\"}", "0", "timeout_ms must be" },
		{ "{\"url\": \"http://h/\"}", "-5", "timeout_ms must be" },
		{ "{\"url\": \"http://h/\", \"max_output_bytes\": 2000000}",
		    "1000", "\"max_output_bytes\" must be an integer" },
		{ "{\"url\": \"http://h/\", \"method\": \"TRACE\"}", "1000",
		    "\"method\" must be" },
		{ "{\"url\": \"http://h/\", \"headers\": {\"Host\": \"x\"}}",
		    "1000", "\"headers\" entry \"Host\"" },
		{ "{\"url\": \"http://h/\", \"headers\": {\"X-A\": \"a\\nb\"}}",
		    "1000", "\"headers\" entry \"X-A\"" },
		{ "{\"url\": \"http://h/\", \"secret_headers\": "
		    "{\"Authorization\": \"not a name\"}}", "1000",
		    "\"secret_headers\" entry" },
		{ "{\"url\": \"http://h/\", \"health\": {\"degraded_after\": "
		    "5, \"unavailable_after\": 2}}", "1000",
		    "must not be less than" },
		{ "{\"url\": \"http://h/\", \"health\": {\"when_unavailable\": "
		    "\"panic\"}}", "1000", "\"health.when_unavailable\"" },
		{ "{\"url\": \"https://h/\", \"ca_file\": \"certs/ca.pem\"}",
		    "1000", "\"ca_file\" must be an absolute path" },
		{ "{\"url\": \"https://h/\", \"ca_file\": 5}", "1000",
		    "\"ca_file\" must be a string" },
		{ "{\"url\": \"http://h/\", \"ca_file\": \"/etc/ca.pem\"}",
		    "1000", "\"ca_file\" applies to https URLs only" },
		{ "{\"url\": \"https://h/\", \"tls_insecure\": true}", "1000",
		    "http tool config: unknown field \"tls_insecure\"" },
	};
	size_t		 i;
	const char	*err;

	th_db_new(&db);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err = th_err(db.conn, "SELECT eav.tool_register('h', 'http', "
		    "$1::jsonb, true, $2::int)", 2, bad[i].config,
		    bad[i].timeout);
		ck_assert_msg(strstr(err, bad[i].want) != NULL && strncmp(err,
		    "22023", 5) == 0, "config %s: got \"%s\", want \"%s\"",
		    bad[i].config, err, bad[i].want);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'h'", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "config::text LIKE '%secret%'", 0), 0);
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('h', 'http', "
	    "'{\"url\": \"https://h/\"}', true, 1000)", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'h' AND config->'health'->>'when_unavailable' = 'wait' AND "
	    "(config->>'max_output_bytes')::int = 65536 AND config->>'method' "
	    "= 'POST' AND NOT config ? 'ca_file'", 0), 1);
	PQclear(th_exec(db.conn, "SELECT eav.tool_register('h', 'http', "
	    "'{\"url\": \"https://h/\", \"ca_file\": \"/etc/eav/ca.pem\"}', "
	    "true, 1000)", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'h' AND config->>'ca_file' = '/etc/eav/ca.pem'", 0), 1);
	th_db_free(&db);
}
END_TEST

/*
 * A secret header is read from eavd's environment: the far side gets it,
 * the database (config, audit, even the far side's echo of it in the
 * step's result, which is redacted) never holds it.
 */
/* FM-067 */
START_TEST(test_http_secret)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step, *missing;

	setenv("EAV_TEST_API_TOKEN", "Bearer canary-token-1234", 1);
	setup(&db, &e, &f, "http8", 1, NULL);
	reg(db.conn, &f, "far", "x", 1, 5000, "\"secret_headers\": "
	    "{\"Authorization\": \"EAV_TEST_API_TOKEN\"}");
	reg(db.conn, &f, "far.nosecret", "x", 1, 5000, "\"secret_headers\": "
	    "{\"Authorization\": \"EAV_TEST_NO_SUCH_SECRET\"}");
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "far", "{}", 3);
	missing = th_enqueue(db.conn, "far.nosecret", "{}", 3);
	th_wait_state(db.conn, &e, step, "succeeded");
	/* The far side's echo of it is redacted before it is stored. */
	ck_assert_int_eq(step_ll(db.conn, step, "(result->'body'->'headers'->>"
	    "'authorization' = '[REDACTED:authorization]')::int"), 1);
	th_wait_state(db.conn, &e, missing, "failed");
	assert_error(db.conn, missing, "secret EAV_TEST_NO_SUCH_SECRET");
	ck_assert_int_eq(step_ll(db.conn, missing, "attempt"), 1);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 1);
	/* Nothing holds it, not even the far side's echo. */
	ck_assert_int_eq(th_ll(db.conn, "SELECT (SELECT count(*) FROM "
	    "eav.audit_events a WHERE a::text LIKE '%canary-token%') + "
	    "(SELECT count(*) FROM eav.tools t WHERE t::text LIKE "
	    "'%canary-token%') + (SELECT count(*) FROM eav.steps s WHERE "
	    "s::text LIKE '%canary-token%')", 0), 0);
	teardown(&db, &e, &f);
	unsetenv("EAV_TEST_API_TOKEN");
}
END_TEST

/*
 * Errors in a row: degraded, then unavailable with an alarm; with
 * when_unavailable "fail", steps then fail without a call; a reset brings
 * it back and resolves the alarm.  With "wait", steps are deferred with
 * their attempt kept until a probe call succeeds.
 */
/* FM-026 */
START_TEST(test_http_health)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step;
	int		 i;

	setup(&db, &e, &f, "http9", 1, NULL);
	reg(db.conn, &f, "ff", "x", 1, 5000, "\"health\": {\"degraded_after\":"
	    " 2, \"unavailable_after\": 3, \"when_unavailable\": \"fail\"}");
	reg(db.conn, &f, "fw", "y", 1, 5000, "\"health\": {\"degraded_after\":"
	    " 1, \"unavailable_after\": 2, \"probe_ms\": 300}");
	th_eavd_up(&e, db.conn, 1);
	for (i = 0; i < 3; i++) {
		step = th_enqueue(db.conn, "ff", "{\"mode\": \"status\", "
		    "\"status\": 500}", 1);
		th_wait_state(db.conn, &e, step, "failed");
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'ff' AND health = 'unavailable' AND consecutive_errors = 3"
	    " AND last_error LIKE 'HTTP 500%'", 0), 1);
	ck_assert_msg(th_ll(db.conn, "SELECT count(*) FROM (SELECT "
	    "string_agg(payload->>'to', ',' ORDER BY id) AS s FROM "
	    "eav.audit_events WHERE type = 'tool.health_changed' AND "
	    "payload->>'tool' = 'ff') x WHERE s = 'degraded,unavailable'", 0)
	    == 1, "health changes: %s", th_str(db.conn, "SELECT string_agg("
	    "payload::text, ' ' ORDER BY id) FROM eav.audit_events WHERE type "
	    "= 'tool.health_changed'", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'tool_unavailable' AND subject = 'tool:ff' AND state = "
	    "'open'", 0), 1);
	step = th_enqueue(db.conn, "ff", "{}", 3);
	th_wait_state(db.conn, &e, step, "failed");
	assert_error(db.conn, step, "not called: tool ff is unavailable");
	ck_assert_int_eq(far_stat(&f, "deliveries"), 3);
	PQclear(th_exec(db.conn, "SELECT eav.tool_health_reset('ff')", 0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'tool_unavailable' AND state <> 'resolved'", 0), 0);
	step = th_enqueue(db.conn, "ff", "{}", 3);
	th_wait_state(db.conn, &e, step, "succeeded");

	/* wait: unavailable after 2 errors; a good step waits for the probe. */
	for (i = 0; i < 2; i++) {
		step = th_enqueue(db.conn, "fw", "{\"mode\": \"status\", "
		    "\"status\": 502}", 1);
		th_wait_state(db.conn, &e, step, "failed");
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'fw' AND health = 'unavailable'", 0), 1);
	step = th_enqueue(db.conn, "fw", "{}", 1);
	th_wait_state(db.conn, &e, step, "succeeded");
	ck_assert_int_eq(step_ll(db.conn, step, "attempt"), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'fw' AND health = 'available' AND consecutive_errors = 0",
	    0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "subject = 'tool:fw' AND state = 'resolved'", 0), 1);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * A client key: its second use with the same input gets the recorded
 * outcome without a call; with another input it is refused before any
 * call, audited and alarmed.
 */
/* FM-068 */
START_TEST(test_http_idempotency_key)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*first, *again, *other;

	setup(&db, &e, &f, "http10", 1, every);
	reg(db.conn, &f, "pay", "x", 0, 5000, NULL);
	th_eavd_up(&e, db.conn, 1);
	first = enqueue_key(db.conn, "pay", "{\"amount\": 5}", "order-77");
	th_wait_state(db.conn, &e, first, "succeeded");
	again = enqueue_key(db.conn, "pay", "{\"amount\": 5}", "order-77");
	th_wait_state(db.conn, &e, again, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps a, "
	    "eav.steps b WHERE a.id = $1::bigint AND b.id = $2::bigint AND "
	    "a.result = b.result", 2, first, again), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE step_id = $1::bigint AND type = 'tool_call.deduplicated'",
	    1, again), 1);
	other = enqueue_key(db.conn, "pay", "{\"amount\": 500}", "order-77");
	th_wait_state(db.conn, &e, other, "failed");
	assert_error(db.conn, other, "idempotency key collision");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_events"
	    " WHERE step_id = $1::bigint AND type = 'idempotency.collision' AND"
	    " (payload->>'first_step')::bigint = $2::bigint", 2, other, first),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms WHERE "
	    "type = 'idempotency_collision' AND state = 'open'", 0), 1);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 1);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * Makes the test's certificates, starts a far side serving https with
 * the good one, and configures eavd with one worker.
 */
static void
setup_tls(struct th_db *db, struct th_eavd *e, struct far *f,
    struct th_certs *k, const char *node)
{
	th_certs_make(k);
	th_far_db(db);
	far_start_tls(f, k->good, k->good_key);
	th_far_conf(e, db, node, 1, 4);
}

/*
 * https with the tool's ca_file: calls by DNS name (SNI, the name
 * checked) and by address succeed; once the request has left, a lost
 * connection and a hung answer are unknown outcomes, as over http, and
 * so is an answer without Content-Length whose connection closes without
 * TLS's close_notify: it may have been cut short.
 */
/* FM-063, FM-064, FM-065 */
START_TEST(test_https_calls)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	struct th_certs	 k;
	const char	*ok, *ip, *lost, *hang;
	char		 ca[400], addr[64], cut[24];

	setup_tls(&db, &e, &f, &k, "https1");
	snprintf(ca, sizeof(ca), "\"ca_file\": \"%s\"", k.ca);
	far_addr(&f, addr, sizeof(addr));
	reg_tls(db.conn, &f, "localhost", "far", 1, 5000, ca);
	reg_tls(db.conn, &f, addr, "far.ip", 1, 5000, ca);
	/* Long enough for the worker's first TLS context and handshake. */
	reg_tls(db.conn, &f, "localhost", "pay", 0, 2000, ca);
	th_eavd_up(&e, db.conn, 1);
	ok = th_enqueue(db.conn, "far", "{\"order\": 7}", 3);
	ip = th_enqueue(db.conn, "far.ip", "{}", 3);
	lost = th_enqueue(db.conn, "far", "{\"mode\": \"close\", "
	    "\"times\": 1}", 3);
	hang = th_enqueue(db.conn, "pay", "{\"mode\": \"hang\"}", 3);
	th_wait_state(db.conn, &e, ok, "succeeded");
	ck_assert_int_eq(step_ll(db.conn, ok, "((result->>'status')::int = "
	    "200 AND (result->'body'->'body'->>'order')::int = 7 AND "
	    "result->'body'->'headers'->>'host' LIKE 'localhost:%' AND "
	    "attempt = 1)::int"), 1);
	/* th_enqueue keeps 4 ids: ok's is reused from here on. */
	snprintf(cut, sizeof(cut), "%s", th_enqueue(db.conn, "far",
	    "{\"mode\": \"raw\", \"times\": 1, \"raw\": \"HTTP/1.1 200 OK"
	    "\\r\\nConnection: close\\r\\n\\r\\n{\\\"fine\\\": true}\"}", 3));
	th_wait_state(db.conn, &e, ip, "succeeded");
	th_wait_state(db.conn, &e, lost, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND detected_by "
	    "= 'tool_lost' AND reason LIKE 'connection lost after the request "
	    "was sent%'", 1, lost), 1);
	th_wait_state(db.conn, &e, hang, "held");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND detected_by "
	    "= 'tool_timeout'", 1, hang), 1);
	th_wait_state(db.conn, &e, cut, "succeeded");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes WHERE step_id = $1::bigint AND detected_by "
	    "= 'tool_lost'", 1, cut), 1);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 7);
	teardown(&db, &e, &f);
}
END_TEST

/* Puts a copy of file from at to, through a rename. */
static void
file_copy(const char *from, const char *to)
{
	char	 buf[16384], tmp[400];
	ssize_t	 n = th_read_file(from, buf, sizeof(buf));
	FILE	*fp;

	ck_assert_int_gt(n, 0);
	snprintf(tmp, sizeof(tmp), "%s.tmp", to);
	ck_assert_ptr_nonnull(fp = fopen(tmp, "w"));
	ck_assert_int_eq(fwrite(buf, 1, (size_t)n, fp), (size_t)n);
	ck_assert_int_eq(fclose(fp), 0);
	ck_assert_int_eq(rename(tmp, to), 0);
}

/*
 * Certificates that do not verify fail the step at once, naming the
 * reason, before any request: a CA the worker does not trust (the
 * system's, without ca_file; a ca_file without the far side's CA), a
 * certificate for another host (by name, by address).  So does a
 * ca_file the worker cannot use.  Each counts against the tool's
 * health; the far sides see no request.  A ca_file that changes is read
 * again: once it holds the right CA, the task retried succeeds.
 */
/* FM-077, FM-079 */
START_TEST(test_https_bad_certificate)
{
	static const struct {
		const char	*tool;
		const char	*want;
	} cases[] = {
		{ "untrusted", "does not verify: unable to get local issuer "
		    "certificate; the request was not sent" },
		{ "rotated", "does not verify: unable to get local issuer "
		    "certificate" },
		{ "wrongname", "does not verify: hostname mismatch" },
		{ "wrongaddr", "does not verify: IP address mismatch" },
		{ "nofile", "none.pem cannot be read: No such file or "
		    "directory" },
		{ "notpem", "openssl.cnf holds no certificate that can be "
		    "read" },
	};
	static const char health[] = "\"health\": {\"degraded_after\": 1}";
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f, w;
	struct th_certs	 k;
	char		 ca[400], nofile[400], notpem[400], rotcfg[400];
	char		 rot[300], addr[64], step[6][24];
	size_t		 i;

	setup_tls(&db, &e, &f, &k, "https2");
	far_start_tls(&w, k.wrong, k.wrong_key);
	far_addr(&w, addr, sizeof(addr));
	snprintf(ca, sizeof(ca), "%s, \"ca_file\": \"%s\"", health, k.ca);
	snprintf(nofile, sizeof(nofile), "%s, \"ca_file\": \"%s/none.pem\"",
	    health, k.dir);
	snprintf(notpem, sizeof(notpem), "%s, \"ca_file\": \"%s\"", health,
	    k.cnf);
	/* A bundle that holds a certificate, but not the far side's CA. */
	snprintf(rot, sizeof(rot), "%s/rotated.pem", k.dir);
	file_copy(k.wrong, rot);
	snprintf(rotcfg, sizeof(rotcfg), "%s, \"ca_file\": \"%s\"", health,
	    rot);
	reg_tls(db.conn, &f, "localhost", "untrusted", 1, 5000, health);
	reg_tls(db.conn, &f, "localhost", "rotated", 1, 5000, rotcfg);
	reg_tls(db.conn, &w, "localhost", "wrongname", 1, 5000, ca);
	reg_tls(db.conn, &w, addr, "wrongaddr", 1, 5000, ca);
	reg_tls(db.conn, &f, "localhost", "nofile", 1, 5000, nofile);
	reg_tls(db.conn, &f, "localhost", "notpem", 1, 5000, notpem);
	th_eavd_up(&e, db.conn, 1);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		snprintf(step[i], sizeof(step[i]), "%s",
		    th_enqueue(db.conn, cases[i].tool, "{}", 3));
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		th_wait_state(db.conn, &e, step[i], "failed");
		assert_error(db.conn, step[i], cases[i].want);
		ck_assert_int_eq(step_ll(db.conn, step[i], "attempt"), 1);
	}
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "health = 'degraded' AND consecutive_errors = 1", 0), 6);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 0);
	ck_assert_int_eq(far_stat(&w, "deliveries"), 0);
	file_copy(k.ca, rot);
	PQclear(th_exec(db.conn, "SELECT eav.task_retry($1::bigint / 128)", 1,
	    step[1]));
	th_wait_state(db.conn, &e, step[1], "succeeded");
	ck_assert_int_eq(far_stat(&f, "deliveries"), 1);
	far_stop(&w);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * An https URL whose far side does not speak TLS: the handshake fails
 * before any request, so the step is retried (not unknown, not failed at
 * once) until its attempts run out, and the tool's errors add up.
 */
/* FM-078 */
START_TEST(test_https_handshake_retried)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	const char	*step;
	char		 url[128];

	setup(&db, &e, &f, "https3", 1, NULL);
	snprintf(url, sizeof(url), "https://127.0.0.1:%d/x", f.port);
	reg_url(db.conn, "plain", url, 0, 5000, "\"health\": "
	    "{\"degraded_after\": 2, \"unavailable_after\": 50}");
	th_eavd_up(&e, db.conn, 1);
	step = th_enqueue(db.conn, "plain", "{}", 3);
	th_wait_state(db.conn, &e, step, "failed");
	assert_error(db.conn, step, "TLS handshake with 127.0.0.1 failed (");
	assert_error(db.conn, step, ") before the request was sent");
	ck_assert_int_eq(step_ll(db.conn, step, "attempt"), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.unknown_outcomes", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools WHERE "
	    "name = 'plain' AND health = 'degraded' AND consecutive_errors = "
	    "3", 0), 1);
	ck_assert_int_eq(far_stat(&f, "deliveries"), 0);
	teardown(&db, &e, &f);
}
END_TEST

/*
 * SIGKILLs of workers in the middle of calls: each interrupted step is
 * retried with its key, and the idempotent far side has exactly one
 * effect per step; deliveries may be more (the ratio is printed).
 */
/* FM-069 */
START_TEST(test_http_kill_mid_call)
{
	struct th_db	 db;
	struct th_eavd	 e;
	struct far	 f;
	struct th_call	 k;
	char		 age[16];
	long long	 start = th_now_ms(), steps, deliveries, effects;
	int		 kills = 0, interrupted = 0;

	setup(&db, &e, &f, "httpk", 3, NULL);
	reg(db.conn, &f, "far", "x", 1, 30000, NULL);
	th_eavd_up(&e, db.conn, 3);
	while (interrupted < KILLS) {
		ck_assert_msg(th_now_ms() - start < KILL_MS, "only %d of %d "
		    "kills interrupted a call (log %s)", interrupted, kills,
		    e.log);
		if (th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE state "
		    "IN ('pending', 'running')", 0) < 8)
			PQclear(th_exec(db.conn, "SELECT eav.enqueue('far', "
			    "'{\"mode\": \"delay\", \"ms\": 200}', "
			    "p_max_attempts => 100) FROM "
			    "generate_series(1, 8)", 0));
		/* Some kills land before the far side acts, some after. */
		snprintf(age, sizeof(age), "%ld", 30 + random() % 150);
		if (!th_pick_call(db.conn, e.pid, "far", age, &k) ||
		    kill(k.owner, SIGKILL) == -1) {
			th_pause_ms(5);
			continue;
		}
		kills++;
		ck_assert_msg(th_wait(db.conn, DEADLINE_MS, "SELECT NOT (state "
		    "= 'running' AND claim_epoch = $2::bigint) FROM eav.steps "
		    "WHERE id = $1::bigint", 2, k.step, k.epoch), "step %s was "
		    "not reconciled (log %s)", k.step, e.log);
		interrupted += th_ll(db.conn, "SELECT count(*) FROM "
		    "eav.unknown_outcomes WHERE step_id = $1::bigint AND "
		    "claim_epoch = $2::bigint", 2, k.step, k.epoch) > 0;
		/* Let some calls finish between kills. */
		th_pause_ms(100 + random() % 200);
	}
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT count(*) = 0 FROM "
	    "eav.steps WHERE state <> 'succeeded'", 0), "steps did not settle "
	    "(log %s)", e.log);
	steps = th_ll(db.conn, "SELECT count(*) FROM eav.steps", 0);
	effects = far_stat(&f, "effects");
	deliveries = far_stat(&f, "deliveries");
	ck_assert_int_eq(far_stat(&f, "max_effects_per_key"), 1);
	ck_assert_int_eq(effects, steps);
	ck_assert_int_ge(deliveries, effects);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.check_"
	    "invariants(true) WHERE violations > 0", 0), 0);
	printf("http kills: %d kills, %d calls interrupted, %lld steps, "
	    "%lld deliveries, %lld effects, deliveries/effects %.3f\n", kills,
	    interrupted, steps, deliveries, effects,
	    (double)deliveries / (double)effects);
	teardown(&db, &e, &f);
}
END_TEST

Suite *
suite_http(void)
{
	Suite	*s = suite_create("http");
	TCase	*calls = tcase_create("calls");
	TCase	*https = tcase_create("https");
	TCase	*kills = tcase_create("kills");

	tcase_add_test(calls, test_http_succeeded);
	tcase_add_test(calls, test_http_status_classes);
	tcase_add_test(calls, test_http_rate_limited);
	tcase_add_test(calls, test_http_refused_retried);
	tcase_add_test(calls, test_http_lost_after_send);
	tcase_add_test(calls, test_http_timeout_held);
	tcase_add_test(calls, test_http_bad_answers);
	tcase_add_test(calls, test_http_bad_config);
	tcase_add_test(calls, test_http_secret);
	tcase_add_test(calls, test_http_health);
	tcase_add_test(calls, test_http_idempotency_key);
	tcase_set_timeout(calls, 60);
	suite_add_tcase(s, calls);
	tcase_add_test(https, test_https_calls);
	tcase_add_test(https, test_https_bad_certificate);
	tcase_add_test(https, test_https_handshake_retried);
	tcase_set_timeout(https, 60);
	suite_add_tcase(s, https);
	tcase_add_test(kills, test_http_kill_mid_call);
	tcase_set_timeout(kills, 200);
	suite_add_tcase(s, kills);
	return s;
}
