/*
 * The child table: a fixed array of slots (workers 0..MAX_WORKERS-1, then
 * the producer), spawn, readiness and reaping.  A slot's pid is 0 unless
 * its state is STARTING, UP or STOPPING.  Reaping only records the death
 * and hands it to policy.c; it never restarts anything itself.
 *
 * A worker tells us on fd 3 the process group of every program it runs
 * for an exec tool, and the producer of every watcher probe ("tool+
 * <pgid>" before the program may exec, "tool- <pgid>" once it is over).
 * When the child dies, the lines it left unread are read, and every
 * group still listed is SIGKILLed before its steps are reconciled: an
 * interrupted call must be dead before any retry of it can start
 * (shared/reliability.md A.7 rule 7).
 */
#include <sys/socket.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "log.h"
#include "spawn.h"
#include "supervisor.h"
#include "xalloc.h"

static void	child_ctl_cb(evutil_socket_t, short, void *);
static void	child_line(struct child *, const char *);
static void	child_tool_line(struct child *, const char *);
static void	child_ctl_feed(struct child *, const char *, size_t);
static void	child_ctl_drain(struct child *);
static void	child_kill_tools(struct child *);
static void	child_tools_reset(struct child *);
static void	child_deadline_cb(evutil_socket_t, short, void *);
static void	child_close_ctl(struct child *);
static struct child *child_by_pid(struct sup *, pid_t);

static const char *const kind_names[] = { "worker", "producer" };
static const char *const state_names[] = { "down", "starting", "up",
    "stopping", "backoff", "failed" };

/* Returns the name of a kind, as eav.processes spells it. */
const char *
child_kind_name(enum child_kind k)
{
	return kind_names[k];
}

/* Returns the name of a state, as eav.processes spells it. */
const char *
child_state_name(enum child_state s)
{
	return state_names[s];
}

/* Formats "worker[3]" into buf. */
const char *
child_name(const struct child *c, char *buf, size_t len)
{
	snprintf(buf, len, "%s[%d]", kind_names[c->kind], c->slot);
	return buf;
}

/* Sets up every slot; the configured ones are marked in use. */
void
child_init_table(struct sup *sup)
{
	struct child	*c;
	int		 i;

	for (i = 0; i < MAX_CHILDREN; i++) {
		c = &sup->children[i];
		memset(c, 0, sizeof(*c));
		c->sup = sup;
		c->kind = i == PRODUCER_INDEX ? KIND_PRODUCER : KIND_WORKER;
		c->slot = i == PRODUCER_INDEX ? 0 : i;
		c->ctl_fd = -1;
		c->in_use = c->kind == KIND_PRODUCER || i < sup->cfg.workers;
		c->backoff_ms = sup->cfg.restart_backoff_min;
		c->timer = evtimer_new(sup->base, child_deadline_cb, c);
		if (c->timer == NULL)
			fatalx("cannot create child timer");
	}
}

/* Every state change goes through here, so the log tells the story. */
void
child_set_state(struct child *c, enum child_state st, const char *why)
{
	char	name[32];

	if (c->state == st)
		return;
	log_debug("%s pid %d: %s -> %s%s%s", child_name(c, name,
	    sizeof(name)), (int)(c->pid ? c->pid : c->dead_pid),
	    state_names[c->state], state_names[st], why ? ": " : "",
	    why ? why : "");
	c->state = st;
}

static void
child_close_ctl(struct child *c)
{
	if (c->ctl_ev != NULL) {
		event_free(c->ctl_ev);
		c->ctl_ev = NULL;
	}
	if (c->ctl_fd != -1) {
		close(c->ctl_fd);
		c->ctl_fd = -1;
	}
	c->linelen = 0;
}

/*
 * Sizes a worker's list of tool process groups for its concurrency and
 * its MCP servers, and the producer's for its watcher probes: at spawn,
 * since the crash path must not allocate.
 */
static void
child_tools_reset(struct child *c)
{
	if (c->kind == KIND_WORKER) {
		c->maxtools = c->sup->cfg.worker_concurrency +
		    2 * EAV_TOOL_SERVERS_MAX;
		c->tools = xreallocarray(c->tools, (size_t)c->maxtools,
		    sizeof(pid_t));
	} else if (c->kind == KIND_PRODUCER) {
		c->maxtools = EAV_PRODUCER_PROBES_MAX;
		c->tools = xreallocarray(c->tools, (size_t)c->maxtools,
		    sizeof(pid_t));
	}
	c->ntools = 0;
}

/*
 * Spawns the slot's binary with its identity on argv and a control
 * socket on fd 3.  Returns 0, or -1 if the fork failed (the slot is then
 * handled like a child that died at once).
 */
int
child_spawn(struct child *c)
{
	struct sup	*sup = c->sup;
	char		 path[PATH_MAX + 32], inc[24], slot[16], name[32];
	char		*argv[12];
	struct timeval	 tv = clock_tv(sup->cfg.startup_timeout);
	int		 sv[2], n = 0;

	snprintf(path, sizeof(path), "%s/eav-%s", sup->exe_dir,
	    kind_names[c->kind]);
	snprintf(inc, sizeof(inc), "%lld", sup->incarnation);
	snprintf(slot, sizeof(slot), "%d", c->slot);
	argv[n++] = path;
	argv[n++] = "-n";
	argv[n++] = sup->cfg.node_name;
	argv[n++] = "-i";
	argv[n++] = inc;
	argv[n++] = "-s";
	argv[n++] = slot;
	if (c->kind == KIND_PRODUCER && sup->cfg.producer_demo)
		argv[n++] = "--demo";
	argv[n] = NULL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
		log_warn("%s: socketpair", child_name(c, name, sizeof(name)));
		return -1;
	}
	/* A worker whose supervisor died has nobody to reconcile it. */
	c->pid = spawn_child(path, argv, NULL, sv[1], SIGKILL);
	close(sv[1]);
	if (c->pid == -1) {
		log_warn("%s: cannot spawn %s", child_name(c, name,
		    sizeof(name)), path);
		c->pid = 0;
		close(sv[0]);
		return -1;
	}
	c->ctl_fd = sv[0];
	child_tools_reset(c);
	/* A few kB into an empty socket buffer: this write cannot block. */
	if (config_send(c->ctl_fd, &sup->cfg) == -1)
		log_warn("%s: cannot send the configuration",
		    child_name(c, name, sizeof(name)));
	if (fcntl(c->ctl_fd, F_SETFL, O_NONBLOCK) == -1)
		fatal("fcntl");
	c->ctl_ev = event_new(sup->base, c->ctl_fd, EV_READ | EV_PERSIST,
	    child_ctl_cb, c);
	if (c->ctl_ev == NULL || event_add(c->ctl_ev, NULL) == -1 ||
	    evtimer_add(c->timer, &tv) == -1)
		fatalx("cannot watch a child");
	c->started_ms = clock_ms();
	child_set_state(c, CHILD_STARTING, "spawned");
	log_info("%s started pid=%d", child_name(c, name, sizeof(name)),
	    (int)c->pid);
	sdb_process_event(sup, c, "starting", NULL);
	return 0;
}

/* A child that has not reported ready in time is killed (and reaped). */
static void
child_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct child	*c = arg;
	char		 name[32];

	(void)fd;
	(void)what;
	if (c->state == CHILD_STARTING) {
		log_warnx("%s pid %d did not report ready within %d ms; "
		    "killing it", child_name(c, name, sizeof(name)),
		    (int)c->pid, c->sup->cfg.startup_timeout);
		child_kill(c);
	} else if (c->state == CHILD_BACKOFF && c->sup->state != SUP_STOPPING &&
	    child_spawn(c) == -1) {
		c->dead_pid = 0;
		c->dead_status = 127 << 8;
		policy_after_reconcile(c);
	}
}

/* "tool+ <pgid>" or "tool- <pgid>" from a worker. */
static void
child_tool_line(struct child *c, const char *line)
{
	char		 name[32], *end;
	long long	 pg;
	int		 i;

	errno = 0;
	pg = strtoll(line + 6, &end, 10);
	/* Never a group that is not the worker's program's: not 0 (ours),
	 * not init's, not our own. */
	if (line[5] != ' ' || *end != '\0' || errno != 0 || pg <= 1 ||
	    pg > INT_MAX || (pid_t)pg == getpgrp()) {
		log_warnx("%s pid %d sent a bad line on fd 3: %.60s",
		    child_name(c, name, sizeof(name)), (int)c->pid, line);
		return;
	}
	if (line[4] == '+' && c->ntools < c->maxtools) {
		c->tools[c->ntools++] = (pid_t)pg;
		return;
	}
	if (line[4] == '+') {
		log_warnx("%s pid %d runs more programs than it may; "
		    "not tracking group %lld", child_name(c, name,
		    sizeof(name)), (int)c->pid, pg);
		return;
	}
	for (i = 0; i < c->ntools; i++)
		if (c->tools[i] == (pid_t)pg) {
			c->tools[i] = c->tools[--c->ntools];
			return;
		}
}

static void
child_line(struct child *c, const char *line)
{
	char	name[32];

	if (strncmp(line, "tool+ ", 6) == 0 ||
	    strncmp(line, "tool- ", 6) == 0) {
		child_tool_line(c, line);
		return;
	}
	/* Lines a dead child left behind: only its tool groups matter. */
	if (c->pid == 0)
		return;
	if (strcmp(line, "ready") != 0) {
		log_warnx("%s pid %d sent an unknown line on fd 3: %.60s",
		    child_name(c, name, sizeof(name)), (int)c->pid, line);
		return;
	}
	if (c->state != CHILD_STARTING)
		return;
	evtimer_del(c->timer);
	child_set_state(c, CHILD_UP, "ready");
	sdb_process_event(c->sup, c, "up", NULL);
	if (c->sup->replacing == c)
		c->sup->replacing = NULL;
	/*
	 * Not only a replacement: a rolling reload also waits for children
	 * that were still starting when it began.
	 */
	sup_reload_next(c->sup);
	sup_check_ready(c->sup);
}

/* Splits what a child wrote into lines. */
static void
child_ctl_feed(struct child *c, const char *buf, size_t n)
{
	char	*nl;
	size_t	 i;

	for (i = 0; i < n; i++) {
		if (c->linelen < sizeof(c->line) - 1)
			c->line[c->linelen++] = buf[i];
		if (buf[i] != '\n')
			continue;
		c->line[c->linelen] = '\0';
		if ((nl = strchr(c->line, '\n')) != NULL)
			*nl = '\0';
		c->linelen = 0;
		child_line(c, c->line);
	}
}

/* Reads readiness and tool lines; EOF is left to SIGCHLD. */
static void
child_ctl_cb(evutil_socket_t fd, short what, void *arg)
{
	struct child	*c = arg;
	char		 buf[128];
	ssize_t		 n;

	(void)what;
	n = read(fd, buf, sizeof(buf));
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		event_del(c->ctl_ev);
		return;
	}
	child_ctl_feed(c, buf, (size_t)n);
}

/* Reads what a dead child wrote and we had not read yet. */
static void
child_ctl_drain(struct child *c)
{
	char	buf[512];
	ssize_t	n;

	if (c->ctl_fd == -1)
		return;
	while ((n = read(c->ctl_fd, buf, sizeof(buf))) > 0 ||
	    (n == -1 && errno == EINTR))
		if (n > 0)
			child_ctl_feed(c, buf, (size_t)n);
}

/* SIGKILLs the process groups of a dead worker's exec calls. */
static void
child_kill_tools(struct child *c)
{
	char	name[32];
	int	i;

	for (i = 0; i < c->ntools; i++) {
		if (killpg(c->tools[i], SIGKILL) == 0)
			log_notice("%s pid %d: killed process group %d of its "
			    "tool (exec program, MCP server or watcher probe)",
			    child_name(c, name, sizeof(name)),
			    (int)c->dead_pid, (int)c->tools[i]);
		else if (errno != ESRCH)
			log_warn("killpg %d", (int)c->tools[i]);
	}
	c->ntools = 0;
}

static struct child *
child_by_pid(struct sup *sup, pid_t pid)
{
	int	i;

	for (i = 0; i < MAX_CHILDREN; i++)
		if (sup->children[i].pid == pid)
			return &sup->children[i];
	return NULL;
}

/* SIGCHLD: reap every dead child and hand each to the policy. */
void
child_reap_all(struct sup *sup)
{
	struct child	*c;
	pid_t		 pid;
	int		 status;

	for (;;) {
		pid = waitpid(-1, &status, WNOHANG);
		if (pid == 0)
			return;
		if (pid == -1) {
			if (errno == EINTR)
				continue;
			if (errno == ECHILD)
				return;
			fatal("waitpid");
		}
		if ((c = child_by_pid(sup, pid)) == NULL) {
			log_warnx("reaped unknown child pid %d", (int)pid);
			continue;
		}
		evtimer_del(c->timer);
		c->dead_pid = pid;
		c->dead_status = status;
		c->pid = 0;
		child_ctl_drain(c);
		child_kill_tools(c);
		child_close_ctl(c);
		policy_child_exited(c);
	}
}

/*
 * Asks a child to finish its work and exit.  The stop is recorded once,
 * so eav.processes (and its audit) shows a rolling reload's order.
 */
void
child_stop(struct child *c)
{
	if (c->pid == 0)
		return;
	if (kill(c->pid, SIGTERM) == -1 && errno != ESRCH)
		log_warn("kill %d", (int)c->pid);
	if (c->state == CHILD_STOPPING)
		return;
	child_set_state(c, CHILD_STOPPING, "asked to stop");
	sdb_process_event(c->sup, c, "stopping", NULL);
}

/* Kills a child at once. */
void
child_kill(struct child *c)
{
	if (c->pid != 0 && kill(c->pid, SIGKILL) == -1 && errno != ESRCH)
		log_warn("kill %d", (int)c->pid);
}

/* Writes the live pids as an integer[] literal; returns how many. */
int
child_live_pids(struct sup *sup, char *buf, size_t len)
{
	size_t	off;
	int	i, n = 0;

	off = (size_t)snprintf(buf, len, "{");
	for (i = 0; i < MAX_CHILDREN && off < len; i++) {
		if (sup->children[i].pid == 0)
			continue;
		off += (size_t)snprintf(buf + off, len - off, "%s%d",
		    n ? "," : "", (int)sup->children[i].pid);
		n++;
	}
	if (off < len)
		snprintf(buf + off, len - off, "}");
	return n;
}

/* Counts children that have a process. */
int
child_count_live(struct sup *sup)
{
	int	i, n = 0;

	for (i = 0; i < MAX_CHILDREN; i++)
		if (sup->children[i].pid != 0)
			n++;
	return n;
}
