/*
 * The http tool: one request per call through libevent's HTTP client, on
 * the worker's loop, so many calls run side by side.  One connection per
 * call ("Connection: close"): a connection that failed mid-request is
 * never reused, and no call waits behind another.
 *
 * What a failure means depends on whether the request left: a call whose
 * request bytes never reached the socket (refused, unreachable, connect
 * time-out) had no effect and is retried; once bytes were written, a
 * lost connection, an unreadable answer or the tool's time-out leaves
 * the outcome unknown (tool_lost, tool_timeout), which SQL retries with
 * the same key or holds.  "Written" is watched on the connection's
 * output buffer: evhttp puts the request there only once connected, and
 * a drain of it means the kernel has (some of) it.
 *
 * https goes through the same evhttp client on a TLS bufferevent (tls.c),
 * whose output buffer holds the plain request and drains only once the
 * handshake is done, so "written" means the same.  A certificate the far
 * side presents that does not verify (unknown CA, wrong host, expired) is
 * a configuration problem, not bad luck: the step fails at once, naming
 * the reason, and the tool's health counts it.  Any other handshake
 * failure (reset, a far side that does not speak TLS) is retried, as a
 * failed connect is.
 *
 * Answers: 2xx succeeded (result {"status", "body"}); 429 defers the step
 * to the tool's Retry-After without spending an attempt; other 4xx
 * failed; 5xx retried.  The Idempotency-Key header is the step's key.
 * Secrets (config.secret_headers) are read here, from
 * $CREDENTIALS_DIRECTORY/<name> (systemd LoadCredential=) or the
 * environment variable <name>, and never leave this process but in the
 * request.
 */
#include <sys/queue.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "clock.h"
#include "log.h"
#include "tls.h"
#include "worker.h"
#include "xalloc.h"

#define HTTP_OUTPUT_MAX		1048576
#define HTTP_HEADERS_MAX	65536
#define HTTP_URL_MAX		4096
#define HTTP_SECRET_MAX		4096
#define HTTP_ERROR_BODY		200	/* bytes of a failed answer kept */
#define RETRY_AFTER_DEFAULT_S	30	/* 429 without a usable Retry-After */
#define RETRY_AFTER_MAX_S	86400

struct http_call {
	TAILQ_ENTRY(http_call)	 entry;
	struct worker		*w;
	struct step		*s;
	struct evhttp_connection *evcon;
	struct evbuffer_cb_entry *watch;
	struct event		*timer;
	struct event		*reap;
	int			 tls;		/* https */
	int			 verify_error;	/* X509_V_*, set by tls.c */
	int			 sent;		/* request bytes left */
	int			 failed;	/* evhttp reported an error */
	enum evhttp_request_error error;
	int			 done;
};

TAILQ_HEAD(http_calls, http_call);

static struct http_calls calls = TAILQ_HEAD_INITIALIZER(calls);
static int		 ncalls;

static int	http_url(const json_t *, const json_t *, char *, size_t,
		    char *, size_t);
static int	http_secret(const char *, char *, size_t);
static int	http_headers(struct evkeyvalq *, const json_t *,
		    const struct step *, const char *, char *, size_t);
static int	http_body(struct evhttp_request *, const json_t *,
		    const struct step *);
static int	http_host_name(const char *, char *, size_t);
static int	http_connect(struct http_call *, const json_t *,
		    const struct evhttp_uri *, char *, size_t, char *, size_t);
static struct evhttp_request *http_request(struct http_call *,
		    const json_t *, const char *, char **, char *, size_t);
static enum evhttp_cmd_type http_method(const char *);
static void	http_watch_cb(struct evbuffer *,
		    const struct evbuffer_cb_info *, void *);
static void	http_error_cb(enum evhttp_request_error, void *);
static void	http_done_cb(struct evhttp_request *, void *);
static void	http_timer_cb(evutil_socket_t, short, void *);
static void	http_reap_cb(evutil_socket_t, short, void *);
static void	http_end(struct http_call *, enum step_outcome, json_t *,
		    const char *);
static int	http_tls_failure(struct http_call *);
static void	http_failure(struct http_call *);
static void	http_answer(struct http_call *, struct evhttp_request *);
static long long http_retry_after(const char *);
static json_t	*http_result(int, struct evbuffer *);
static char	*http_snippet(struct evbuffer *);

/* Calls that have not finished. */
int
http_running(void)
{
	return ncalls;
}

static enum evhttp_cmd_type
http_method(const char *m)
{
	if (strcmp(m, "GET") == 0)
		return EVHTTP_REQ_GET;
	if (strcmp(m, "PUT") == 0)
		return EVHTTP_REQ_PUT;
	if (strcmp(m, "PATCH") == 0)
		return EVHTTP_REQ_PATCH;
	if (strcmp(m, "DELETE") == 0)
		return EVHTTP_REQ_DELETE;
	return EVHTTP_REQ_POST;
}

/*
 * The config's URL with each {name} replaced by input.name (a string,
 * percent-encoded, or an integer).  Returns 0, or -1 with err set.
 */
static int
http_url(const json_t *tmpl, const json_t *input, char *out, size_t len,
    char *err, size_t errlen)
{
	const char	*p = json_string_value(tmpl), *end;
	char		 name[64], *enc;
	json_t		*v;
	size_t		 o = 0, n;

	for (; p != NULL && *p != '\0'; p++) {
		if (*p != '{' || (end = strchr(p, '}')) == NULL ||
		    (n = (size_t)(end - p - 1)) == 0 || n >= sizeof(name)) {
			if (o + 1 >= len)
				goto toolong;
			out[o++] = *p;
			continue;
		}
		memcpy(name, p + 1, n);
		name[n] = '\0';
		v = json_object_get(input, name);
		if (json_is_string(v))
			enc = evhttp_uriencode(json_string_value(v), -1,
			    0);
		else if (json_is_integer(v))
			enc = xasprintf("%lld",
			    (long long)json_integer_value(v));
		else {
			snprintf(err, errlen, "the URL needs input.%s, a "
			    "string or an integer", name);
			return -1;
		}
		if (enc == NULL)
			fatalx("evhttp_uriencode failed");
		if (o + strlen(enc) >= len) {
			free(enc);
			goto toolong;
		}
		memcpy(out + o, enc, strlen(enc));
		o += strlen(enc);
		free(enc);
		p = end;
	}
	out[o] = '\0';
	return 0;
toolong:
	snprintf(err, errlen, "the URL is longer than %zu bytes", len - 1);
	return -1;
}

/*
 * Reads secret name from $CREDENTIALS_DIRECTORY/name, else from the
 * environment.  A trailing newline is dropped; a value with any other
 * control character is refused (it would split the header).  Returns 0,
 * or -1.
 */
static int
http_secret(const char *name, char *buf, size_t len)
{
	const char	*dir = getenv("CREDENTIALS_DIRECTORY"), *env;
	char		 path[PATH_MAX];
	ssize_t		 n = -1;
	size_t		 i;
	int		 fd;

	if (dir != NULL && (size_t)snprintf(path, sizeof(path), "%s/%s", dir,
	    name) < sizeof(path) && (fd = open(path, O_RDONLY |
	    O_CLOEXEC)) != -1) {
		n = read(fd, buf, len - 1);
		close(fd);
	} else if ((env = getenv(name)) != NULL && strlen(env) < len) {
		n = (ssize_t)strlen(env);
		memcpy(buf, env, (size_t)n);
	}
	if (n < 0)
		return -1;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	for (i = 0; i < (size_t)n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			return -1;
	return n > 0 ? 0 : -1;
}

/* Adds the request headers; 0, or -1 with err set. */
static int
http_headers(struct evkeyvalq *h, const json_t *cfg, const struct step *s,
    const char *host, char *err, size_t errlen)
{
	const char	*k;
	json_t		*v;
	char		 num[24], secret[HTTP_SECRET_MAX];

	evhttp_add_header(h, "Host", host);
	evhttp_add_header(h, "Connection", "close");
	evhttp_add_header(h, "User-Agent", "eav-worker/" EAV_VERSION);
	evhttp_add_header(h, "Idempotency-Key", s->idem_key);
	evhttp_add_header(h, "X-Eav-Trace-Id", s->trace_id);
	snprintf(num, sizeof(num), "%lld", s->task_id);
	evhttp_add_header(h, "X-Eav-Task-Id", num);
	snprintf(num, sizeof(num), "%lld", s->id);
	evhttp_add_header(h, "X-Eav-Step-Id", num);
	snprintf(num, sizeof(num), "%d", s->attempt);
	evhttp_add_header(h, "X-Eav-Attempt", num);
	json_object_foreach(json_object_get(cfg, "headers"), k, v)
		if (json_is_string(v))
			evhttp_add_header(h, k, json_string_value(v));
	json_object_foreach(json_object_get(cfg, "secret_headers"), k, v) {
		if (!json_is_string(v) || http_secret(json_string_value(v),
		    secret, sizeof(secret)) == -1) {
			snprintf(err, errlen, "secret %s (header %s) is not "
			    "set, empty or not a single line",
			    json_is_string(v) ? json_string_value(v) : "?", k);
			explicit_bzero(secret, sizeof(secret));
			return -1;
		}
		evhttp_add_header(h, k, secret);
		explicit_bzero(secret, sizeof(secret));
	}
	return 0;
}

/* The step's input as the JSON body, unless config.body is "none". */
static int
http_body(struct evhttp_request *req, const json_t *cfg, const struct step *s)
{
	char	*text;
	int	 rc;

	if (strcmp(json_string_value(json_object_get(cfg, "body")) ?
	    json_string_value(json_object_get(cfg, "body")) : "input",
	    "none") == 0)
		return 0;
	if ((text = json_dumps(s->input, JSON_COMPACT)) == NULL)
		return -1;
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "application/json");
	rc = evbuffer_add(evhttp_request_get_output_buffer(req), text,
	    strlen(text));
	free(text);
	return rc;
}

/*
 * The URL's host as a connection and a certificate name it: an IPv6
 * literal loses its brackets (the Host header keeps them).  0, or -1 if
 * it does not fit.
 */
static int
http_host_name(const char *host, char *name, size_t len)
{
	size_t	n = strlen(host);

	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
		host++;
		n -= 2;
	}
	if (n >= len)
		return -1;
	memcpy(name, host, n);
	name[n] = '\0';
	return 0;
}

/*
 * The call's connection to the URI's host (not yet made): plain for http,
 * TLS for https (tls.c).  Writes the Host header's value to hostport.
 * 0, or -1 with err set; a ca_file that cannot be used counts against
 * the tool's health, as a certificate that does not verify would.
 */
static int
http_connect(struct http_call *c, const json_t *cfg,
    const struct evhttp_uri *uri, char *hostport, size_t hplen, char *err,
    size_t errlen)
{
	const char		*scheme = evhttp_uri_get_scheme(uri);
	const char		*host = evhttp_uri_get_host(uri);
	struct bufferevent	*bev = NULL;
	char			 name[256];
	int			 port, dflt;

	c->tls = scheme != NULL && strcasecmp(scheme, "https") == 0;
	if (!c->tls && (scheme == NULL || strcasecmp(scheme, "http") != 0)) {
		snprintf(err, errlen, "scheme %s is not supported (http or "
		    "https only)", scheme ? scheme : "(none)");
		return -1;
	}
	if (http_host_name(host, name, sizeof(name)) == -1) {
		snprintf(err, errlen, "the URL's host is too long");
		return -1;
	}
	dflt = c->tls ? 443 : 80;
	port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : dflt;
	snprintf(hostport, hplen, port == dflt ? "%s" : "%s:%d", host, port);
	if (c->tls && (bev = tls_bufferevent(c->w->base, name,
	    json_string_value(json_object_get(cfg, "ca_file")),
	    &c->verify_error, err, errlen)) == NULL) {
		c->s->tool_error = 1;
		return -1;
	}
	/* With bev NULL, evhttp makes a plain socket bufferevent. */
	c->evcon = evhttp_connection_base_bufferevent_new(c->w->base, NULL,
	    bev, name, (unsigned short)port);
	if (c->evcon == NULL)
		fatalx("evhttp_connection_base_bufferevent_new failed");
	return 0;
}

/*
 * The connection and request of a call (not yet made); NULL with err set
 * if the config or the input cannot make one.  On success *target is
 * the request target (caller frees).
 */
static struct evhttp_request *
http_request(struct http_call *c, const json_t *cfg, const char *url,
    char **target, char *err, size_t errlen)
{
	struct evhttp_uri	*uri;
	struct evhttp_request	*req;
	const char		*host, *path, *query;
	char			 hostport[300];

	if ((uri = evhttp_uri_parse(url)) == NULL ||
	    (host = evhttp_uri_get_host(uri)) == NULL || *host == '\0') {
		snprintf(err, errlen, "the URL cannot be parsed");
		goto fail;
	}
	if (http_connect(c, cfg, uri, hostport, sizeof(hostport), err,
	    errlen) == -1)
		goto fail;
	req = evhttp_request_new(http_done_cb, c);
	if (req == NULL)
		fatalx("evhttp_request_new failed");
	evhttp_request_set_error_cb(req, http_error_cb);
	if (http_headers(evhttp_request_get_output_headers(req), cfg, c->s,
	    hostport, err, errlen) == -1 || http_body(req, cfg, c->s) == -1) {
		if (*err == '\0')
			snprintf(err, errlen, "cannot build the request body");
		evhttp_request_free(req);
		goto fail;
	}
	path = evhttp_uri_get_path(uri);
	query = evhttp_uri_get_query(uri);
	*target = xasprintf("%s%s%s", path != NULL && *path != '\0' ? path :
	    "/", query != NULL ? "?" : "", query != NULL ? query : "");
	evhttp_uri_free(uri);
	return req;
fail:
	if (uri != NULL)
		evhttp_uri_free(uri);
	return NULL;
}

/* Starts a claimed step of an http tool. */
void
http_start(struct worker *w, struct step *s)
{
	struct http_call	*c;
	struct evhttp_request	*req;
	enum evhttp_cmd_type	 method;
	json_t			*cfg;
	struct timeval		 tv = clock_tv(s->timeout_ms);
	char			 url[HTTP_URL_MAX], err[512] = "", *target;
	json_int_t		 max;

	if (s->config == NULL || (cfg = json_loads(s->config, 0, NULL)) ==
	    NULL) {
		step_finish(s, OUT_FAILED, NULL, "the tool's config cannot be "
		    "read");
		return;
	}
	c = xcalloc(1, sizeof(*c));
	c->w = w;
	c->s = s;
	if (http_url(json_object_get(cfg, "url"), s->input, url, sizeof(url),
	    err, sizeof(err)) == -1 || (req = http_request(c, cfg, url,
	    &target, err, sizeof(err))) == NULL) {
		json_decref(cfg);
		if (c->evcon != NULL)
			evhttp_connection_free(c->evcon);
		free(c);
		step_finish(s, OUT_FAILED, NULL, err);
		return;
	}
	method = http_method(json_string_value(json_object_get(cfg,
	    "method")) ? json_string_value(json_object_get(cfg, "method")) :
	    "POST");
	max = json_integer_value(json_object_get(cfg, "max_output_bytes"));
	json_decref(cfg);
	evhttp_connection_set_max_body_size(c->evcon, max > 0 && max <=
	    HTTP_OUTPUT_MAX ? max : HTTP_OUTPUT_MAX);
	evhttp_connection_set_max_headers_size(c->evcon, HTTP_HEADERS_MAX);
	evhttp_connection_set_timeout_tv(c->evcon, &tv);
	evhttp_connection_set_retries(c->evcon, 0);
	c->watch = evbuffer_add_cb(bufferevent_get_output(
	    evhttp_connection_get_bufferevent(c->evcon)), http_watch_cb, c);
	c->timer = evtimer_new(w->base, http_timer_cb, c);
	c->reap = evtimer_new(w->base, http_reap_cb, c);
	if (c->watch == NULL || c->timer == NULL || c->reap == NULL ||
	    evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot watch an http call");
	TAILQ_INSERT_TAIL(&calls, c, entry);
	ncalls++;
	s->ran = 1;
	/* A refused connect may run http_done_cb before this returns. */
	if (evhttp_make_request(c->evcon, req, method, target) == -1 &&
	    !c->done)
		http_end(c, OUT_RETRY, NULL, "the request could not be "
		    "started");
	free(target);
}

/* Request bytes drained from the output buffer have reached the kernel. */
static void
http_watch_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct http_call	*c = arg;

	(void)buf;
	if (info->n_deleted > 0)
		c->sent = 1;
}

/* evhttp's error report; the request's own callback follows it. */
static void
http_error_cb(enum evhttp_request_error error, void *arg)
{
	struct http_call	*c = arg;

	c->failed = 1;
	c->error = error;
}

/* The request ended: an answer, or a failure (req NULL or no status). */
static void
http_done_cb(struct evhttp_request *req, void *arg)
{
	struct http_call	*c = arg;

	if (c->done)
		return;
	if (req == NULL || c->failed ||
	    evhttp_request_get_response_code(req) == 0)
		http_failure(c);
	else
		http_answer(c, req);
}

/* The tool's time-out: unknown if the request left, else retried. */
static void
http_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_call	*c = arg;
	char			 err[128];

	(void)fd;
	(void)what;
	c->s->tool_error = 1;
	if (!c->sent) {
		snprintf(err, sizeof(err), "not connected within %d ms; the "
		    "request was not sent", c->s->timeout_ms);
		http_end(c, OUT_RETRY, NULL, err);
		return;
	}
	c->s->detected_by = "tool_timeout";
	snprintf(err, sizeof(err), "no answer within %d ms after the request "
	    "was sent", c->s->timeout_ms);
	http_end(c, OUT_UNKNOWN, NULL, err);
}

/* Frees a finished call, outside evhttp's callbacks. */
static void
http_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_call	*c = arg;

	(void)fd;
	(void)what;
	if (c->evcon != NULL)
		evhttp_connection_free(c->evcon);
	event_free(c->timer);
	event_free(c->reap);
	free(c);
}

/*
 * Finishes the step and schedules the call's release: the connection is
 * freed on the next loop turn, never inside one of its callbacks.
 */
static void
http_end(struct http_call *c, enum step_outcome o, json_t *result,
    const char *err)
{
	struct timeval	tv = { 0, 0 };

	c->done = 1;
	evtimer_del(c->timer);
	if (c->watch != NULL) {
		evbuffer_remove_cb_entry(bufferevent_get_output(
		    evhttp_connection_get_bufferevent(c->evcon)), c->watch);
		c->watch = NULL;
	}
	TAILQ_REMOVE(&calls, c, entry);
	ncalls--;
	step_finish(c->s, o, result, o == OUT_SUCCEEDED ? NULL : err);
	cycle_wake(c->w);
	if (evtimer_add(c->reap, &tv) == -1)
		fatalx("cannot schedule an http call's release");
}

/*
 * A TLS call that ended before its request left: a certificate that did
 * not verify fails the step, any other handshake failure is retried.
 * 1 if it ended the call, 0 if the failure was not TLS's (a refused
 * connect, a time-out): http_failure says what it was.
 */
static int
http_tls_failure(struct http_call *c)
{
	const char	*why;
	char		 err[400], *peer = NULL;
	ev_uint16_t	 port;

	evhttp_connection_get_peer(c->evcon, &peer, &port);
	if (c->verify_error != 0) {
		snprintf(err, sizeof(err), "TLS: the certificate of %.200s "
		    "does not verify: %s; the request was not sent",
		    peer != NULL ? peer : "?",
		    tls_verify_reason(c->verify_error));
		http_end(c, OUT_FAILED, NULL, err);
		return 1;
	}
	why = tls_bev_error(evhttp_connection_get_bufferevent(c->evcon));
	if (why == NULL)
		return 0;
	snprintf(err, sizeof(err), "TLS handshake with %.200s failed (%s) "
	    "before the request was sent", peer != NULL ? peer : "?", why);
	http_end(c, OUT_RETRY, NULL, err);
	return 1;
}

/* No answer: before the request left, retried; after, unknown. */
static void
http_failure(struct http_call *c)
{
	const char	*what;
	char		 err[160];

	switch (c->failed ? c->error : EVREQ_HTTP_EOF) {
	case EVREQ_HTTP_TIMEOUT:
		what = "timed out";
		break;
	case EVREQ_HTTP_INVALID_HEADER:
		what = "unreadable answer (bad status line, headers or "
		    "chunking)";
		break;
	case EVREQ_HTTP_DATA_TOO_LONG:
		/* evhttp says so of a chunk size it cannot read, too. */
		http_end(c, OUT_FAILED, NULL, "answer larger than the tool's "
		    "max_output_bytes, headers over 64 KiB or a chunk size "
		    "that cannot be read; nothing kept");
		return;
	default:
		what = "connection lost";
		break;
	}
	c->s->tool_error = 1;
	if (!c->sent && c->tls && http_tls_failure(c))
		return;
	if (!c->sent) {
		snprintf(err, sizeof(err), "%s before the request was sent",
		    c->failed ? what : "cannot connect");
		http_end(c, OUT_RETRY, NULL, err);
		return;
	}
	c->s->detected_by = "tool_lost";
	snprintf(err, sizeof(err), "%s after the request was sent", what);
	http_end(c, OUT_UNKNOWN, NULL, err);
}

/* An answer with a status: see the header for the mapping. */
static void
http_answer(struct http_call *c, struct evhttp_request *req)
{
	int		 code = evhttp_request_get_response_code(req);
	struct evbuffer	*body = evhttp_request_get_input_buffer(req);
	const char	*ra;
	char		 err[400], *snip;
	long long	 ms;

	if (code >= 200 && code < 300) {
		http_end(c, OUT_SUCCEEDED, http_result(code, body), NULL);
		return;
	}
	if (code == 429) {
		ra = evhttp_find_header(evhttp_request_get_input_headers(req),
		    "Retry-After");
		ms = http_retry_after(ra);
		c->s->rate_limited = 1;
		c->s->retry_after_ms = ms < 0 ? RETRY_AFTER_DEFAULT_S * 1000 :
		    ms;
		snprintf(err, sizeof(err), "HTTP 429: rate limited for %lld ms"
		    "%s%.60s%s", c->s->retry_after_ms, ms < 0 ?
		    " (default: unusable Retry-After \"" : "",
		    ms < 0 ? (ra ? ra : "(none)") : "", ms < 0 ? "\")" : "");
		http_end(c, OUT_DEFERRED, NULL, err);
		return;
	}
	snip = http_snippet(body);
	snprintf(err, sizeof(err), "HTTP %d%s%s", code, *snip ? ": " : "",
	    snip);
	free(snip);
	c->s->tool_error = code >= 500;
	http_end(c, code >= 500 ? OUT_RETRY : OUT_FAILED, NULL, err);
}

/*
 * Retry-After in milliseconds: delta-seconds or an IMF-fixdate, at most
 * a day ahead.  -1 if missing or unusable (negative, huge, garbage).
 */
static long long
http_retry_after(const char *v)
{
	struct tm	 tm;
	const char	*end;
	char		*num_end;
	long long	 s;
	time_t		 at;

	if (v == NULL)
		return -1;
	while (*v == ' ')
		v++;
	if (*v >= '0' && *v <= '9') {
		errno = 0;
		s = strtoll(v, &num_end, 10);
		while (*num_end == ' ')
			num_end++;
		if (errno != 0 || *num_end != '\0' || s > RETRY_AFTER_MAX_S)
			return -1;
		return s * 1000;
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	if (end == NULL || *end != '\0' || (at = timegm(&tm)) == (time_t)-1)
		return -1;
	s = (long long)(at - time(NULL));
	if (s > RETRY_AFTER_MAX_S)
		return -1;
	return s < 0 ? 0 : s * 1000;
}

/* {"status", "body"}: body as JSON, else as text, else null. */
static json_t *
http_result(int code, struct evbuffer *body)
{
	size_t		 len = evbuffer_get_length(body);
	const char	*p = (const char *)evbuffer_pullup(body, -1);
	json_t		*v = NULL, *r;

	if (len > 0 && p != NULL) {
		v = json_loadb(p, len, JSON_DECODE_ANY, NULL);
		if (v == NULL)
			v = json_stringn(p, len);
	}
	r = json_pack("{s:i, s:o?}", "status", code, "body", v);
	if (r == NULL)
		fatalx("cannot build an http result");
	if (v == NULL && len > 0)
		json_object_set_new(r, "body_bytes", json_integer(
		    (json_int_t)len));
	return r;
}

/* The start of a failed answer's body, printable ASCII only. */
static char *
http_snippet(struct evbuffer *body)
{
	size_t		 len = evbuffer_get_length(body), i;
	const char	*p;
	char		*out;

	if (len > HTTP_ERROR_BODY)
		len = HTTP_ERROR_BODY;
	out = xcalloc(1, len + 1);
	if (len == 0 || (p = (const char *)evbuffer_pullup(body,
	    (ev_ssize_t)len)) == NULL)
		return out;
	for (i = 0; i < len; i++)
		out[i] = p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '.';
	return out;
}
