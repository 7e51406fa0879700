/*
 * Programs run by the worker's tools and the producer's probes (see
 * toolproc.h): their config, their
 * environment, their spawn, their end, and the bytes they write.
 *
 * Invariants:
 *  - A program sees only descriptors 0, 1 and 2 and only the environment
 *    it is given: the config's allowlist, read from our environment, plus
 *    what its tool adds.  Never EAV_DSN or a database password: those
 *    names are refused in SQL and skipped again here.
 *  - A program runs in a process group of its own, and eavd is told of
 *    the group ("tool+ <pgid>" on fd 3) before the program may exec (it
 *    waits on a "go" pipe); if eavd cannot be told, it never execs.
 *  - When a program ends, whatever it left in its group is SIGKILLed while
 *    its zombie still pins the group id (so the id cannot belong to anyone
 *    else yet); only then is "tool- <pgid>" sent and the zombie reaped.
 *  - The children of a process that calls toolproc_init are all its
 *    programs: every one of them is on the list below from its spawn to
 *    its reap, and a child that is not is reaped with a warning.
 */
#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "log.h"
#include "toolproc.h"
#include "xalloc.h"

#define TP_NPIPES	5	/* stdin, stdout, stderr, failure, go */

TAILQ_HEAD(toolprocs, toolproc);

/* File-wide: the atexit handler must find the live programs. */
static struct toolprocs	procs = TAILQ_HEAD_INITIALIZER(procs);
/* Where eavd hears of process groups ("tool+"/"tool-" lines). */
static int		ctl_fd = -1;

static int	tool_conf_argv(json_t *, struct tool_conf *);
static void	tool_conf_limits(json_t *, struct spawn_limits *);
static int	tool_env_refused(const char *);
static int	toolproc_pipes(int [TP_NPIPES][2]);
static void	toolproc_pipes_close(int [TP_NPIPES][2]);
static void	toolproc_release(struct toolproc *, int);
static struct toolproc *toolproc_by_pid(pid_t);
static void	toolproc_sigchld_cb(evutil_socket_t, short, void *);
static void	toolproc_atexit(void);
static int	toolproc_ctl_send(const char *, pid_t);
static size_t	utf8_len(const unsigned char *, size_t);

/* Kills the groups of programs still running when the worker exits. */
static void
toolproc_atexit(void)
{
	struct toolproc	*p;

	TAILQ_FOREACH(p, &procs, entry)
		(void)killpg(p->pid, SIGKILL);
}

/*
 * Watches SIGCHLD on base (the programs must be the caller's only
 * children) and announces process groups to eavd on fd.  Returns the
 * SIGCHLD event, which the caller frees.
 */
struct event *
toolproc_init(struct event_base *base, int fd)
{
	struct event	*ev;

	ctl_fd = fd;
	ev = evsignal_new(base, SIGCHLD, toolproc_sigchld_cb, NULL);
	if (ev == NULL || evsignal_add(ev, NULL) == -1)
		fatalx("cannot add the SIGCHLD event");
	if (atexit(toolproc_atexit) != 0)
		fatalx("cannot register the programs' exit handler");
	return ev;
}

/* Tells eavd "<what> <pgid>"; 0, or -1 if it cannot hear us. */
static int
toolproc_ctl_send(const char *what, pid_t pgid)
{
	char	line[64];
	int	len;
	ssize_t	r;

	len = snprintf(line, sizeof(line), "%s %d\n", what, (int)pgid);
	while ((r = write(ctl_fd, line, (size_t)len)) == -1 && errno == EINTR)
		;
	return r == len ? 0 : -1;
}

/* Reads argv from a config; -1 if it is unusable. */
static int
tool_conf_argv(json_t *argv, struct tool_conf *c)
{
	json_t	*v;
	size_t	 i;

	if (!json_is_array(argv) || json_array_size(argv) == 0)
		return -1;
	c->argv = xcalloc(json_array_size(argv) + 1, sizeof(char *));
	json_array_foreach(argv, i, v) {
		if (!json_is_string(v))
			return -1;
		c->argv[i] = xstrdup(json_string_value(v));
	}
	return c->argv[0][0] == '/' ? 0 : -1;
}

/* Reads the optional rlimits of a config; 0 leaves a limit alone. */
static void
tool_conf_limits(json_t *rl, struct spawn_limits *l)
{
	json_int_t	v;

	memset(l, 0, sizeof(*l));
	if ((v = json_integer_value(json_object_get(rl, "cpu_s"))) > 0)
		l->cpu_s = (rlim_t)v;
	if ((v = json_integer_value(json_object_get(rl, "as_mb"))) > 0)
		l->as_bytes = (rlim_t)v * 1048576;
	if ((v = json_integer_value(json_object_get(rl, "nofile"))) > 0)
		l->nofile = (rlim_t)v;
}

/*
 * Reads the fields every program tool has from a parsed config (checked
 * by SQL when it was registered; checked again, since a row can be
 * changed by hand).  Returns 0, or -1 with err set.
 */
int
tool_conf_parse(json_t *cfg, struct tool_conf *c, char *err, size_t len)
{
	json_int_t	max;

	memset(c, 0, sizeof(*c));
	if (tool_conf_argv(json_object_get(cfg, "argv"), c) == -1) {
		snprintf(err, len, "the tool's config has no usable argv");
		tool_conf_free(c);
		return -1;
	}
	c->env = json_incref(json_object_get(cfg, "env"));
	max = json_integer_value(json_object_get(cfg, "max_output_bytes"));
	c->max_output = max > 0 && max <= TOOL_OUTPUT_MAX ? (size_t)max :
	    TOOL_OUTPUT_DEFAULT;
	tool_conf_limits(json_object_get(cfg, "rlimits"), &c->limits);
	return 0;
}

/* Frees a NULL-terminated array of strings. */
void
tool_strv_free(char **v)
{
	size_t	i;

	if (v == NULL)
		return;
	for (i = 0; v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

/* Frees what tool_conf_parse allocated. */
void
tool_conf_free(struct tool_conf *c)
{
	tool_strv_free(c->argv);
	json_decref(c->env);
	memset(c, 0, sizeof(*c));
}

/* eav's own variables and database passwords never reach a program. */
static int
tool_env_refused(const char *name)
{
	return strncasecmp(name, "EAV_", 4) == 0 ||
	    strcasecmp(name, "PGPASSWORD") == 0 ||
	    strcasecmp(name, "PGPASSFILE") == 0;
}

/*
 * The allowlisted names that are set in our environment, with room for
 * extra more entries after the *n filled ones (and the NULL).  who
 * prefixes the warning about a refused name.  The caller frees it.
 */
char **
tool_env(json_t *names, size_t extra, const char *who, size_t *n)
{
	char		**envp = xcalloc(TOOL_MAX_ENV + extra + 1,
			    sizeof(char *));
	const char	 *name, *val;
	json_t		 *v;
	size_t		  i;

	*n = 0;
	json_array_foreach(names, i, v) {
		if ((name = json_string_value(v)) == NULL ||
		    *n >= TOOL_MAX_ENV)
			continue;
		if (tool_env_refused(name)) {
			log_warnx("%s: not passing %s to the program (never "
			    "passed to a tool)", who, name);
			continue;
		}
		if ((val = getenv(name)) != NULL)
			envp[(*n)++] = xasprintf("%s=%s", name, val);
	}
	return envp;
}

/* stdin, stdout, stderr, the failure pipe and the go pipe. */
static int
toolproc_pipes(int p[TP_NPIPES][2])
{
	int	i, saved;

	for (i = 0; i < TP_NPIPES; i++)
		p[i][0] = p[i][1] = -1;
	for (i = 0; i < TP_NPIPES; i++) {
		if (pipe2(p[i], O_CLOEXEC) == -1) {
			saved = errno;
			toolproc_pipes_close(p);
			errno = saved;
			return -1;
		}
	}
	return 0;
}

/* Closes the pipe ends toolproc_pipes made that are still open. */
static void
toolproc_pipes_close(int p[TP_NPIPES][2])
{
	int	i, j;

	for (i = 0; i < TP_NPIPES; i++)
		for (j = 0; j < 2; j++)
			if (p[i][j] != -1) {
				close(p[i][j]);
				p[i][j] = -1;
			}
}

/*
 * Tells eavd the new process group, then lets the program exec; if eavd
 * cannot be told, the program exits before exec (it reads EOF).
 */
static void
toolproc_release(struct toolproc *p, int go)
{
	const char	byte = SPAWN_GO;

	if (toolproc_ctl_send("tool+", p->pid) == 0) {
		p->announced = 1;
		if (write(go, &byte, 1) != 1)
			p->withdrawn = 1;
	} else
		p->withdrawn = 1;
	close(go);
}

/*
 * Forks the program of conf with environment envp, in a process group of
 * its own, releases it (withdrawn is set if it may not exec) and puts it
 * on the list of live programs.  Fills everything in p but exited and
 * arg.  Returns 0, or -1 with errno set if it could not be forked.
 */
int
toolproc_spawn(struct toolproc *p, const struct tool_conf *conf,
    char *const envp[])
{
	int			 pp[TP_NPIPES][2], i, saved;
	struct spawn_io		 io;
	struct spawn_opts	 o;

	p->pid = 0;
	p->announced = p->withdrawn = p->reaped = p->status = 0;
	for (i = 0; i < TP_NFDS; i++)
		p->fds[i] = -1;
	if (toolproc_pipes(pp) == -1)
		return -1;
	io.in = pp[0][0];
	io.out = pp[1][1];
	io.err = pp[2][1];
	memset(&o, 0, sizeof(o));
	o.io = &io;
	o.ctl_fd = -1;
	o.pdeathsig = SIGKILL;
	o.envp = envp;
	o.new_pgrp = 1;
	o.go_fd = pp[4][0];
	o.err_fd = pp[3][1];
	o.limits = &conf->limits;
	if ((p->pid = spawn_start(conf->argv[0], conf->argv, &o)) == -1) {
		saved = errno;
		p->pid = 0;
		toolproc_pipes_close(pp);
		errno = saved;
		return -1;
	}
	p->fds[TP_IN] = pp[0][1];
	p->fds[TP_OUT] = pp[1][0];
	p->fds[TP_ERR] = pp[2][0];
	p->fds[TP_FAIL] = pp[3][0];
	pp[0][1] = pp[1][0] = pp[2][0] = pp[3][0] = -1;
	for (i = 0; i < TP_NFDS; i++)
		if (fcntl(p->fds[i], F_SETFL, O_NONBLOCK) == -1)
			fatal("fcntl");
	TAILQ_INSERT_TAIL(&procs, p, entry);
	toolproc_release(p, pp[4][1]);
	pp[4][1] = -1;
	toolproc_pipes_close(pp);
	return 0;
}

/* Sends sig to the program's whole group, unless it is reaped. */
void
toolproc_kill(struct toolproc *p, int sig)
{
	if (p->reaped || p->pid <= 0)
		return;
	if (killpg(p->pid, sig) == -1 && errno != ESRCH)
		log_warn("killpg %d", (int)p->pid);
}

/* The live program with this pid, or NULL. */
static struct toolproc *
toolproc_by_pid(pid_t pid)
{
	struct toolproc	*p;

	TAILQ_FOREACH(p, &procs, entry)
		if (p->pid == pid)
			return p;
	return NULL;
}

/*
 * SIGCHLD: for each program that ended, kill what it left in its group
 * while its zombie still holds the group id, tell eavd the group is
 * gone, reap it, and tell its owner.
 */
static void
toolproc_sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
	struct toolproc	*p;
	siginfo_t	 si;
	int		 status;

	(void)sig;
	(void)what;
	(void)arg;
	for (;;) {
		memset(&si, 0, sizeof(si));
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == -1) {
			if (errno == EINTR)
				continue;
			if (errno == ECHILD)
				return;
			fatal("waitid");
		}
		if (si.si_pid == 0)
			return;
		if ((p = toolproc_by_pid(si.si_pid)) != NULL) {
			(void)killpg(p->pid, SIGKILL);
			if (p->announced)
				(void)toolproc_ctl_send("tool-", p->pid);
		}
		while (waitpid(si.si_pid, &status, 0) == -1)
			if (errno != EINTR)
				fatal("waitpid");
		if (p == NULL) {
			log_warnx("reaped unknown child pid %d",
			    (int)si.si_pid);
			continue;
		}
		TAILQ_REMOVE(&procs, p, entry);
		p->reaped = 1;
		p->status = status;
		if (p->exited != NULL)
			p->exited(p);
	}
}

/*
 * One read from a pipe of a program: > 0 bytes read, 0 at its end (or
 * an error: the pipe is closed either way), -1 when nothing is there yet.
 */
ssize_t
tool_read(int fd, void *buf, size_t len)
{
	ssize_t	n;

	while ((n = read(fd, buf, len)) == -1 && errno == EINTR)
		;
	if (n == -1 && errno == EAGAIN)
		return -1;
	return n < 0 ? 0 : n;
}

/* Length of the valid UTF-8 sequence at s (RFC 3629), or 0. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
	size_t	need, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		need = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		need = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		need = 4;
	else
		return 0;
	if (n < need)
		return 0;
	for (i = 1; i < need; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	/* Overlong forms, surrogates, and beyond U+10FFFF. */
	if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
	    (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
		return 0;
	return need;
}

/* Drops an incomplete UTF-8 sequence at the end of s (a cut string). */
void
tool_utf8_trim(char *s)
{
	size_t	n = strlen(s), i = n;

	while (i > 0 && n - i < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
		i--;
	if (i > 0 && (unsigned char)s[i - 1] >= 0xc0 &&
	    utf8_len((const unsigned char *)s + i - 1, n - i + 1) == 0)
		s[i - 1] = '\0';
}

/*
 * A program's bytes made fit for a log line and a text column: valid
 * UTF-8 is kept, control characters and invalid bytes become \xNN (a
 * newline \n).  The caller frees the result.
 */
char *
tool_clean(const char *in, size_t n)
{
	const unsigned char	*p = (const unsigned char *)in;
	char			*out = xmalloc(n * 4 + 1), *o = out;
	size_t			 i = 0, k;

	while (i < n) {
		if (p[i] == '\n') {
			memcpy(o, "\\n", 2);
			o += 2;
			i++;
		} else if (p[i] >= 0x20 && p[i] < 0x7f)
			*o++ = (char)p[i++];
		else if (p[i] >= 0x80 && (k = utf8_len(p + i, n - i)) > 0) {
			memcpy(o, p + i, k);
			o += k;
			i += k;
		} else {
			snprintf(o, 5, "\\x%02x", p[i++]);
			o += 4;
		}
	}
	*o = '\0';
	return out;
}
