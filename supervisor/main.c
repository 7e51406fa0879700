/*
 * eavd: the supervisor.
 *
 *   eavd [-f eav.conf] [-n [-v]] [-V]
 *
 * Start-up, in this order and blocking (nothing else runs yet): connect,
 * apply migrations, start a new incarnation of this node, reconcile the
 * steps earlier incarnations left running, then spawn the children.  From
 * then on the supervisor never blocks: one libevent loop with signal
 * events (SIGCHLD, SIGTERM, SIGINT, SIGHUP) and timers, and an
 * asynchronous database channel.
 *
 * SIGTERM/SIGINT: stop spawning, SIGTERM the children, SIGKILL them after
 * shutdown_grace (at once on a second SIGINT), reconcile, record the clean
 * stop, exit 0.  SIGHUP: parse the file into a new configuration and swap
 * it in whole, or keep the old one; then replace the children one at a
 * time.
 */
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "config.h"
#include "db.h"
#include "exitcode.h"
#include "inject.h"
#include "inject_db.h"
#include "log.h"
#include "migrate.h"
#include "supervisor.h"
#include "xalloc.h"

#define DEFAULT_CONFIG	"/etc/eav/eav.conf"
#define EXIT_DEADLINE_MS 5000

static void	usage(void) __attribute__((noreturn));
static void	sup_find_exe_dir(struct sup *);
static void	sup_signals(struct sup *);
static void	sup_signal_cb(evutil_socket_t, short, void *);
static void	sup_startup_db(struct sup *, struct db *);
static long long sup_scalar(struct db *, enum db_stmt, const char *const *);
static void	sup_start_children(struct sup *);
static void	sup_reload(struct sup *);
static void	sup_grace_cb(evutil_socket_t, short, void *);
static void	sup_ready_cb(evutil_socket_t, short, void *);
static void	sup_exit_cb(evutil_socket_t, short, void *);
static void	sup_stopped_cb(struct sup *, void *, PGresult *,
		    enum db_status);
static void	sup_free(struct sup *);

static void
usage(void)
{
	fprintf(stderr, "usage: eavd [-f config] [-n [-v]] [-V]\n");
	exit(EAV_EXIT_USAGE);
}

/* Children are found next to eavd, or in ../lib/eav after make install. */
static void
sup_find_exe_dir(struct sup *sup)
{
	char	self[PATH_MAX], probe[PATH_MAX + 32];
	ssize_t	n;

	if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) == -1)
		fatal("readlink /proc/self/exe");
	self[n] = '\0';
	snprintf(sup->exe_dir, sizeof(sup->exe_dir), "%s", dirname(self));
	snprintf(probe, sizeof(probe), "%s/eav-worker", sup->exe_dir);
	if (access(probe, X_OK) == 0)
		return;
	snprintf(probe, sizeof(probe), "%s/../lib/eav/eav-worker",
	    sup->exe_dir);
	if (access(probe, X_OK) == 0 &&
	    realpath(probe, self) != NULL) {
		snprintf(sup->exe_dir, sizeof(sup->exe_dir), "%s",
		    dirname(self));
		return;
	}
	fatalx("cannot find eav-worker next to eavd (%s)", sup->exe_dir);
}

static void
sup_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct sup	*sup = arg;

	(void)what;
	switch (sig) {
	case SIGCHLD:
		child_reap_all(sup);
		break;
	case SIGTERM:
		sup_stop(sup, 0);
		break;
	case SIGINT:
		sup_stop(sup, sup->state == SUP_STOPPING);
		break;
	case SIGHUP:
		sup_reload(sup);
		break;
	}
}

static void
sup_signals(struct sup *sup)
{
	static const int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP };
	size_t	 i;

	signal(SIGPIPE, SIG_IGN);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		sup->sig_ev[i] = evsignal_new(sup->base, sigs[i],
		    sup_signal_cb, sup);
		if (sup->sig_ev[i] == NULL ||
		    evsignal_add(sup->sig_ev[i], NULL) == -1)
			fatalx("cannot add signal event %d", sigs[i]);
	}
}

/* Runs a one-row, one-column statement at start-up; -1 on failure. */
static long long
sup_scalar(struct db *db, enum db_stmt s, const char *const *params)
{
	PGresult	*res = NULL;
	long long	 v;

	if (db_call(db, s, params, &res) != DB_OK)
		return -1;
	v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return v;
}

static void
sup_startup_db(struct sup *sup, struct db *db)
{
	const int64_t	 deadline = clock_ms() + sup->cfg.startup_timeout;
	const struct timespec pause = { 0, 500000000 };
	char		 host[256], pid[16], inc[24];
	const char	*start[4] = { sup->cfg.node_name, host, pid,
			    EAV_VERSION };
	const char	*rec[2] = { sup->cfg.node_name, inc };
	long long	 n;
	int		 applied;

	while (db_connect(db, sup->cfg.dsn, "eavd") == -1) {
		if (clock_ms() > deadline) {
			log_error("cannot connect to the database: %s",
			    db->errmsg);
			exit(EAV_EXIT_DB_LOST);
		}
		log_warnx("cannot connect to the database yet: %s",
		    db->errmsg);
		nanosleep(&pause, NULL);
	}
	if (migrate_apply(db, &applied) == -1)
		fatalx("cannot apply migrations: %s", db->errmsg);
	if (gethostname(host, sizeof(host)) == -1)
		snprintf(host, sizeof(host), "unknown");
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if ((sup->incarnation = sup_scalar(db, DB_NODE_START, start)) <= 0)
		fatalx("cannot start a new incarnation: %s", db->errmsg);
	snprintf(sup->actor, sizeof(sup->actor), "supervisor:%s/%lld",
	    sup->cfg.node_name, sup->incarnation);
	snprintf(inc, sizeof(inc), "%lld", sup->incarnation);
	if ((n = sup_scalar(db, DB_RECONCILE_INCARNATION, rec)) < 0)
		fatalx("cannot reconcile earlier incarnations: %s",
		    db->errmsg);
	sup->reconciled = n;
	log_notice("node %s incarnation %lld started; %d migration(s) "
	    "applied; %lld step(s) left running by earlier incarnations "
	    "reconciled", sup->cfg.node_name, sup->incarnation, applied, n);
}

static void
sup_start_children(struct sup *sup)
{
	struct child	*c;
	struct timeval	 tv = clock_tv(sup->cfg.startup_timeout);
	int		 i;

	for (i = 0; i < MAX_CHILDREN; i++) {
		c = &sup->children[i];
		if (c->in_use && child_spawn(c) == -1) {
			c->dead_status = 127 << 8;
			policy_after_reconcile(c);
		}
	}
	sup->ready_ev = evtimer_new(sup->base, sup_ready_cb, sup);
	if (sup->ready_ev == NULL || evtimer_add(sup->ready_ev, &tv) == -1)
		fatalx("cannot add the readiness timer");
}

/* READY=1 once every configured child is up. */
void
sup_check_ready(struct sup *sup)
{
	int	i;

	notify_status(sup);
	if (sup->ready_sent)
		return;
	for (i = 0; i < MAX_CHILDREN; i++)
		if (sup->children[i].in_use &&
		    sup->children[i].state != CHILD_UP)
			return;
	sup->ready_sent = 1;
	log_info("ready: all %d children up", child_count_live(sup));
	notify_ready(sup);
}

/* Not every child came up in time: say READY anyway, degraded. */
static void
sup_ready_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sup	*sup = arg;

	(void)fd;
	(void)what;
	if (sup->ready_sent)
		return;
	log_warnx("not every child is up after %d ms; reporting ready "
	    "anyway", sup->cfg.startup_timeout);
	sup->ready_sent = 1;
	notify_ready(sup);
}

/* Begins the shutdown; fast skips the grace period. */
void
sup_stop(struct sup *sup, int fast)
{
	struct timeval	 tv = clock_tv(sup->cfg.shutdown_grace);
	struct child	*c;
	int		 i;

	if (sup->state == SUP_STOPPING) {
		if (!fast)
			return;
		if (child_count_live(sup) == 0) {
			log_notice("second signal: exiting without waiting for "
			    "the database; the next start reconciles");
			event_base_loopexit(sup->base, NULL);
			return;
		}
		log_notice("second signal: killing %d children now",
		    child_count_live(sup));
		for (i = 0; i < MAX_CHILDREN; i++)
			child_kill(&sup->children[i]);
		return;
	}
	sup->state = SUP_STOPPING;
	notify_stopping();
	log_info("stopping: asking %d children to finish (grace %d ms)",
	    child_count_live(sup), sup->cfg.shutdown_grace);
	for (i = 0; i < MAX_CHILDREN; i++) {
		c = &sup->children[i];
		if (c->pid != 0)
			child_stop(c);
		else if (c->state == CHILD_BACKOFF) {
			evtimer_del(c->timer);
			child_set_state(c, CHILD_DOWN, "shutting down");
		}
	}
	notify_status(sup);
	sup->grace_ev = evtimer_new(sup->base, sup_grace_cb, sup);
	if (sup->grace_ev == NULL || evtimer_add(sup->grace_ev, &tv) == -1)
		fatalx("cannot add the grace timer");
	sup_check_stopped(sup);
}

static void
sup_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sup	*sup = arg;
	int		 i;

	(void)fd;
	(void)what;
	if (child_count_live(sup) == 0)
		return;
	log_warnx("sending SIGKILL to %d stragglers", child_count_live(sup));
	for (i = 0; i < MAX_CHILDREN; i++)
		child_kill(&sup->children[i]);
}

static void
sup_exit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sup	*sup = arg;

	(void)fd;
	(void)what;
	if (!sdb_idle(sup->db))
		log_warnx("database unreachable at exit; the next start "
		    "reconciles this incarnation");
	event_base_loopexit(sup->base, NULL);
}

static void
sup_stopped_cb(struct sup *sup, void *arg, PGresult *res, enum db_status st)
{
	(void)arg;
	(void)res;
	if (st == DB_OK)
		log_info("incarnation %lld stopped cleanly", sup->incarnation);
	event_base_loopexit(sup->base, NULL);
}

/*
 * Once every child is gone: the exit deadline starts (EXIT_DEADLINE_MS:
 * an unreachable database must not keep eavd from exiting; the next
 * incarnation reconciles what is left), and once their reconciliations
 * are done, a last sweep and the clean stop are recorded and the loop
 * ends.
 */
void
sup_check_stopped(struct sup *sup)
{
	char		 inc[24];
	const char	*params[2] = { sup->cfg.node_name, inc };
	struct timeval	 tv = clock_tv(EXIT_DEADLINE_MS);
	int		 i;

	if (sup->state != SUP_STOPPING || child_count_live(sup) > 0 ||
	    sup->final_sent)
		return;
	if (sup->exit_ev == NULL) {
		sup->exit_ev = evtimer_new(sup->base, sup_exit_cb, sup);
		if (sup->exit_ev == NULL ||
		    evtimer_add(sup->exit_ev, &tv) == -1)
			fatalx("cannot add the exit timer");
	}
	for (i = 0; i < MAX_CHILDREN; i++)
		if (sup->children[i].busy)
			return;
	sup->final_sent = 1;
	snprintf(inc, sizeof(inc), "%lld", sup->incarnation);
	reconcile_sweep_start(sup);
	sdb_submit(sup->db, DB_NODE_STOP, params, sup_stopped_cb, NULL, 0);
}

/* Replaces the next child of a rolling reload, or ends the reload. */
void
sup_reload_next(struct sup *sup)
{
	struct child	*c;
	int		 i;

	if (!sup->reloading || sup->replacing != NULL ||
	    sup->state == SUP_STOPPING)
		return;
	for (i = 0; i < MAX_CHILDREN; i++) {
		c = &sup->children[i];
		if (c->replace && c->pid != 0 && c->state == CHILD_UP) {
			sup->replacing = c;
			child_stop(c);
			return;
		}
		if (c->replace && c->state == CHILD_STARTING)
			return;
	}
	for (i = 0; i < MAX_CHILDREN; i++)
		sup->children[i].replace = 0;
	sup->reloading = 0;
	log_notice("reload complete");
	notify_ready(sup);
}

static void
sup_reload(struct sup *sup)
{
	struct eav_config	 nc;
	struct child		*c;
	char			 err[512], what[64];
	int			 i;

	if (sup->state == SUP_STOPPING)
		return;
	if (config_load(&nc, sup->cfg.path, err, sizeof(err)) == -1) {
		log_error("configuration file %s has errors; not reloading: %s",
		    sup->cfg.path ? sup->cfg.path : "(none)", err);
		return;
	}
	if (config_reloadable_diff(&sup->cfg, &nc, what, sizeof(what))) {
		log_warnx("%s cannot change while eavd runs; keeping the old "
		    "value until a restart", what);
		free(nc.dsn);
		nc.dsn = xstrdup(sup->cfg.dsn);
		free(nc.node_name);
		nc.node_name = xstrdup(sup->cfg.node_name);
	}
	notify_reloading();
	config_free(&sup->cfg);
	sup->cfg = nc;
	log_level = sup->cfg.log_level;
	log_notice("configuration reloaded; replacing children one at a time");
	policy_reset_kinds(sup);
	for (i = 0; i < MAX_CHILDREN; i++) {
		c = &sup->children[i];
		c->in_use = c->kind == KIND_PRODUCER || i < sup->cfg.workers;
		c->backoff_ms = sup->cfg.restart_backoff_min;
		if (!c->in_use && c->pid != 0)
			child_stop(c);
		else if (!c->in_use && c->state == CHILD_BACKOFF) {
			evtimer_del(c->timer);
			child_set_state(c, CHILD_DOWN, "slot removed");
		} else if (c->in_use && c->pid != 0)
			c->replace = 1;
		else if (c->in_use && !c->busy) {
			evtimer_del(c->timer);
			if (child_spawn(c) == -1)
				policy_after_reconcile(c);
		}
	}
	sup->reloading = 1;
	sup_reload_next(sup);
}

static void
sup_free(struct sup *sup)
{
	int	i;

	for (i = 0; i < MAX_CHILDREN; i++) {
		event_free(sup->children[i].timer);
		free(sup->children[i].tools);
	}
	for (i = 0; i < 5; i++)
		if (sup->sig_ev[i] != NULL)
			event_free(sup->sig_ev[i]);
	if (sup->sweep_ev)
		event_free(sup->sweep_ev);
	if (sup->seal_ev)
		event_free(sup->seal_ev);
	if (sup->grace_ev)
		event_free(sup->grace_ev);
	if (sup->ready_ev)
		event_free(sup->ready_ev);
	if (sup->exit_ev)
		event_free(sup->exit_ev);
	sdb_free(sup->db);
	inject_db_close();
	event_base_free(sup->base);
	config_free(&sup->cfg);
}

int
main(int argc, char **argv)
{
	static struct sup	 sup;
	struct db		 db;
	const char		*path = NULL;
	char			 err[512];
	int			 ch, check = 0, verbose = 0;

	while ((ch = getopt(argc, argv, "f:nvV")) != -1) {
		switch (ch) {
		case 'f':
			path = optarg;
			break;
		case 'n':
			check = 1;
			break;
		case 'v':
			verbose = 1;
			break;
		case 'V':
			printf("eavd %s\n", EAV_VERSION);
			return 0;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	log_init("eavd");
	if (path == NULL && access(DEFAULT_CONFIG, F_OK) == 0)
		path = DEFAULT_CONFIG;
	if (config_load(&sup.cfg, path, err, sizeof(err)) == -1) {
		fprintf(stderr, "eavd: %s\n", err);
		return EAV_EXIT_CONFIG;
	}
	if (check) {
		if (verbose)
			config_print(&sup.cfg, stdout);
		printf("configuration OK\n");
		config_free(&sup.cfg);
		return 0;
	}
	log_level = sup.cfg.log_level;
	if (inject_init_env(err, sizeof(err)) == -1) {
		log_error("EAV_INJECT: %s", err);
		return EAV_EXIT_CONFIG;
	}
	clock_seed();
	sup_find_exe_dir(&sup);
	if ((sup.base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	sup_signals(&sup);
	memset(&db, 0, sizeof(db));
	sup_startup_db(&sup, &db);
	kill_view_init(&sup.kill);
	sup.db = sdb_new(&sup, &db);
	child_init_table(&sup);
	sup.state = SUP_RUNNING;
	sup_start_children(&sup);
	reconcile_sweep_start(&sup);
	seal_start(&sup);
	notify_init(&sup);
	if (event_base_dispatch(sup.base) == -1)
		fatalx("event loop failed");
	log_info("exiting");
	sup_free(&sup);
	return EAV_EXIT_OK;
}
