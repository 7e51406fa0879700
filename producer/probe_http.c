/*
 * The http watcher probe: one GET on the producer's event loop (libevent
 * evhttp; https through common/tls.c, the server always verified, as the
 * http tool does it).  The condition holds when the answer has the
 * config's expect_status and, if body_match is set, a body that contains
 * it; any other answer does not hold.  No answer at all (refused, reset,
 * a body over max_output_bytes, nothing within the time-out, a
 * certificate that does not verify or a failed handshake) is a tick
 * error with the reason.
 *
 * evhttp frees a request after its callback and must not see its
 * connection freed inside one: the probe's state is its own allocation,
 * detached from the tick when the tick ends and freed on a later loop
 * turn with the connection.  Every probe not yet freed is on a list, so
 * the producer's exit frees them all.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "clock.h"
#include "compat.h"
#include "log.h"
#include "producer.h"
#include "tls.h"
#include "xalloc.h"

#define PROBE_HTTP_OUTPUT_MAX	1048576

struct http_probe {
	TAILQ_ENTRY(http_probe)		 entry;
	struct watch_tick		*t;	/* NULL once the tick ended */
	struct event_base		*base;
	struct evhttp_connection	*evcon;
	struct event			*timer;
	enum evhttp_request_error	 error;
	int				 failed;
	int				 tls;
	int				 verify_error;	/* tls.c's slot */
};

TAILQ_HEAD(http_probes, http_probe);

/* Every probe not freed yet. */
static struct http_probes	probes = TAILQ_HEAD_INITIALIZER(probes);

static int	probe_http_conn(struct http_probe *, const char *, char *,
		    size_t, char **, char *, size_t);
static void	probe_http_end(struct http_probe *, const char *,
		    const char *, const char *);
static void	probe_http_free_cb(evutil_socket_t, short, void *);
static void	probe_http_error_cb(enum evhttp_request_error, void *);
static void	probe_http_done_cb(struct evhttp_request *, void *);
static void	probe_http_timer_cb(evutil_socket_t, short, void *);
static void	probe_http_answer(struct http_probe *,
		    struct evhttp_request *);
static const char *probe_http_error_name(enum evhttp_request_error);
static const char *probe_http_tls_error(struct http_probe *, char *,
		    size_t);

/*
 * The connection for url, the request target (*target, caller frees)
 * and the Host header.  Returns 0, or -1 with err set.
 */
static int
probe_http_conn(struct http_probe *h, const char *url, char *err,
    size_t len, char **target, char *hostport, size_t hplen)
{
	struct evhttp_uri	*uri;
	struct bufferevent	*bev = NULL;
	const char		*host, *path, *query, *scheme;
	int			 port, dflt;

	if (url == NULL || (uri = evhttp_uri_parse(url)) == NULL ||
	    (host = evhttp_uri_get_host(uri)) == NULL || *host == '\0') {
		snprintf(err, len, "the watcher's url cannot be parsed");
		if (url != NULL && (uri = evhttp_uri_parse(url)) != NULL)
			evhttp_uri_free(uri);
		return -1;
	}
	scheme = evhttp_uri_get_scheme(uri);
	h->tls = scheme != NULL && strcasecmp(scheme, "https") == 0;
	dflt = h->tls ? 443 : 80;
	port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : dflt;
	snprintf(hostport, hplen, port == dflt ? "%s" : "%s:%d", host, port);
	if (h->tls && (bev = tls_bufferevent(h->base, host, json_string_value(
	    json_object_get(h->t->config, "ca_file")), &h->verify_error, err,
	    len)) == NULL) {
		evhttp_uri_free(uri);
		return -1;
	}
	path = evhttp_uri_get_path(uri);
	query = evhttp_uri_get_query(uri);
	*target = xasprintf("%s%s%s", path != NULL && *path != '\0' ? path :
	    "/", query != NULL ? "?" : "", query != NULL ? query : "");
	/* With bev NULL, evhttp makes a plain socket bufferevent. */
	h->evcon = evhttp_connection_base_bufferevent_new(h->base,
	    h->t->p->dns, bev, host, (unsigned short)port);
	evhttp_uri_free(uri);
	if (h->evcon == NULL)
		fatalx("evhttp_connection_base_bufferevent_new failed");
	return 0;
}

/* Starts the GET of a claimed tick; its end calls watcher_tick_done. */
void
probe_http_start(struct watch_tick *t)
{
	struct http_probe	*h = xcalloc(1, sizeof(*h));
	struct evhttp_request	*req;
	struct evkeyvalq	*hdr;
	struct timeval		 tv = clock_tv(t->timeout_ms);
	json_int_t		 max;
	char			 err[256], hostport[300], *target;

	h->t = t;
	h->base = t->p->base;
	t->http = h;
	TAILQ_INSERT_TAIL(&probes, h, entry);
	t->started_ms = clock_ms();
	h->timer = evtimer_new(h->base, probe_http_timer_cb, h);
	if (h->timer == NULL || evtimer_add(h->timer, &tv) == -1)
		fatalx("cannot add a probe's timer");
	if (probe_http_conn(h, json_string_value(json_object_get(t->config,
	    "url")), err, sizeof(err), &target, hostport,
	    sizeof(hostport)) == -1) {
		probe_http_end(h, "error", NULL, err);
		return;
	}
	max = json_integer_value(json_object_get(t->config,
	    "max_output_bytes"));
	evhttp_connection_set_max_body_size(h->evcon, max > 0 && max <=
	    PROBE_HTTP_OUTPUT_MAX ? max : PROBE_HTTP_OUTPUT_MAX);
	evhttp_connection_set_timeout_tv(h->evcon, &tv);
	evhttp_connection_set_retries(h->evcon, 0);
	if ((req = evhttp_request_new(probe_http_done_cb, h)) == NULL)
		fatalx("evhttp_request_new failed");
	evhttp_request_set_error_cb(req, probe_http_error_cb);
	hdr = evhttp_request_get_output_headers(req);
	evhttp_add_header(hdr, "Host", hostport);
	evhttp_add_header(hdr, "Connection", "close");
	evhttp_add_header(hdr, "User-Agent", "eav-producer/" EAV_VERSION);
	/* A refused connect may run the callbacks before this returns. */
	if (evhttp_make_request(h->evcon, req, EVHTTP_REQ_GET, target) == -1 &&
	    h->t != NULL)
		probe_http_end(h, "error", NULL, "the request could not be "
		    "started");
	free(target);
}

/*
 * At exit (the loop will not run again): frees every probe, those of
 * ticks still running and those ended but not yet freed.
 */
void
probe_http_free_all(void)
{
	struct http_probe	*h;

	while ((h = TAILQ_FIRST(&probes)) != NULL) {
		if (h->t != NULL)
			h->t->http = NULL;
		h->t = NULL;
		probe_http_free_cb(-1, 0, h);
	}
}

/* evhttp's error report; the request's own callback follows it. */
static void
probe_http_error_cb(enum evhttp_request_error error, void *arg)
{
	struct http_probe	*h = arg;

	h->failed = 1;
	h->error = error;
}

/* A name for evhttp's error, for the reason. */
static const char *
probe_http_error_name(enum evhttp_request_error e)
{
	switch (e) {
	case EVREQ_HTTP_TIMEOUT:
		return "timed out";
	case EVREQ_HTTP_EOF:
		return "connection closed before an answer";
	case EVREQ_HTTP_INVALID_HEADER:
		return "invalid answer";
	case EVREQ_HTTP_BUFFER_ERROR:
		return "connection failed (refused, reset or unreachable)";
	case EVREQ_HTTP_DATA_TOO_LONG:
		return "answer larger than max_output_bytes";
	default:
		return "request cancelled";
	}
}

/*
 * Why an https probe failed, if TLS said: a certificate that does not
 * verify, or a handshake that failed.  NULL for plain http, or for a
 * failure that was not TLS's (refused, time-out).
 */
static const char *
probe_http_tls_error(struct http_probe *h, char *buf, size_t len)
{
	const char	*why;

	if (!h->tls)
		return NULL;
	if (h->verify_error != 0) {
		snprintf(buf, len, "TLS: the certificate does not verify: %s",
		    tls_verify_reason(h->verify_error));
		return buf;
	}
	if ((why = tls_bev_error(evhttp_connection_get_bufferevent(
	    h->evcon))) == NULL)
		return NULL;
	snprintf(buf, len, "TLS handshake failed (%s)", why);
	return buf;
}

/* The request ended: an answer, or a failure (req NULL or no status). */
static void
probe_http_done_cb(struct evhttp_request *req, void *arg)
{
	struct http_probe	*h = arg;
	char			 err[600];

	if (h->t == NULL)
		return;
	if (req == NULL || h->failed ||
	    evhttp_request_get_response_code(req) == 0) {
		char	tls[256];

		snprintf(err, sizeof(err), "GET %.300s: %s",
		    json_string_value(json_object_get(h->t->config, "url")),
		    probe_http_tls_error(h, tls, sizeof(tls)) != NULL ? tls :
		    h->failed ? probe_http_error_name(h->error) :
		    "connection failed (refused, reset or unreachable)");
		probe_http_end(h, "error", NULL, err);
		return;
	}
	probe_http_answer(h, req);
}

/* An answer: holds if its status (and body) is what the config wants. */
static void
probe_http_answer(struct http_probe *h, struct evhttp_request *req)
{
	struct watch_tick	*t = h->t;
	struct evbuffer		*in = evhttp_request_get_input_buffer(req);
	const char		*match = json_string_value(json_object_get(
				    t->config, "body_match"));
	int			 code = evhttp_request_get_response_code(req);
	size_t			 n = evbuffer_get_length(in);
	unsigned char		*body;
	json_t			*ev;
	char			*text;

	body = evbuffer_pullup(in, -1);
	if (code != json_integer_value(json_object_get(t->config,
	    "expect_status")) || (match != NULL && (n == 0 || memmem(body, n,
	    match, strlen(match)) == NULL))) {
		probe_http_end(h, "false", NULL, NULL);
		return;
	}
	ev = json_pack("{s:s, s:i, s:I}", "url", json_string_value(
	    json_object_get(t->config, "url")), "status", code,
	    "elapsed_ms", (json_int_t)(clock_ms() - t->started_ms));
	if (ev == NULL || (text = json_dumps(ev, JSON_COMPACT)) == NULL)
		fatalx("cannot encode a probe's event");
	json_decref(ev);
	probe_http_end(h, "holds", text, NULL);
	free(text);
}

/* The probe's time-out, should evhttp's not have ended it first. */
static void
probe_http_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_probe	*h = arg;
	char			 err[128];

	(void)fd;
	(void)what;
	snprintf(err, sizeof(err), "no answer within %d ms",
	    h->t->timeout_ms);
	probe_http_end(h, "error", NULL, err);
}

/* Frees a probe's connection and timer, outside evhttp's callbacks. */
static void
probe_http_free_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_probe	*h = arg;

	(void)fd;
	(void)what;
	TAILQ_REMOVE(&probes, h, entry);
	if (h->evcon != NULL)
		evhttp_connection_free(h->evcon);
	event_free(h->timer);
	free(h);
}

/*
 * Ends the tick (watcher_tick_done frees it) and frees the probe on the
 * next loop turn, never inside one of evhttp's callbacks.
 */
static void
probe_http_end(struct http_probe *h, const char *outcome, const char *body,
    const char *err)
{
	struct watch_tick	*t = h->t;
	struct timeval		 now = { 0, 0 };

	h->t = NULL;
	t->http = NULL;
	evtimer_del(h->timer);
	if (event_base_once(h->base, -1, EV_TIMEOUT, probe_http_free_cb, h,
	    &now) == -1)
		fatalx("cannot schedule a probe's release");
	watcher_tick_done(t, outcome, body, err);
}
