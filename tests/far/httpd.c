/*
 * httpd: the far side of the HTTP tool in tests and benchmarks.  One
 * process, one libevent loop, an evhttp server on 127.0.0.1 (or HOST):
 *
 *   httpd -p PORTFILE [-b HOST] [--every] [--quiet] [--tls CERT KEY]
 *
 * It listens on a port the kernel picks, writes "PORT\n" to PORTFILE
 * (through PORTFILE.tmp and a rename, so a reader sees all or nothing,
 * and only once the socket accepts) and serves until SIGTERM or SIGINT,
 * then exits 0.  Exit 2 on a usage error, 1 if it cannot start.  Without
 * --quiet it logs one line per request on stderr.  -b listens on the
 * first address HOST resolves to: with "localhost", the address a client
 * that resolves the name connects to, 127.0.0.1 or ::1, whichever the
 * machine lists first.
 *
 * With --tls it serves HTTPS only, control endpoints included, with the
 * certificate chain in the PEM file CERT (its own certificate first) and
 * the private key in KEY.  A client whose handshake fails sends no
 * request, so it is counted nowhere.
 *
 * Every request whose path does not start with "/_" is a delivery of a
 * tool call, counted under its Idempotency-Key header ("" without one).
 * A delivery that reaches an effect counts an effect for its key: with
 * the default idempotent far side only the first one does, with --every
 * (a non-idempotent far side) every one does.  X-Eav-Attempt (an integer)
 * and X-Eav-Step-Id are read too.  A body that is a JSON object says what
 * to do in "mode"; any other body (none, not JSON, an array) means ok:
 *
 *   ok       delivery and effect; 200 application/json {"key",
 *            "deliveries", "effects" (the key's counts, this delivery
 *            included), "method", "path", "query" (or null), "attempt"
 *            (X-Eav-Attempt, or null), "step_id" (X-Eav-Step-Id, or null),
 *            "headers" (names in lower case), "body" (the request body
 *            if it is JSON, else null)}.
 *   status   answers "status" (an integer in 100..599, required) with
 *            "body" (a string, default "") or "json" (any value, sent
 *            compact), Content-Type "content_type" (default
 *            application/json; "" for none) and, given "retry_after" (a
 *            string), a Retry-After header with exactly that value.  A
 *            delivery; an effect only for a 2xx.  1xx, 204 and 304 go
 *            without a body.
 *   hang     delivery and effect, then no answer ever: the connection
 *            stays open until the client closes it (see /_stats hanging).
 *   close    delivery and effect, then the connection is closed without
 *            a response.
 *   delay    delivery and effect at once; the ok answer (as it stood
 *            then) "ms" (required, 0..86400000) later.
 *   big      delivery and effect; 200 application/json with one JSON
 *            string of exactly "bytes" bytes (required, 2..256 MiB) in
 *            all, quotes included: "aaa...a".
 *   raw      a delivery, no effect; writes the bytes of "raw" (a string)
 *            or "raw_hex" (pairs of hex digits) on the connection as they
 *            are, then closes it: no Content-Length, bad chunking, a bad
 *            status line.  Nothing to write: as close.
 *
 * Any mode may carry "until_attempt": N: the mode applies while
 * X-Eav-Attempt is below N (or missing); from attempt N on, the answer
 * is ok.  Or "times": N: the mode applies to the key's first N
 * deliveries (a deferred step keeps its attempt number), then ok.
 * A bad or missing field, an unknown mode: 400 with a text
 * reason, and nothing is counted.  Request bodies over 1 MiB get 413 from
 * evhttp, uncounted.  Methods: GET POST PUT PATCH DELETE (others 501).
 *
 * Control endpoints, not deliveries:
 *   GET  /_stats    {"deliveries", "effects", "keys",
 *                   "max_effects_per_key", "max_deliveries_per_key",
 *                   "hanging" (hang requests whose client is connected)}
 *   GET  /_key?k=K  {"key", "deliveries", "effects"}, 0s for a key never
 *                   seen; K is percent-encoded ("+" reads as a space).
 *   POST /_reset    forgets every key and count; {}.
 * Any other path under /_ is 404, another method on one of these 405.
 *
 * Built without sanitizers, as the other far sides.
 */
#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <netinet/in.h>

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_BODY	(1024 * 1024)
#define MAX_HEADERS	(256 * 1024)
#define MAX_BIG		(256LL * 1024 * 1024)
#define MAX_DELAY_MS	(86400LL * 1000)
#define NBUCKETS_MIN	1024
#define nitems(a)	(sizeof(a) / sizeof((a)[0]))

/* What the far side knows of one idempotency key. */
struct key_rec {
	struct key_rec	*next;		/* in its hash chain */
	uint64_t	 hash;
	long long	 deliveries;
	long long	 effects;
	char		 key[];
};

/* A delay answer waiting for its timer; the ok answer is built at once. */
struct delay {
	TAILQ_ENTRY(delay)	 entry;
	struct evhttp_request	*req;
	struct event		*ev;
	char			*answer;
};

/* One delivery while its request callback runs. */
struct delivery {
	struct evhttp_request	*req;
	const char		*path;
	const char		*key;
	const char		*step;		/* NULL: no X-Eav-Step-Id */
	long long		 attempt;	/* -1: no X-Eav-Attempt */
	json_t			*body;		/* if JSON, else NULL */
	json_t			*in;		/* body if an object */
	struct key_rec		*rec;		/* set by delivery_record */
};

/* All the far side's state: one loop, one server, one table of keys. */
struct httpd_env {
	struct event_base	*base;
	struct evhttp		*http;
	SSL_CTX			*tls;		/* --tls, else NULL */
	struct event		*sig_ev[2];
	int			 every;
	int			 quiet;
	struct key_rec		**buckets;
	size_t			 nbuckets;	/* a power of two */
	size_t			 nkeys;
	long long		 deliveries;
	long long		 effects;
	long long		 max_deliveries;
	long long		 max_effects;
	long long		 hanging;
	TAILQ_HEAD(, delay)	 delays;
};

/* A mode of delivery: returns the status it answered, 0 if none (yet). */
struct mode {
	const char	*name;
	int		(*run)(struct delivery *);
};

static struct httpd_env	env;

static void	die(int, const char *, ...) __attribute__((noreturn,
		    format(printf, 2, 3)));
static void	httpd_log(const char *, ...) __attribute__((format(printf,
		    1, 2)));
static void	*xcalloc(size_t, size_t);
static char	*xstrdup(const char *);
static json_t	*json_text(const char *);
static const char *method_name(enum evhttp_cmd_type);
static uint64_t	key_hash(const char *);
static struct key_rec *key_find(const char *, uint64_t);
static void	key_grow(void);
static struct key_rec *key_get(const char *);
static void	key_clear(size_t);
static void	reply_bytes(struct evhttp_request *, int, const char *,
		    const char *, size_t);
static int	reply_text(struct evhttp_request *, int, const char *);
static int	reply_json(struct evhttp_request *, int, json_t *);
static int	reply_bad(struct delivery *, const char *);
static int	field_int(json_t *, const char *, long long, long long,
		    long long *);
static int	field_str(json_t *, const char *, const char **);
static struct bufferevent *conn_take(struct evhttp_request *,
		    bufferevent_data_cb, bufferevent_data_cb,
		    bufferevent_event_cb);
static void	conn_free_cb(struct bufferevent *, short, void *);
static void	delivery_read(struct delivery *, struct evhttp_request *,
		    const char *);
static void	delivery_record(struct delivery *, int);
static json_t	*headers_json(struct evhttp_request *);
static json_t	*ok_answer(const struct delivery *);
static int	mode_ok(struct delivery *);
static const char *status_check(json_t *);
static int	mode_status(struct delivery *);
static void	hang_read_cb(struct bufferevent *, void *);
static void	hang_event_cb(struct bufferevent *, short, void *);
static int	mode_hang(struct delivery *);
static int	mode_close(struct delivery *);
static void	delay_free(struct delay *);
static void	delay_cb(evutil_socket_t, short, void *);
static int	mode_delay(struct delivery *);
static void	big_free_cb(const void *, size_t, void *);
static int	mode_big(struct delivery *);
static int	hex_digit(int);
static int	hex_add(struct evbuffer *, const char *);
static void	raw_write_cb(struct bufferevent *, void *);
static int	mode_raw(struct delivery *);
static int	delivery_run(struct delivery *, const char **);
static void	delivery_serve(struct evhttp_request *, const char *);
static int	control_stats(struct evhttp_request *);
static int	control_key(struct evhttp_request *);
static int	control_reset(struct evhttp_request *);
static void	control_serve(struct evhttp_request *, const char *);
static void	httpd_request_cb(struct evhttp_request *, void *);
static void	httpd_signal_cb(evutil_socket_t, short, void *);
static void	port_write(const char *, evutil_socket_t);
static void	tls_load(const char *, const char *);
static struct bufferevent *tls_bev_cb(struct event_base *, void *);
static void	httpd_start(const char *, const char *);
static void	httpd_stop(void);
static void	usage(void);

static const struct mode modes[] = {
	{ "ok", mode_ok },
	{ "status", mode_status },
	{ "hang", mode_hang },
	{ "close", mode_close },
	{ "delay", mode_delay },
	{ "big", mode_big },
	{ "raw", mode_raw },
};

/* Exits with code (2: usage, 1: cannot run) after one line on stderr. */
static void
die(int code, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	fputs("httpd: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(code);
}

/* One line on stderr, unless --quiet. */
static void
httpd_log(const char *fmt, ...)
{
	va_list	ap;

	if (env.quiet)
		return;
	va_start(ap, fmt);
	fputs("httpd: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* calloc that exits rather than return NULL: a test far side, not a server. */
static void *
xcalloc(size_t n, size_t size)
{
	void	*p;

	if ((p = calloc(n, size)) == NULL)
		die(1, "out of memory");
	return p;
}

/* strdup that exits rather than return NULL. */
static char *
xstrdup(const char *s)
{
	char	*p;

	if ((p = strdup(s)) == NULL)
		die(1, "out of memory");
	return p;
}

/*
 * A JSON string of s (NULL: NULL, which json_pack's "o?" makes null).
 * Header values need not be UTF-8 and jansson takes nothing else, so
 * other bytes become '?' rather than failing the whole answer.
 */
static json_t *
json_text(const char *s)
{
	json_t	*v;
	char	*copy, *p;

	if (s == NULL)
		return NULL;
	if ((v = json_string(s)) != NULL)
		return v;
	copy = xstrdup(s);
	for (p = copy; *p != '\0'; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	v = json_string(copy);
	free(copy);
	return v;
}

/* The name of an allowed method, for the ok answer and the log. */
static const char *
method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	default:
		return "OTHER";
	}
}

/* FNV-1a: keys are short and the table only needs an even spread. */
static uint64_t
key_hash(const char *s)
{
	uint64_t	h = 14695981039346656037ULL;

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

/* The record of key (whose hash is h), or NULL. */
static struct key_rec *
key_find(const char *key, uint64_t h)
{
	struct key_rec	*k;

	for (k = env.buckets[h & (env.nbuckets - 1)]; k != NULL; k = k->next)
		if (k->hash == h && strcmp(k->key, key) == 0)
			return k;
	return NULL;
}

/* Doubles the buckets, so that chains stay about one record long. */
static void
key_grow(void)
{
	size_t		  n = env.nbuckets * 2, i;
	struct key_rec	**b = xcalloc(n, sizeof(*b)), *k, *next;

	for (i = 0; i < env.nbuckets; i++)
		for (k = env.buckets[i]; k != NULL; k = next) {
			next = k->next;
			k->next = b[k->hash & (n - 1)];
			b[k->hash & (n - 1)] = k;
		}
	free(env.buckets);
	env.buckets = b;
	env.nbuckets = n;
}

/* The record of key, made on its first delivery. */
static struct key_rec *
key_get(const char *key)
{
	uint64_t	  h = key_hash(key);
	struct key_rec	 *k, **chain;
	size_t		  len;

	if ((k = key_find(key, h)) != NULL)
		return k;
	if (env.nkeys >= env.nbuckets)
		key_grow();
	len = strlen(key);
	k = xcalloc(1, sizeof(*k) + len + 1);
	memcpy(k->key, key, len + 1);
	k->hash = h;
	chain = &env.buckets[h & (env.nbuckets - 1)];
	k->next = *chain;
	*chain = k;
	env.nkeys++;
	return k;
}

/* Forgets every key and count; leaves nbuckets empty buckets (0: none). */
static void
key_clear(size_t nbuckets)
{
	struct key_rec	*k, *next;
	size_t		 i;

	for (i = 0; i < env.nbuckets; i++)
		for (k = env.buckets[i]; k != NULL; k = next) {
			next = k->next;
			free(k);
		}
	free(env.buckets);
	env.buckets = nbuckets > 0 ? xcalloc(nbuckets, sizeof(*env.buckets)) :
	    NULL;
	env.nbuckets = nbuckets;
	env.nkeys = 0;
	env.deliveries = env.effects = 0;
	env.max_deliveries = env.max_effects = 0;
}

/* Answers code with len bytes of text, of Content-Type ctype if not NULL. */
static void
reply_bytes(struct evhttp_request *req, int code, const char *ctype,
    const char *text, size_t len)
{
	if (ctype != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Content-Type", ctype);
	evbuffer_add(evhttp_request_get_output_buffer(req), text, len);
	evhttp_send_reply(req, code, NULL, NULL);
}

/* Answers code with a text/plain reason; returns code. */
static int
reply_text(struct evhttp_request *req, int code, const char *text)
{
	reply_bytes(req, code, "text/plain", text, strlen(text));
	return code;
}

/* Answers code with v as compact JSON, and takes v (NULL: 500). */
static int
reply_json(struct evhttp_request *req, int code, json_t *v)
{
	char	*text = NULL;

	if (v != NULL)
		text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(v);
	if (text == NULL)
		return reply_text(req, 500, "cannot encode the answer\n");
	reply_bytes(req, code, "application/json", text, strlen(text));
	free(text);
	return code;
}

/* A delivery the far side cannot act on: 400, and nothing is counted. */
static int
reply_bad(struct delivery *d, const char *why)
{
	return reply_text(d->req, 400, why);
}

/* Field name of in, an integer in lo..hi, into *out; 0, or -1 if not. */
static int
field_int(json_t *in, const char *name, long long lo, long long hi,
    long long *out)
{
	json_t	*v = json_object_get(in, name);

	if (!json_is_integer(v) || json_integer_value(v) < lo ||
	    json_integer_value(v) > hi)
		return -1;
	*out = json_integer_value(v);
	return 0;
}

/* Optional string field name of in into *out (kept if absent); -1: bad. */
static int
field_str(json_t *in, const char *name, const char **out)
{
	json_t	*v = json_object_get(in, name);

	if (v == NULL)
		return 0;
	if (!json_is_string(v))
		return -1;
	*out = json_string_value(v);
	return 0;
}

/*
 * Takes req's connection away from evhttp: from now on the bufferevent
 * calls ours, not evhttp's (whose read callback exits the process on
 * bytes in the wrong state), and nothing times out.  The end is always
 * evhttp_connection_free, which frees req with it, so evhttp_free at
 * exit still finds and frees a connection we hold.
 */
static struct bufferevent *
conn_take(struct evhttp_request *req, bufferevent_data_cb read_cb,
    bufferevent_data_cb write_cb, bufferevent_event_cb event_cb)
{
	struct evhttp_connection	*evcon;
	struct bufferevent		*bev;

	evcon = evhttp_request_get_connection(req);
	bev = evhttp_connection_get_bufferevent(evcon);
	bufferevent_setcb(bev, read_cb, write_cb, event_cb, evcon);
	bufferevent_set_timeouts(bev, NULL, NULL);
	return bev;
}

/* A connection we took went away, or failed: free it and its request. */
static void
conn_free_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	evhttp_connection_free(arg);
}

/* Fills d from req's headers, and from its body if that is JSON. */
static void
delivery_read(struct delivery *d, struct evhttp_request *req,
    const char *path)
{
	struct evkeyvalq	*h = evhttp_request_get_input_headers(req);
	struct evbuffer		*b = evhttp_request_get_input_buffer(req);
	size_t			 len = evbuffer_get_length(b);
	const char		*att;
	char			*end;
	long long		 n;

	memset(d, 0, sizeof(*d));
	d->req = req;
	d->path = path;
	if ((d->key = evhttp_find_header(h, "Idempotency-Key")) == NULL)
		d->key = "";
	d->step = evhttp_find_header(h, "X-Eav-Step-Id");
	d->attempt = -1;
	if ((att = evhttp_find_header(h, "X-Eav-Attempt")) != NULL) {
		errno = 0;
		n = strtoll(att, &end, 10);
		if (errno == 0 && end != att && *end == '\0' && n >= 0)
			d->attempt = n;
	}
	if (len > 0)
		d->body = json_loadb((const char *)evbuffer_pullup(b, -1), len,
		    JSON_DECODE_ANY, NULL);
	if (json_is_object(d->body))
		d->in = d->body;
}

/* Counts a delivery of d's key and, if it got that far, its effect. */
static void
delivery_record(struct delivery *d, int effect)
{
	struct key_rec	*k = key_get(d->key);

	k->deliveries++;
	env.deliveries++;
	if (effect && (env.every || k->effects == 0)) {
		k->effects++;
		env.effects++;
	}
	if (k->deliveries > env.max_deliveries)
		env.max_deliveries = k->deliveries;
	if (k->effects > env.max_effects)
		env.max_effects = k->effects;
	d->rec = k;
}

/* The request headers, names in lower case (HTTP ignores their case). */
static json_t *
headers_json(struct evhttp_request *req)
{
	struct evkeyval	*kv;
	json_t		*o = json_object();
	char		*name, *p;

	TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
		name = xstrdup(kv->key);
		for (p = name; *p != '\0'; p++)
			*p = (char)tolower((unsigned char)*p);
		json_object_set_new(o, name, json_text(kv->value));
		free(name);
	}
	return o;
}

/* The ok answer of d, recorded (NULL if jansson fails). */
static json_t *
ok_answer(const struct delivery *d)
{
	const struct evhttp_uri	*uri = evhttp_request_get_evhttp_uri(d->req);

	return json_pack("{s:o, s:I, s:I, s:s, s:o, s:o?, s:o?, s:o?, s:o, "
	    "s:O?}",
	    "key", json_text(d->key),
	    "deliveries", (json_int_t)d->rec->deliveries,
	    "effects", (json_int_t)d->rec->effects,
	    "method", method_name(evhttp_request_get_command(d->req)),
	    "path", json_text(d->path),
	    "query", json_text(evhttp_uri_get_query(uri)),
	    "attempt", d->attempt >= 0 ? json_integer(d->attempt) : NULL,
	    "step_id", json_text(d->step),
	    "headers", headers_json(d->req),
	    "body", d->body);
}

/* The plain delivery: counted, and echoed back. */
static int
mode_ok(struct delivery *d)
{
	delivery_record(d, 1);
	return reply_json(d->req, 200, ok_answer(d));
}

/* What is wrong with a status request, or NULL. */
static const char *
status_check(json_t *in)
{
	long long	 code;
	const char	*s;

	if (field_int(in, "status", 100, 599, &code) == -1)
		return "status needs \"status\": an integer in 100..599\n";
	if (field_str(in, "body", &s) == -1)
		return "status: \"body\" must be a string\n";
	if (field_str(in, "content_type", &s) == -1)
		return "status: \"content_type\" must be a string\n";
	if (field_str(in, "retry_after", &s) == -1)
		return "status: \"retry_after\" must be a string\n";
	return NULL;
}

/* Any status the test asks for, with its body and Retry-After. */
static int
mode_status(struct delivery *d)
{
	struct evkeyvalq	*out;
	const char		*why, *body = "", *ctype = "application/json";
	const char		*retry = NULL;
	char			*dump = NULL;
	long long		 code;

	if ((why = status_check(d->in)) != NULL)
		return reply_bad(d, why);
	out = evhttp_request_get_output_headers(d->req);
	field_int(d->in, "status", 100, 599, &code);
	field_str(d->in, "body", &body);
	field_str(d->in, "content_type", &ctype);
	field_str(d->in, "retry_after", &retry);
	if (json_object_get(d->in, "json") != NULL &&
	    (body = dump = json_dumps(json_object_get(d->in, "json"),
	    JSON_COMPACT | JSON_ENCODE_ANY)) == NULL)
		return reply_text(d->req, 500, "cannot encode \"json\"\n");
	delivery_record(d, code >= 200 && code < 300);
	if (retry != NULL)
		evhttp_add_header(out, "Retry-After", retry);
	/* These carry no body: one would be read as the next response. */
	if (code < 200 || code == 204 || code == 304)
		body = ctype = "";
	reply_bytes(d->req, (int)code, *ctype != '\0' ? ctype : NULL, body,
	    strlen(body));
	free(dump);
	return (int)code;
}

/* Bytes on a hung connection (a pipelined request, say) are dropped. */
static void
hang_read_cb(struct bufferevent *bev, void *arg)
{
	(void)arg;
	evbuffer_drain(bufferevent_get_input(bev),
	    evbuffer_get_length(bufferevent_get_input(bev)));
}

/* The client of a hung request went away: now it may be freed. */
static void
hang_event_cb(struct bufferevent *bev, short what, void *arg)
{
	env.hanging--;
	conn_free_cb(bev, what, arg);
}

/*
 * Once a request is read evhttp stops reading its connection until the
 * answer is sent, so it would never see the client leave; we read it
 * ourselves, to free it on EOF.
 */
static int
mode_hang(struct delivery *d)
{
	struct bufferevent	*bev;

	delivery_record(d, 1);
	bev = conn_take(d->req, hang_read_cb, NULL, hang_event_cb);
	if (bufferevent_enable(bev, EV_READ) == -1)
		die(1, "cannot watch a hung connection");
	env.hanging++;
	return 0;
}

/* Safe inside the request callback: evhttp touches nothing after it. */
static int
mode_close(struct delivery *d)
{
	delivery_record(d, 1);
	evhttp_connection_free(evhttp_request_get_connection(d->req));
	return 0;
}

/* Frees a delay but not its request, which its connection owns. */
static void
delay_free(struct delay *dl)
{
	event_free(dl->ev);
	free(dl->answer);
	free(dl);
}

/*
 * Evhttp does not read a connection while its request waits for an
 * answer, so the request is still there; if its client left, the write
 * fails and evhttp frees both.
 */
static void
delay_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delay	*dl = arg;

	(void)fd;
	(void)what;
	TAILQ_REMOVE(&env.delays, dl, entry);
	reply_bytes(dl->req, 200, "application/json", dl->answer,
	    strlen(dl->answer));
	delay_free(dl);
}

/* Counted now, answered by delay_cb: a slow far side, not a sleep. */
static int
mode_delay(struct delivery *d)
{
	struct delay	*dl;
	struct timeval	 tv;
	long long	 ms;
	json_t		*answer;

	if (field_int(d->in, "ms", 0, MAX_DELAY_MS, &ms) == -1)
		return reply_bad(d, "delay needs \"ms\": an integer in "
		    "0..86400000\n");
	delivery_record(d, 1);
	dl = xcalloc(1, sizeof(*dl));
	dl->req = d->req;
	if ((answer = ok_answer(d)) != NULL)
		dl->answer = json_dumps(answer, JSON_COMPACT);
	json_decref(answer);
	dl->ev = evtimer_new(env.base, delay_cb, dl);
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	if (dl->answer == NULL || dl->ev == NULL ||
	    evtimer_add(dl->ev, &tv) == -1)
		die(1, "cannot set a delay");
	TAILQ_INSERT_TAIL(&env.delays, dl, entry);
	return 0;
}

/* Frees a big body once evbuffer has written it (arg is the block). */
static void
big_free_cb(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	free(arg);
}

/* A body of an exact size, to probe the client's response cap. */
static int
mode_big(struct delivery *d)
{
	long long	 n;
	char		*p;

	if (field_int(d->in, "bytes", 2, MAX_BIG, &n) == -1)
		return reply_bad(d, "big needs \"bytes\": an integer in "
		    "2..268435456\n");
	delivery_record(d, 1);
	p = xcalloc(1, (size_t)n);
	memset(p, 'a', (size_t)n);
	p[0] = p[n - 1] = '"';
	/* By reference: a big body is not copied on its way out. */
	if (evbuffer_add_reference(evhttp_request_get_output_buffer(d->req),
	    p, (size_t)n, big_free_cb, p) == -1)
		die(1, "out of memory");
	evhttp_add_header(evhttp_request_get_output_headers(d->req),
	    "Content-Type", "application/json");
	evhttp_send_reply(d->req, 200, NULL, NULL);
	return 200;
}

/* The value of a hex digit, or -1. */
static int
hex_digit(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Adds the bytes hex spells to out; 0, or -1 if it is not hex pairs. */
static int
hex_add(struct evbuffer *out, const char *hex)
{
	unsigned char	byte;
	int		hi, lo;

	for (; *hex != '\0'; hex += 2) {
		hi = hex_digit((unsigned char)hex[0]);
		lo = hex[1] != '\0' ? hex_digit((unsigned char)hex[1]) : -1;
		if (hi == -1 || lo == -1)
			return -1;
		byte = (unsigned char)(hi << 4 | lo);
		evbuffer_add(out, &byte, 1);
	}
	return 0;
}

/* The raw bytes are all in the kernel: close, freeing the request too. */
static void
raw_write_cb(struct bufferevent *bev, void *arg)
{
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		evhttp_connection_free(arg);
}

/*
 * Writes past evhttp, on its bufferevent, and closes once the bytes are
 * out.  The request stays queued on its connection and is freed with it.
 */
static int
mode_raw(struct delivery *d)
{
	json_t			*raw = json_object_get(d->in, "raw");
	json_t			*hex = json_object_get(d->in, "raw_hex");
	struct evbuffer		*out = evbuffer_new();
	struct bufferevent	*bev;

	if (out == NULL)
		die(1, "out of memory");
	if (json_is_string(raw))
		evbuffer_add(out, json_string_value(raw),
		    json_string_length(raw));
	else if (!json_is_string(hex) ||
	    hex_add(out, json_string_value(hex)) == -1) {
		evbuffer_free(out);
		return reply_bad(d, "raw needs \"raw\" (a string) or "
		    "\"raw_hex\" (hex digits)\n");
	}
	delivery_record(d, 0);
	if (evbuffer_get_length(out) == 0) {
		evbuffer_free(out);
		evhttp_connection_free(evhttp_request_get_connection(d->req));
		return 0;
	}
	bev = conn_take(d->req, NULL, raw_write_cb, conn_free_cb);
	if (bufferevent_disable(bev, EV_READ) == -1 ||
	    bufferevent_write_buffer(bev, out) == -1 ||
	    bufferevent_enable(bev, EV_WRITE) == -1)
		die(1, "cannot write raw bytes");
	evbuffer_free(out);
	return 0;
}

/* Picks d's mode and runs it; the status answered, 0 if none yet. */
static int
delivery_run(struct delivery *d, const char **name)
{
	json_t	*mode = json_object_get(d->in, "mode");
	json_t	*until = json_object_get(d->in, "until_attempt");
	json_t	*times = json_object_get(d->in, "times");
	struct key_rec *k;
	size_t	 i;

	*name = "ok";
	if (mode != NULL && !json_is_string(mode))
		return reply_bad(d, "\"mode\" must be a string\n");
	if (until != NULL && !json_is_integer(until))
		return reply_bad(d, "\"until_attempt\" must be an integer\n");
	if (mode != NULL)
		*name = json_string_value(mode);
	if (until != NULL && d->attempt >= json_integer_value(until))
		*name = "ok";
	if (times != NULL && !json_is_integer(times))
		return reply_bad(d, "\"times\" must be an integer\n");
	if (times != NULL && (k = key_find(d->key, key_hash(d->key))) !=
	    NULL && (json_int_t)k->deliveries >= json_integer_value(times))
		*name = "ok";
	for (i = 0; i < nitems(modes); i++)
		if (strcmp(*name, modes[i].name) == 0)
			return modes[i].run(d);
	return reply_bad(d, "unknown mode\n");
}

/*
 * Close and raw free the request with its connection, so the log line
 * takes what it needs of it before the mode runs.
 */
static void
delivery_serve(struct evhttp_request *req, const char *path)
{
	struct delivery	 d;
	const char	*mode;
	char		 who[512] = "";
	int		 code;

	delivery_read(&d, req, path);
	/* Cut short: one line per request, even for a 100 kB path. */
	if (!env.quiet)
		snprintf(who, sizeof(who), "%s %.200s key=%.200s attempt=%lld",
		    method_name(evhttp_request_get_command(req)), path, d.key,
		    d.attempt);
	code = delivery_run(&d, &mode);
	if (code != 0)
		httpd_log("%s mode=%.20s -> %d", who, mode, code);
	else
		httpd_log("%s mode=%.20s", who, mode);
	json_decref(d.body);
}

/* GET /_stats: the totals over every key. */
static int
control_stats(struct evhttp_request *req)
{
	return reply_json(req, 200, json_pack("{s:I, s:I, s:I, s:I, s:I, "
	    "s:I}",
	    "deliveries", (json_int_t)env.deliveries,
	    "effects", (json_int_t)env.effects,
	    "keys", (json_int_t)env.nkeys,
	    "max_effects_per_key", (json_int_t)env.max_effects,
	    "max_deliveries_per_key", (json_int_t)env.max_deliveries,
	    "hanging", (json_int_t)env.hanging));
}

/* GET /_key?k=KEY: one key's counts, 0s if it was never delivered. */
static int
control_key(struct evhttp_request *req)
{
	const char	*q = evhttp_uri_get_query(
			    evhttp_request_get_evhttp_uri(req));
	struct evkeyvalq params;
	struct key_rec	*k;
	const char	*key;
	int		 code;

	TAILQ_INIT(&params);
	if (q == NULL || evhttp_parse_query_str(q, &params) == -1 ||
	    (key = evhttp_find_header(&params, "k")) == NULL) {
		evhttp_clear_headers(&params);
		return reply_text(req, 400, "usage: GET /_key?k=KEY\n");
	}
	k = key_find(key, key_hash(key));
	code = reply_json(req, 200, json_pack("{s:o, s:I, s:I}",
	    "key", json_text(key),
	    "deliveries", (json_int_t)(k != NULL ? k->deliveries : 0),
	    "effects", (json_int_t)(k != NULL ? k->effects : 0)));
	evhttp_clear_headers(&params);
	return code;
}

/* POST /_reset: forgets every key, so a test starts from nothing. */
static int
control_reset(struct evhttp_request *req)
{
	key_clear(NBUCKETS_MIN);
	return reply_json(req, 200, json_object());
}

/* Routes a /_ request to its endpoint: 404 unknown, 405 wrong method. */
static void
control_serve(struct evhttp_request *req, const char *path)
{
	static const struct {
		const char		*path;
		enum evhttp_cmd_type	 cmd;
		int			(*run)(struct evhttp_request *);
	} ends[] = {
		{ "/_stats", EVHTTP_REQ_GET, control_stats },
		{ "/_key", EVHTTP_REQ_GET, control_key },
		{ "/_reset", EVHTTP_REQ_POST, control_reset },
	};
	enum evhttp_cmd_type	cmd = evhttp_request_get_command(req);
	char			who[256] = "";
	size_t			i;
	int			code = 0;

	/* Copied first: path is the request's, which the answer frees. */
	if (!env.quiet)
		snprintf(who, sizeof(who), "%s %.200s", method_name(cmd), path);
	for (i = 0; i < nitems(ends) && code == 0; i++)
		if (strcmp(path, ends[i].path) == 0)
			code = cmd == ends[i].cmd ? ends[i].run(req) :
			    reply_text(req, 405, "wrong method\n");
	if (code == 0)
		code = reply_text(req, 404, "no such control endpoint\n");
	httpd_log("%s -> %d", who, code);
}

/* Every request: /_ paths are control, everything else a delivery. */
static void
httpd_request_cb(struct evhttp_request *req, void *arg)
{
	const char	*path;

	(void)arg;
	path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	if (path == NULL)
		path = "";
	if (strncmp(path, "/_", 2) == 0)
		control_serve(req, path);
	else
		delivery_serve(req, path);
}

/* SIGTERM, SIGINT: leave the loop; main frees everything and exits 0. */
static void
httpd_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	httpd_log("stopping (%s)", sig == SIGTERM ? "SIGTERM" : "SIGINT");
	event_base_loopbreak(env.base);
}

/* Writes the port of fd through a rename, so a reader sees all or none. */
static void
port_write(const char *path, evutil_socket_t fd)
{
	struct sockaddr_storage	 ss;
	socklen_t		 len = sizeof(ss);
	char			 tmp[4096];
	FILE			*fp;
	int			 port;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
		die(1, "getsockname: %s", strerror(errno));
	port = ss.ss_family == AF_INET6 ?
	    ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) :
	    ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		die(2, "%s: name too long", path);
	if ((fp = fopen(tmp, "w")) == NULL)
		die(1, "%s: %s", tmp, strerror(errno));
	fprintf(fp, "%d\n", port);
	if (fclose(fp) != 0 || rename(tmp, path) == -1)
		die(1, "%s: %s", path, strerror(errno));
}

/* The server context of --tls, from a chain and a key in PEM files. */
static void
tls_load(const char *cert, const char *key)
{
	char	why[256] = "";

	if ((env.tls = SSL_CTX_new(TLS_server_method())) == NULL ||
	    SSL_CTX_use_certificate_chain_file(env.tls, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(env.tls, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(env.tls) != 1) {
		ERR_error_string_n(ERR_peek_last_error(), why, sizeof(why));
		die(1, "--tls %s %s: %s", cert, key, why);
	}
}

/*
 * evhttp's bufferevent for each accepted connection under --tls; evhttp
 * sets its fd, and frees it (and the SSL with it) with the connection.
 */
static struct bufferevent *
tls_bev_cb(struct event_base *base, void *arg)
{
	struct bufferevent	*bev;
	SSL			*ssl;

	if ((ssl = SSL_new(arg)) == NULL)
		die(1, "SSL_new failed");
	bev = bufferevent_openssl_socket_new(base, -1, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		die(1, "cannot make a TLS bufferevent");
	return bev;
}

/* Sets up the loop and the server on host, then publishes the port. */
static void
httpd_start(const char *portfile, const char *host)
{
	static const int		 sigs[] = { SIGTERM, SIGINT };
	struct evhttp_bound_socket	*bound;
	size_t				 i;

	if ((env.base = event_base_new()) == NULL ||
	    (env.http = evhttp_new(env.base)) == NULL)
		die(1, "cannot set up libevent");
	evhttp_set_allowed_methods(env.http, EVHTTP_REQ_GET |
	    EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
	    EVHTTP_REQ_DELETE);
	evhttp_set_max_body_size(env.http, MAX_BODY);
	evhttp_set_max_headers_size(env.http, MAX_HEADERS);
	/* Else evhttp labels every body text/html; we say what we send. */
	evhttp_set_default_content_type(env.http, NULL);
	evhttp_set_gencb(env.http, httpd_request_cb, NULL);
	if (env.tls != NULL)
		evhttp_set_bevcb(env.http, tls_bev_cb, env.tls);
	bound = evhttp_bind_socket_with_handle(env.http, host, 0);
	if (bound == NULL)
		die(1, "cannot listen on %s", host);
	for (i = 0; i < nitems(sigs); i++) {
		env.sig_ev[i] = evsignal_new(env.base, sigs[i],
		    httpd_signal_cb, NULL);
		if (env.sig_ev[i] == NULL || evsignal_add(env.sig_ev[i],
		    NULL) == -1)
			die(1, "cannot add a signal event");
	}
	port_write(portfile, evhttp_bound_socket_get_fd(bound));
}

/* Frees everything, so valgrind sees nothing left. */
static void
httpd_stop(void)
{
	struct delay	*dl;
	size_t		 i;

	while ((dl = TAILQ_FIRST(&env.delays)) != NULL) {
		TAILQ_REMOVE(&env.delays, dl, entry);
		delay_free(dl);
	}
	/* Also frees the connections we took, and their requests. */
	evhttp_free(env.http);
	for (i = 0; i < nitems(env.sig_ev); i++)
		event_free(env.sig_ev[i]);
	key_clear(0);
	event_base_free(env.base);
	SSL_CTX_free(env.tls);
	libevent_global_shutdown();
}

static void
usage(void)
{
	fprintf(stderr, "usage: httpd -p portfile [-b host] [--every] "
	    "[--quiet] [--tls cert key]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char	*portfile = NULL, *host = "127.0.0.1";
	int		 i;

	for (i = 1; i < argc; i++)
		if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
			portfile = argv[++i];
		else if (strcmp(argv[i], "-b") == 0 && i + 1 < argc)
			host = argv[++i];
		else if (strcmp(argv[i], "--every") == 0)
			env.every = 1;
		else if (strcmp(argv[i], "--quiet") == 0)
			env.quiet = 1;
		else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
			tls_load(argv[i + 1], argv[i + 2]);
			i += 2;
		} else
			usage();
	if (portfile == NULL)
		usage();
	TAILQ_INIT(&env.delays);
	key_clear(NBUCKETS_MIN);
	signal(SIGPIPE, SIG_IGN);
	httpd_start(portfile, host);
	if (event_base_dispatch(env.base) == -1)
		die(1, "event loop failed");
	httpd_stop();
	return 0;
}
