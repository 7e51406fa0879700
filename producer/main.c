/*
 * eav-producer: started by eavd as
 *   eav-producer -n NODE -i INCARNATION -s SLOT [--demo]
 * with its control socket on fd 3 (eavd first sends the configuration
 * there; EOF: eavd is gone; the process groups of watcher probes are
 * announced there too).  --demo turns the demo load on whatever
 * producer.demo says.  SIGTERM and SIGINT end it after the current
 * batch; an open batch is rolled back, running probes are killed.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "exitcode.h"
#include "inject.h"
#include "inject_db.h"
#include "log.h"
#include "producer.h"

static void	usage(void) __attribute__((noreturn));
static void	producer_args(struct producer *, int, char **, int *);
static void	producer_events(struct producer *);
static void	producer_stop_cb(evutil_socket_t, short, void *);
static void	producer_ctl_cb(evutil_socket_t, short, void *);
static void	producer_free(struct producer *);

static void
usage(void)
{
	fprintf(stderr, "usage: eav-producer -n node -i incarnation -s slot "
	    "[--demo] (started by eavd)\n");
	exit(EAV_EXIT_USAGE);
}

static void
producer_args(struct producer *p, int argc, char **argv, int *demo)
{
	static const struct option longopts[] = {
		{ "demo", no_argument, NULL, 'D' },
		{ NULL, 0, NULL, 0 }
	};
	int	ch;

	p->slot = -1;
	while ((ch = getopt_long(argc, argv, "i:n:s:", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'D':
			*demo = 1;
			break;
		case 'i':
			p->incarnation = strtoll(optarg, NULL, 10);
			break;
		case 'n':
			snprintf(p->node, sizeof(p->node), "%s", optarg);
			break;
		case 's':
			p->slot = atoi(optarg);
			break;
		default:
			usage();
		}
	}
	if (p->node[0] == '\0' || p->incarnation <= 0 || p->slot < 0)
		usage();
}

static void
producer_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer	*p = arg;

	(void)fd;
	(void)what;
	if (p->stopping)
		return;
	p->stopping = 1;
	log_info("stopping");
	event_base_loopexit(p->base, NULL);
}

static void
producer_ctl_cb(evutil_socket_t fd, short what, void *arg)
{
	char	buf[64];
	ssize_t	n;

	n = read(fd, buf, sizeof(buf));
	if (n == 0 || (n == -1 && errno != EINTR && errno != EAGAIN)) {
		event_del(((struct producer *)arg)->ctl_ev);
		producer_stop_cb(fd, what, arg);
	}
}

static void
producer_events(struct producer *p)
{
	static const int sigs[] = { SIGTERM, SIGINT };
	size_t	 i;

	if ((p->base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	for (i = 0; i < 2; i++) {
		p->sig_ev[i] = evsignal_new(p->base, sigs[i],
		    producer_stop_cb, p);
		if (p->sig_ev[i] == NULL || evsignal_add(p->sig_ev[i], NULL))
			fatalx("cannot add signal event");
	}
	p->ctl_ev = event_new(p->base, 3, EV_READ | EV_PERSIST,
	    producer_ctl_cb, p);
	if (p->ctl_ev == NULL || event_add(p->ctl_ev, NULL) == -1)
		fatalx("cannot watch fd 3 (run eav-producer from eavd)");
}

static void
producer_free(struct producer *p)
{
	struct event	*evs[] = { p->sig_ev[0], p->sig_ev[1], p->ctl_ev,
			    p->poll_ev, p->cycle_ev, p->demo_ev, p->sched_ev,
			    p->watch_ev, p->chld_ev, p->db_ev };
	sigset_t	 block;
	size_t		 i;

	/*
	 * A late second signal must not kill us while we tidy up; blocked,
	 * since freeing a signal event restores the default disposition.
	 */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	(void)sigprocmask(SIG_BLOCK, &block, NULL);

	watcher_free(p);
	classify_free(p);
	for (i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i] != NULL)
			event_free(evs[i]);
	reconnect_free(&p->reconnect);
	db_close(&p->db);
	inject_db_close();
	event_base_free(p->base);
	config_free(&p->cfg);
}

int
main(int argc, char **argv)
{
	struct producer	 p;
	char		 err[512];
	int		 demo = 0;

	memset(&p, 0, sizeof(p));
	producer_args(&p, argc, argv, &demo);
	log_init("eav-producer");
	clock_seed();
	if (config_receive(3, &p.cfg, err, sizeof(err)) == -1) {
		log_error("%s", err);
		return EAV_EXIT_CONFIG;
	}
	log_level = p.cfg.log_level;
	if (p.cfg.child_roles)
		db_set_user("eav_producer");
	if (demo)
		p.cfg.producer_demo = 1;
	if (inject_init_env(err, sizeof(err)) == -1) {
		log_error("EAV_INJECT: %s", err);
		return EAV_EXIT_CONFIG;
	}
	snprintf(p.actor, sizeof(p.actor), "producer:%s/%lld/%d", p.node,
	    p.incarnation, (int)getpid());
	inject_db_init(p.cfg.dsn, p.actor, p.incarnation, 1);
	producer_events(&p);
	ingest_init(&p);
	schedule_init(&p);
	watcher_init(&p);
	classify_init(&p);
	if (ingest_connect(&p) == -1)
		ingest_lost(&p);
	(void)INJECT(INJ_PRODUCER_STARTUP, 0, NULL);
	demo_init(&p);
	log_info("started node=%s incarnation=%lld batch=%d", p.node,
	    p.incarnation, p.cfg.producer_batch_size);
	if (write(3, "ready\n", 6) != 6)
		fatal("cannot report ready on fd 3");
	ingest_wake(&p);
	/* Catches up on the slots missed while no producer ran. */
	schedule_wake(&p);
	watcher_wake(&p);
	if (event_base_dispatch(p.base) == -1)
		fatalx("event loop failed");
	producer_free(&p);
	return EAV_EXIT_OK;
}
