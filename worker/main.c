/*
 * eav-worker: started by eavd as
 *   eav-worker -n NODE -i INCARNATION -s SLOT
 * with its control socket on fd 3, on which eavd first sends the
 * configuration it validated.  It writes "ready" there once set up;
 * EOF on fd 3 means eavd is gone.  SIGTERM and SIGINT mean: claim nothing
 * more, finish (or release) what is running, complete it, exit 0.  A
 * lost invariant exits non-zero; eavd decides what the death means.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <err.h>
#include <event2/event.h>

#include "clock.h"
#include "config.h"
#include "exitcode.h"
#include "inject.h"
#include "inject_db.h"
#include "log.h"
#include "toolproc.h"
#include "tls.h"
#include "worker.h"
#include "xalloc.h"

static void	usage(void) __attribute__((noreturn));
static void	worker_args(struct worker *, int, char **);
static void	worker_events(struct worker *);
static void	signal_cb(evutil_socket_t, short, void *);
static void	ctl_cb(evutil_socket_t, short, void *);
static void	poll_cb(evutil_socket_t, short, void *);
static char	*queues_literal(const char *);

static void
usage(void)
{
	fprintf(stderr, "usage: eav-worker -n node -i incarnation -s slot "
	    "(started by eavd)\n");
	exit(EAV_EXIT_USAGE);
}

static void
worker_args(struct worker *w, int argc, char **argv)
{
	int	ch;

	w->slot = -1;
	while ((ch = getopt(argc, argv, "i:n:s:")) != -1) {
		switch (ch) {
		case 'i':
			w->incarnation = strtoll(optarg, NULL, 10);
			break;
		case 'n':
			snprintf(w->node, sizeof(w->node), "%s", optarg);
			break;
		case 's':
			w->slot = atoi(optarg);
			break;
		default:
			usage();
		}
	}
	if (w->node[0] == '\0' || w->incarnation <= 0 || w->slot < 0)
		usage();
}

/* Turns "a,b" into the text[] literal "{a,b}"; "" means every queue. */
static char *
queues_literal(const char *list)
{
	if (list == NULL || *list == '\0')
		return NULL;
	return xasprintf("{%s}", list);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	worker_stop(arg, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* EOF on fd 3: the supervisor is gone, so nobody would reconcile us. */
static void
ctl_cb(evutil_socket_t fd, short what, void *arg)
{
	char	buf[64];
	ssize_t	n;

	(void)what;
	n = read(fd, buf, sizeof(buf));
	if (n == 0 || (n == -1 && errno != EINTR && errno != EAGAIN)) {
		event_del(((struct worker *)arg)->ctl_ev);
		worker_stop(arg, "supervisor gone");
	}
}

static void
poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cycle_wake(arg);
}

static void
worker_events(struct worker *w)
{
	static const int sigs[] = { SIGTERM, SIGINT };
	struct timeval	 tv = clock_tv(w->cfg.worker_poll_interval);
	size_t		 i;

	if ((w->base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);	/* eavd replaces us on reload */
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		w->sig_ev[i] = evsignal_new(w->base, sigs[i], signal_cb, w);
		if (w->sig_ev[i] == NULL || evsignal_add(w->sig_ev[i], NULL))
			fatalx("cannot add signal event");
	}
	w->ctl_ev = event_new(w->base, 3, EV_READ | EV_PERSIST, ctl_cb, w);
	if (w->ctl_ev == NULL || event_add(w->ctl_ev, NULL) == -1)
		fatalx("cannot watch fd 3 (run eav-worker from eavd)");
	w->poll_ev = event_new(w->base, -1, EV_PERSIST, poll_cb, w);
	if (w->poll_ev == NULL || event_add(w->poll_ev, &tv) == -1)
		fatalx("cannot add poll timer");
}

/*
 * Stops claiming; running steps finish or are released.  An exec or MCP
 * call cannot be interrupted without making its outcome unknown, so it is
 * waited for (eavd SIGKILLs us after shutdown_grace); MCP servers are
 * closed once their calls are answered.
 */
void
worker_stop(struct worker *w, const char *why)
{
	struct step	*s, *next;

	if (w->stopping)
		return;
	w->stopping = 1;
	log_info("stopping (%s) running=%d exec=%d http=%d mcp=%d", why,
	    w->nrunning, exec_running(), http_running(), mcp_running());
	TAILQ_FOREACH_SAFE(s, &w->running, entry, next)
		(void)tool_cancel(s);
	mcp_shutdown(w);
	if (w->ndone > 0 && db_is_connected(&w->db))
		(void)cycle_flush(w);
	worker_maybe_exit(w);
}

/*
 * Leaves the loop once nothing is running or waiting for completion, and
 * every MCP server is closed.
 */
void
worker_maybe_exit(struct worker *w)
{
	if (w->stopping && w->nrunning == 0 && w->ndone == 0 &&
	    mcp_servers() == 0)
		event_base_loopexit(w->base, NULL);
}

static void
worker_free(struct worker *w)
{
	sigset_t	block;
	size_t		i;

	/*
	 * A late second signal must not kill us while we tidy up; blocked,
	 * since freeing a signal event restores the default disposition.
	 */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	(void)sigprocmask(SIG_BLOCK, &block, NULL);

	for (i = 0; i < sizeof(w->sig_ev) / sizeof(w->sig_ev[0]); i++)
		if (w->sig_ev[i] != NULL)
			event_free(w->sig_ev[i]);
	if (w->ctl_ev)
		event_free(w->ctl_ev);
	if (w->chld_ev)
		event_free(w->chld_ev);
	if (w->poll_ev)
		event_free(w->poll_ev);
	if (w->cycle_ev)
		event_free(w->cycle_ev);
	reconnect_free(&w->reconnect);
	if (w->db_ev)
		event_free(w->db_ev);
	db_close(&w->db);
	inject_db_close();
	event_base_free(w->base);
	tls_free();
	free(w->queues);
	config_free(&w->cfg);
}

int
main(int argc, char **argv)
{
	struct worker	 w;
	char		 err[512], name[32];

	memset(&w, 0, sizeof(w));
	TAILQ_INIT(&w.running);
	TAILQ_INIT(&w.done);
	worker_args(&w, argc, argv);
	snprintf(name, sizeof(name), "eav-worker[%d]", w.slot);
	log_init("eav-worker");
	clock_seed();
	if (config_receive(3, &w.cfg, err, sizeof(err)) == -1) {
		log_error("%s", err);
		return EAV_EXIT_CONFIG;
	}
	log_level = w.cfg.log_level;
	if (w.cfg.child_roles)
		db_set_user("eav_worker");
	if (inject_init_env(err, sizeof(err)) == -1) {
		log_error("EAV_INJECT: %s", err);
		return EAV_EXIT_CONFIG;
	}
	snprintf(w.actor, sizeof(w.actor), "worker:%s/%lld/%d", w.node,
	    w.incarnation, (int)getpid());
	inject_db_init(w.cfg.dsn, w.actor, w.incarnation, 1);
	w.queues = queues_literal(w.cfg.worker_queues);
	worker_events(&w);
	w.chld_ev = toolproc_init(w.base, 3);
	cycle_init(&w);
	conn_init(&w);
	if (conn_open(&w) == -1)
		conn_lost(&w);
	(void)INJECT(INJ_WORKER_STARTUP, 0, NULL);
	log_info("%s started node=%s incarnation=%lld concurrency=%d "
	    "batch=%d", name, w.node, w.incarnation,
	    w.cfg.worker_concurrency, w.cfg.worker_batch_size);
	if (write(3, "ready\n", 6) != 6)
		fatal("cannot report ready on fd 3");
	cycle_wake(&w);
	if (event_base_dispatch(w.base) == -1)
		fatalx("event loop failed");
	log_info("stopped");
	worker_free(&w);
	return EAV_EXIT_OK;
}
