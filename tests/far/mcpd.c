/*
 * mcpd: the far side of the mcp tool in tests, an MCP server on stdio
 * (JSON-RPC 2.0, one message a line).  It answers initialize, ignores
 * notifications, lists one tool "far" (and each --tool=NAME; with
 * --page-size=N, N tools a page, the page's offset as its cursor), and
 * takes tools/call of any name.  Every call is a delivery (table
 * far_deliveries, through its own connection to RECORDER_DSN when it is
 * set); with the default idempotent far side the effect is one row per
 * _meta "eav/idempotency_key" (far_effects, INSERT ... ON CONFLICT DO
 * NOTHING); with --every each delivery is an effect.
 *
 * A call waits "before_ms", records, then does what its argument "mode"
 * says, answering "ms" later (calls wait side by side, so answers may
 * come out of order):
 *
 *   ok           (the default) a result whose structuredContent says what
 *                was recorded, with the server's pid and the tool's name.
 *   error        a JSON-RPC error "code" / "message"; from attempt
 *                "until_attempt" on, ok instead.
 *   tool_error   a result with isError true and "message" as its text.
 *   crash        exits with code 3 (or kills itself with "signal")
 *                without answering; from attempt "until_attempt" on, ok.
 *   crash_before exits with code 3 before recording anything.
 *   hang         never answers.
 *   garbage      writes a line that is not JSON.
 *   wrong_id     answers with the call's id + 1000.
 *   unsolicited  writes a response to id 999999, then answers.
 *   big          a result whose text is "bytes" bytes long (with "id_last"
 *                true, the response's id comes after its result).
 *   big_garbage  as big, with a stray ']' at the end of the line.
 *   big_notify   first a notification whose data is "bytes" bytes long.
 *   big_request  first a request (sampling/createMessage, id "ask-<id>")
 *                of "bytes" bytes; answers once the client has answered
 *                it, with that answer as "client_answer".
 *   endless      writes a line that never ends (until killed).
 *   grandchild   starts a child that sleeps "grandchild_ms" in its process
 *                group and writes "<pid> <child pid>" to "pidfile".
 *
 * Flags: --init-error (initialize gets an error), --init-hang (it gets no
 * answer), --exit-after-init (exits once initialize is answered),
 * --every, --tool=NAME, --page-size=N, --list-loop (every page of
 * tools/list has a nextCursor: the last one points back at the first),
 * --list-bytes=N (the first tool's description is N bytes long),
 * --marker=TEXT (ignored: for ps).  Built without sanitizers; exit 2 on a
 * usage error.
 */
#include <sys/types.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "farlib.h"

#define MAX_TOOLS	8

/* A call waiting to record (phase 0) or to answer (phase 1). */
struct pending {
	struct pending	*next;
	long long	 due;
	int		 phase;
	json_t		*id;
	json_t		*name;
	json_t		*args;
	json_t		*meta;
	json_t		*recorded;
	json_t		*asked;		/* big_request: the id it sent */
};

static int		 every, init_error, init_hang, exit_after_init;
static int		 list_loop;
static const char	*tools[MAX_TOOLS] = { "far" };
static int		 ntools = 1, page_size = MAX_TOOLS;
static long long	 list_bytes;
static struct pending	*pendings;
static struct pending	*waiting;	/* for the client's answers */
static PGconn		*db;

static long long now_ms(void);
static void	put_line(const char *);
static void	put_json(json_t *);
static void	answer(json_t *, json_t *);
static void	answer_error(json_t *, long long, const char *);
static json_t	*record(json_t *);
static void	grandchild(json_t *);
static json_t	*text_result(const char *, json_t *, int);
static char	*xs(long long);
static void	big(struct pending *, const char *);
static void	ask(struct pending *);
static void	replied(json_t *);
static void	endless(void);
static void	act(struct pending *);
static void	finish(struct pending *);
static void	schedule(struct pending *, long long, int);
static void	tools_list(json_t *, json_t *);
static void	tools_call(json_t *, json_t *);
static void	handle(const char *);
static void	run_due(void);
static int	next_timeout(void);
static void	flags(int, char **);

static long long
now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes one line on stdout, unbuffered (a fork must not copy it). */
static void
put_line(const char *text)
{
	size_t	len = strlen(text), off = 0;
	ssize_t	n;

	while (off < len) {
		n = write(STDOUT_FILENO, text + off, len - off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			exit(1);	/* the worker is gone */
		off += (size_t)n;
	}
	if (write(STDOUT_FILENO, "\n", 1) != 1)
		exit(1);
}

/* Writes a message (and takes it). */
static void
put_json(json_t *v)
{
	char	*text;

	if (v == NULL || (text = json_dumps(v, JSON_COMPACT)) == NULL)
		far_die("cannot encode a message");
	json_decref(v);
	put_line(text);
	free(text);
}

static void
answer(json_t *id, json_t *result)
{
	put_json(json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id,
	    "result", result));
}

static void
answer_error(json_t *id, long long code, const char *message)
{
	put_json(json_pack("{s:s, s:O, s:{s:I, s:s}}", "jsonrpc", "2.0", "id",
	    id, "error", "code", (json_int_t)code, "message", message));
}

/*
 * Records the delivery and (idempotent) the effect in one statement;
 * returns what was recorded.  Without RECORDER_DSN nothing is recorded.
 */
static json_t *
record(json_t *meta)
{
	const char	*dsn = getenv("RECORDER_DSN");
	const char	*key = far_str(meta, "eav/idempotency_key", "");
	char		 step[24], att[16];
	int		 effect = 0;

	snprintf(step, sizeof(step), "%lld", far_num(meta, "eav/step_id", 0));
	snprintf(att, sizeof(att), "%lld", far_num(meta, "eav/attempt", 0));
	if (dsn != NULL) {
		if (db == NULL && PQstatus(db = PQconnectdb(dsn)) !=
		    CONNECTION_OK)
			far_die("connect: %s", PQerrorMessage(db));
		effect = far_record(db, key, step, att, every);
	}
	return json_pack("{s:s, s:s, s:s, s:b, s:i}", "key", key, "step", step,
	    "attempt", att, "effect", effect, "pid", (int)getpid());
}

/* A child left behind in our process group. */
static void
grandchild(json_t *args)
{
	struct timespec	ts;
	long long	ms = far_num(args, "grandchild_ms", 600000);
	char		text[64];
	pid_t		pid;

	if ((pid = fork()) == -1)
		far_die("fork: %s", strerror(errno));
	if (pid == 0) {
		ts.tv_sec = ms / 1000;
		ts.tv_nsec = (ms % 1000) * 1000000;
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
		_exit(0);
	}
	snprintf(text, sizeof(text), "%d %d\n", (int)getpid(), (int)pid);
	far_write_pidfile(far_str(args, "pidfile", "/dev/null"), text);
}

/* A tool result with one text item (and takes structured, if any). */
static json_t *
text_result(const char *text, json_t *structured, int is_error)
{
	json_t	*r = json_pack("{s:[{s:s, s:s}], s:b}", "content", "type",
		    "text", "text", text, "isError", is_error);

	if (structured != NULL)
		json_object_set_new(r, "structuredContent", structured);
	return r;
}

/* n bytes of 'x', NUL-terminated (the caller frees them). */
static char *
xs(long long n)
{
	char	*text;

	if (n < 0 || (text = malloc((size_t)n + 1)) == NULL)
		far_die("cannot make %lld bytes", n);
	memset(text, 'x', (size_t)n);
	text[n] = '\0';
	return text;
}

/* Answers with a text of "bytes" bytes: modes big and big_garbage. */
static void
big(struct pending *p, const char *mode)
{
	json_t	*msg, *result;
	char	*text = xs(far_num(p->args, "bytes", 10)), *line;
	size_t	 len;

	result = text_result(text, NULL, 0);
	free(text);
	if (json_is_true(json_object_get(p->args, "id_last")))
		msg = json_pack("{s:o, s:O, s:s}", "result", result, "id",
		    p->id, "jsonrpc", "2.0");
	else
		msg = json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id",
		    p->id, "result", result);
	if (msg == NULL || (text = json_dumps(msg, JSON_COMPACT)) == NULL)
		far_die("cannot encode a message");
	json_decref(msg);
	len = strlen(text);
	if ((line = malloc(len + 2)) == NULL)
		far_die("out of memory");
	memcpy(line, text, len);
	strcpy(line + len, strcmp(mode, "big_garbage") == 0 ? "]" : "");
	put_line(line);
	free(line);
	free(text);
}

/* big_request: asks the client, then waits for its answer (replied). */
static void
ask(struct pending *p)
{
	char	*data = xs(far_num(p->args, "bytes", 10));

	p->asked = json_sprintf("ask-%lld", (long long)json_integer_value(
	    p->id));
	put_json(json_pack("{s:s, s:O, s:s, s:{s:s}}", "jsonrpc", "2.0", "id",
	    p->asked, "method", "sampling/createMessage", "params", "data",
	    data));
	free(data);
	p->next = waiting;
	waiting = p;
}

/* A response from the client: the call that asked answers now. */
static void
replied(json_t *msg)
{
	struct pending	**pp, *p;

	for (pp = &waiting; (p = *pp) != NULL; pp = &p->next)
		if (json_equal(p->asked, json_object_get(msg, "id"))) {
			*pp = p->next;
			json_object_set(p->recorded, "client_answer", msg);
			schedule(p, 0, 1);
			return;
		}
	fprintf(stderr, "mcpd: an answer to nothing asked\n");
}

/* endless: a line without end, written until the worker kills us. */
static void
endless(void)
{
	const char	*head = "{\"jsonrpc\": \"2.0\", \"x\": \"";
	char		*text = xs(65536);

	if (write(STDOUT_FILENO, head, strlen(head)) != (ssize_t)strlen(head))
		exit(1);
	for (;;)
		if (write(STDOUT_FILENO, text, 65536) == -1 && errno != EINTR)
			exit(1);
}

/* The call's effect, and what its mode does right away. */
static void
act(struct pending *p)
{
	const char	*mode = far_str(p->args, "mode", "ok");
	char		*data;

	p->recorded = record(p->meta);
	if (strcmp(mode, "endless") == 0)
		endless();
	if (strcmp(mode, "big_request") == 0) {
		ask(p);
		return;
	}
	if (strcmp(mode, "big_notify") == 0) {
		data = xs(far_num(p->args, "bytes", 10));
		put_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "jsonrpc",
		    "2.0", "method", "notifications/message", "params",
		    "level", "info", "data", data));
		free(data);
	}
	if (strcmp(mode, "crash") == 0 && far_num(p->meta, "eav/attempt", 0) <
	    far_num(p->args, "until_attempt", 1000000)) {
		if (far_num(p->args, "signal", 0) > 0)
			kill(getpid(), (int)far_num(p->args, "signal", 0));
		_exit(3);
	}
	if (strcmp(mode, "hang") == 0)
		return;
	if (strcmp(mode, "grandchild") == 0)
		grandchild(p->args);
	schedule(p, far_num(p->args, "ms", 0), 1);
}

/* Answers a call as its mode says. */
static void
finish(struct pending *p)
{
	const char	*mode = far_str(p->args, "mode", "ok");
	char		*text;

	if (strcmp(mode, "error") == 0 && far_num(p->meta, "eav/attempt", 0) <
	    far_num(p->args, "until_attempt", 1000000)) {
		answer_error(p->id, far_num(p->args, "code", -32603),
		    far_str(p->args, "message", "failed on purpose"));
		return;
	}
	if (strcmp(mode, "tool_error") == 0) {
		answer(p->id, text_result(far_str(p->args, "message",
		    "tool failed on purpose"), NULL, 1));
		return;
	}
	if (strcmp(mode, "garbage") == 0) {
		put_line("{\"jsonrpc\": \"2.0\", this is not json");
		return;
	}
	if (strcmp(mode, "wrong_id") == 0) {
		put_json(json_pack("{s:s, s:I, s:{}}", "jsonrpc", "2.0", "id",
		    json_integer_value(p->id) + 1000, "result"));
		return;
	}
	if (strcmp(mode, "unsolicited") == 0)
		put_json(json_pack("{s:s, s:i, s:{}}", "jsonrpc", "2.0", "id",
		    999999, "result"));
	if (strcmp(mode, "big") == 0 || strcmp(mode, "big_garbage") == 0) {
		big(p, mode);
		return;
	}
	json_object_set(p->recorded, "arguments", p->args);
	json_object_set(p->recorded, "name", p->name);
	text = json_dumps(p->recorded, JSON_COMPACT);
	answer(p->id, text_result(text != NULL ? text : "?",
	    json_incref(p->recorded), 0));
	free(text);
}

/* Puts p on the list, due ms from now in the given phase. */
static void
schedule(struct pending *p, long long ms, int phase)
{
	p->due = now_ms() + ms;
	p->phase = phase;
	p->next = pendings;
	pendings = p;
}

/*
 * tools/list: the page at the cursor (an offset, as a string), with the
 * next page's cursor if there is one.
 */
static void
tools_list(json_t *id, json_t *params)
{
	json_t		*list = json_array(), *page;
	const char	*cursor = far_str(params, "cursor", "0");
	char		*end, next[16];
	long		 off = strtol(cursor, &end, 10);
	int		 i;

	if (*cursor == '\0' || *end != '\0' || off < 0 || off >= ntools) {
		json_decref(list);
		answer_error(id, -32602, "invalid cursor");
		return;
	}
	for (i = (int)off; i < ntools && i < off + page_size; i++)
		json_array_append_new(list, json_pack("{s:s, s:{s:s}}", "name",
		    tools[i], "inputSchema", "type", "object"));
	if (list_bytes > 0 && off == 0) {
		end = xs(list_bytes);
		json_object_set_new(json_array_get(list, 0), "description",
		    json_string(end));
		free(end);
	}
	page = json_pack("{s:o}", "tools", list);
	snprintf(next, sizeof(next), "%d", i < ntools ? i : 0);
	if (i < ntools || list_loop)
		json_object_set_new(page, "nextCursor", json_string(next));
	answer(id, page);
}

/* tools/call: waits before_ms, then acts. */
static void
tools_call(json_t *id, json_t *params)
{
	struct pending	*p;
	json_t		*args = json_object_get(params, "arguments");

	if (!json_is_object(args)) {
		answer_error(id, -32602, "arguments must be an object");
		return;
	}
	if (strcmp(far_str(args, "mode", "ok"), "crash_before") == 0)
		_exit(3);
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		far_die("out of memory");
	p->id = json_incref(id);
	p->name = json_incref(json_object_get(params, "name"));
	p->args = json_incref(args);
	p->meta = json_incref(json_object_get(params, "_meta"));
	schedule(p, far_num(args, "before_ms", 0), 0);
}

/* One line from the client. */
static void
handle(const char *line)
{
	json_t		*msg, *id;
	json_error_t	 jerr;
	const char	*method;

	if ((msg = json_loads(line, 0, &jerr)) == NULL)
		far_die("stdin: %s", jerr.text);
	id = json_object_get(msg, "id");
	method = far_str(msg, "method", "");
	if (json_object_get(msg, "method") == NULL)
		replied(msg);
	else if (strcmp(method, "initialize") == 0 && init_error)
		answer_error(id, -32603, "initialize refused on purpose");
	else if (strcmp(method, "initialize") == 0 && !init_hang) {
		answer(id, json_pack("{s:s, s:{s:{}}, s:{s:s, s:s}}",
		    "protocolVersion", "2025-06-18", "capabilities", "tools",
		    "serverInfo", "name", "mcpd", "version", "1"));
		if (exit_after_init)
			exit(0);
	} else if (strcmp(method, "tools/list") == 0)
		tools_list(id, json_object_get(msg, "params"));
	else if (strcmp(method, "tools/call") == 0)
		tools_call(id, json_object_get(msg, "params"));
	else if (id != NULL && strcmp(method, "initialize") != 0)
		answer_error(id, -32601, "method not found");
	json_decref(msg);
}

/* Runs every pending step that is due. */
static void
run_due(void)
{
	struct pending	**pp, *p;
	long long	  now = now_ms();

	for (pp = &pendings; (p = *pp) != NULL; ) {
		if (p->due > now) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		if (p->phase == 0) {
			act(p);
		} else {
			finish(p);
			json_decref(p->id);
			json_decref(p->name);
			json_decref(p->args);
			json_decref(p->meta);
			json_decref(p->recorded);
			json_decref(p->asked);
			free(p);
		}
		/* act may have put p back at the head: start over. */
		pp = &pendings;
		now = now_ms();
	}
}

/* Milliseconds until the next pending step, or -1 (none). */
static int
next_timeout(void)
{
	struct pending	*p;
	long long	 next = -1, now = now_ms();

	for (p = pendings; p != NULL; p = p->next)
		if (next == -1 || p->due < next)
			next = p->due;
	if (next == -1)
		return -1;
	return next <= now ? 0 : (int)(next - now);
}

/* Sets the flags of the command line; exit 2 on one it does not know. */
static void
flags(int argc, char **argv)
{
	int	i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--every") == 0)
			every = 1;
		else if (strcmp(argv[i], "--init-error") == 0)
			init_error = 1;
		else if (strcmp(argv[i], "--init-hang") == 0)
			init_hang = 1;
		else if (strcmp(argv[i], "--exit-after-init") == 0)
			exit_after_init = 1;
		else if (strcmp(argv[i], "--list-loop") == 0)
			list_loop = 1;
		else if (strncmp(argv[i], "--tool=", 7) == 0 &&
		    ntools < MAX_TOOLS)
			tools[ntools++] = argv[i] + 7;
		else if (strncmp(argv[i], "--page-size=", 12) == 0 &&
		    atoi(argv[i] + 12) > 0)
			page_size = atoi(argv[i] + 12);
		else if (strncmp(argv[i], "--list-bytes=", 13) == 0)
			list_bytes = atoll(argv[i] + 13);
		else if (strncmp(argv[i], "--marker=", 9) != 0)
			far_die("usage: mcpd [--every] [--init-error] "
			    "[--init-hang] [--exit-after-init] [--tool=name] "
			    "[--page-size=n] [--list-loop] [--list-bytes=n] "
			    "[--marker=text]");
	}
}

int
main(int argc, char **argv)
{
	struct pollfd	 pfd = { STDIN_FILENO, POLLIN, 0 };
	static char	 buf[4 << 20];
	size_t		 len = 0;
	ssize_t		 n;
	char		*nl, *start;

	far_prog = "mcpd";
	flags(argc, argv);
	fprintf(stderr, "mcpd: pid %d up\n", (int)getpid());
	for (;;) {
		run_due();
		if (poll(&pfd, 1, next_timeout()) == -1) {
			if (errno == EINTR)
				continue;
			far_die("poll: %s", strerror(errno));
		}
		if (pfd.revents == 0)
			continue;
		if (len == sizeof(buf) - 1)
			far_die("line too long");
		n = read(STDIN_FILENO, buf + len, sizeof(buf) - 1 - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		start = buf;
		while ((nl = strchr(start, '\n')) != NULL) {
			*nl = '\0';
			handle(start);
			start = nl + 1;
		}
		len -= (size_t)(start - buf);
		memmove(buf, start, len);
	}
	fprintf(stderr, "mcpd: pid %d: stdin closed\n", (int)getpid());
	PQfinish(db);
	return 0;
}
