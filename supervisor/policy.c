/*
 * What a child's death means, decided in this order:
 *  1. classify the exit: clean, database lost, configuration, or crash;
 *  2. reconcile the dead worker's running steps (reconcile.c), and only
 *     when that is done,
 *  3. schedule the restart on a timer: restart_backoff_min doubling to
 *     restart_backoff_max, back to the minimum after restart_stable of
 *     uptime;
 *  4. count crashes per kind: more than restart_intensity in
 *     restart_period and the kind is FAILED (an alarm is raised, its
 *     slots are not restarted, other kinds keep running) until a reload.
 * A database outage is one event, not N crashes: EAV_EXIT_DB_LOST is not
 * counted.  The supervisor never sleeps.
 */
#include <sys/wait.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "exitcode.h"
#include "log.h"
#include "supervisor.h"

static enum exit_class	policy_classify(const struct child *);
static int		policy_count_crash(struct sup *, enum child_kind);
static void		policy_schedule(struct child *, int);
static void		policy_storm(struct child *);

/* Describes a wait status the way PostgreSQL's LogChildExit does. */
void
policy_describe_exit(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited with code %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "was terminated by signal %d: %s",
		    WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "ended with status %d", status);
}

static enum exit_class
policy_classify(const struct child *c)
{
	if (!WIFEXITED(c->dead_status))
		return EXIT_CRASH;
	switch (WEXITSTATUS(c->dead_status)) {
	case EAV_EXIT_OK:
		return EXIT_CLEAN;
	case EAV_EXIT_DB_LOST:
		return EXIT_DB_LOST;
	case EAV_EXIT_CONFIG:
		return EXIT_CONFIG;
	default:
		return EXIT_CRASH;
	}
}

/* Step 1: log the death, then reconcile before anything else. */
void
policy_child_exited(struct child *c)
{
	char	name[32], how[96];

	policy_describe_exit(c->dead_status, how, sizeof(how));
	if (c->state == CHILD_STOPPING && policy_classify(c) == EXIT_CLEAN)
		log_info("%s pid %d %s", child_name(c, name, sizeof(name)),
		    (int)c->dead_pid, how);
	else
		log_warnx("%s pid %d %s", child_name(c, name, sizeof(name)),
		    (int)c->dead_pid, how);
	reconcile_child(c);
}

/* Records a crash of kind k now; returns 1 if the kind must stop. */
static int
policy_count_crash(struct sup *sup, enum child_kind k)
{
	struct kind_state	*ks = &sup->kinds[k];
	int64_t			 now = clock_ms();
	int			 i, recent = 0;

	ks->deaths[ks->ndeaths++ % DEATH_RING] = now;
	if (sup->cfg.restart_intensity == 0)
		return 0;
	for (i = 0; i < DEATH_RING && i < ks->ndeaths; i++)
		if (now - ks->deaths[i] <= sup->cfg.restart_period)
			recent++;
	return recent > sup->cfg.restart_intensity;
}

static void
policy_storm(struct child *c)
{
	struct sup	*sup = c->sup;
	char		 subject[128], msg[256], details[128], name[32];
	const char	*params[6] = { "restart_storm", "critical", subject,
			    msg, details, sup->actor };
	int		 i;

	sup->kinds[c->kind].failed = 1;
	snprintf(subject, sizeof(subject), "node:%s/%s", sup->cfg.node_name,
	    child_kind_name(c->kind));
	snprintf(msg, sizeof(msg), "more than %d %s restarts in %d ms: not "
	    "restarting %ss until eavd is reloaded (SIGHUP)",
	    sup->cfg.restart_intensity, child_kind_name(c->kind),
	    sup->cfg.restart_period, child_kind_name(c->kind));
	snprintf(details, sizeof(details), "{\"kind\": \"%s\", "
	    "\"intensity\": %d, \"period_ms\": %d}", child_kind_name(c->kind),
	    sup->cfg.restart_intensity, sup->cfg.restart_period);
	log_error("%s: %s", child_name(c, name, sizeof(name)), msg);
	sdb_submit(sup->db, DB_ALARM_RAISE, params, NULL, NULL, 0);
	for (i = 0; i < MAX_CHILDREN; i++)
		if (sup->children[i].kind == c->kind &&
		    sup->children[i].state == CHILD_BACKOFF) {
			evtimer_del(sup->children[i].timer);
			child_set_state(&sup->children[i], CHILD_FAILED,
			    "restart storm");
			sdb_process_event(sup, &sup->children[i], "failed",
			    "restart intensity exceeded");
		}
}

/* Arms the restart timer of a dead slot. */
static void
policy_schedule(struct child *c, int delay_ms)
{
	struct timeval	tv = clock_tv(delay_ms);

	child_set_state(c, CHILD_BACKOFF, "restart scheduled");
	if (evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot add restart timer");
}

/* Steps 3 and 4, once the dead child's steps are reconciled. */
void
policy_after_reconcile(struct child *c)
{
	struct sup	*sup = c->sup;
	enum exit_class	 cls = policy_classify(c);
	char		 how[96], name[32];
	int		 asked = c->state == CHILD_STOPPING, delay;

	policy_describe_exit(c->dead_status, how, sizeof(how));
	if (sup->state == SUP_STOPPING || !c->in_use) {
		child_set_state(c, CHILD_DOWN, "not restarted");
		sdb_process_event(sup, c, "down", how);
		if (sup->state == SUP_STOPPING)
			sup_check_stopped(sup);
		return;
	}
	if (c->replace) {
		/* Rolling reload: the new process starts at once. */
		c->replace = 0;
		sdb_process_event(sup, c, "down", how);
		if (child_spawn(c) == -1)
			policy_schedule(c, sup->cfg.restart_backoff_min);
		return;
	}
	if (sup->replacing == c)
		sup->replacing = NULL;
	if (cls == EXIT_CONFIG) {
		log_error("%s has a configuration error; fix it and reload "
		    "eavd (SIGHUP)", child_name(c, name, sizeof(name)));
		child_set_state(c, CHILD_FAILED, "configuration error");
		sdb_process_event(sup, c, "failed", how);
		sup_reload_next(sup);
		return;
	}
	if (cls == EXIT_CRASH && policy_count_crash(sup, c->kind) &&
	    !sup->kinds[c->kind].failed)
		policy_storm(c);
	if (sup->kinds[c->kind].failed) {
		child_set_state(c, CHILD_FAILED, "kind failed");
		sdb_process_event(sup, c, "failed", how);
		sup_reload_next(sup);
		return;
	}
	if (clock_ms() - c->started_ms >= sup->cfg.restart_stable || asked)
		c->backoff_ms = sup->cfg.restart_backoff_min;
	delay = c->backoff_ms;
	if (cls == EXIT_CRASH || cls == EXIT_DB_LOST) {
		c->backoff_ms *= 2;
		if (c->backoff_ms > sup->cfg.restart_backoff_max)
			c->backoff_ms = sup->cfg.restart_backoff_max;
	}
	c->restarts++;
	sdb_process_event(sup, c, "backoff", how);
	policy_schedule(c, delay);
	sup_reload_next(sup);
}

/* A reload gives failed kinds another chance. */
void
policy_reset_kinds(struct sup *sup)
{
	char		 subject[128];
	const char	*params[3] = { "restart_storm", subject, sup->actor };
	int		 i;

	for (i = 0; i < KIND_NKINDS; i++) {
		if (sup->kinds[i].failed) {
			log_notice("restarting %ss again after reload",
			    child_kind_name(i));
			/* The reload is the operator's answer to the alarm. */
			snprintf(subject, sizeof(subject), "node:%s/%s",
			    sup->cfg.node_name, child_kind_name(i));
			sdb_submit(sup->db, DB_ALARM_RESOLVE_SUBJECT, params,
			    NULL, NULL, 0);
		}
		memset(&sup->kinds[i], 0, sizeof(sup->kinds[i]));
	}
}
