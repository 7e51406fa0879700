/*
 * fork+exec with no window for surprises: all signals are blocked around
 * fork so no handler runs in the child before it resets them; the child
 * asks to die with its parent (and checks the parent did not die first,
 * since PR_SET_PDEATHSIG only covers deaths after the call); the control
 * descriptor lands on fd 3 and every other descriptor above 2 is closed.
 * Any failure in the child is _exit(127): it never returns into parent
 * code.
 *
 * For programs eav runs as tools there is more: an environment of the
 * caller's choosing, a process group of its own (so the whole group can
 * be killed), resource limits, a "go" pipe the child waits on before exec
 * (its parent can first make the group known to whoever must kill it)
 * and an error pipe on which a child that could not exec says why.
 */
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "spawn.h"

extern char **environ;

static void	spawn_exec(const char *, char *const [],
		    const struct spawn_opts *, pid_t)
		    __attribute__((noreturn));
static void	spawn_fail(const struct spawn_opts *, int)
		    __attribute__((noreturn));
static int	spawn_signals(const struct spawn_opts *, pid_t);
static int	spawn_fds(const struct spawn_opts *);
static void	spawn_close_others(const struct spawn_opts *);
static void	spawn_wait_go(int);
static int	spawn_limit(int, rlim_t);
static int	spawn_limits(const struct spawn_limits *);
static int	spawn_dup(int, int);

/* A name for a stage of spawn_failure, for messages. */
const char *
spawn_stage_name(int stage)
{
	switch (stage) {
	case SPAWN_SETPGID:
		return "setpgid";
	case SPAWN_PDEATHSIG:
		return "prctl";
	case SPAWN_DUP:
		return "dup2";
	case SPAWN_RLIMIT:
		return "setrlimit";
	case SPAWN_EXEC:
		return "execve";
	default:
		return "?";
	}
}

/* Puts fd on target (clearing close-on-exec); -1 leaves target alone. */
static int
spawn_dup(int fd, int target)
{
	if (fd < 0)
		return 0;
	if (fd == target)
		return fcntl(fd, F_SETFD, 0);
	return dup2(fd, target) == -1 ? -1 : 0;
}

/* Reports why the child cannot exec (if anyone listens), then dies. */
static void
spawn_fail(const struct spawn_opts *o, int stage)
{
	struct spawn_failure	f;

	f.stage = stage;
	f.error = errno;
	/* A pipe write this small is atomic; if it fails, the parent still
	 * sees exit code 127. */
	if (o->err_fd >= 0 && write(o->err_fd, &f, sizeof(f)) == -1)
		_exit(127);
	_exit(127);
}

/*
 * Default signal dispositions and mask, an own process group if asked,
 * and death with the parent.  Returns 0, or the failed stage.
 */
static int
spawn_signals(const struct spawn_opts *o, pid_t parent)
{
	struct sigaction	sa;
	sigset_t		none;
	int			sig;

	sa.sa_handler = SIG_DFL;
	sa.sa_flags = 0;
	sigemptyset(&sa.sa_mask);
	for (sig = 1; sig < NSIG; sig++)
		(void)sigaction(sig, &sa, NULL);
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) == -1)
		return SPAWN_PDEATHSIG;
	if (o->new_pgrp && setpgid(0, 0) == -1)
		return SPAWN_SETPGID;
	if (o->pdeathsig != 0 && prctl(PR_SET_PDEATHSIG, o->pdeathsig) == -1)
		return SPAWN_PDEATHSIG;
	/* The parent died before prctl: nobody would send the signal. */
	if (getppid() != parent)
		_exit(127);
	return 0;
}

/* Standard descriptors and fd 3; 0, or -1. */
static int
spawn_fds(const struct spawn_opts *o)
{
	if (o->io != NULL && (spawn_dup(o->io->in, STDIN_FILENO) == -1 ||
	    spawn_dup(o->io->out, STDOUT_FILENO) == -1 ||
	    spawn_dup(o->io->err, STDERR_FILENO) == -1))
		return -1;
	return spawn_dup(o->ctl_fd, 3);
}

/*
 * Closes every descriptor above the ones the program gets, except the
 * error pipe (close-on-exec: it closes when exec succeeds, which is how
 * the parent learns of the success).
 */
static void
spawn_close_others(const struct spawn_opts *o)
{
	int	lowest = o->ctl_fd >= 0 ? 4 : 3, fd;

	if (o->err_fd < lowest) {
		closefrom(lowest);
		return;
	}
	for (fd = lowest; fd < o->err_fd; fd++)
		(void)close(fd);
	closefrom(o->err_fd + 1);
}

/* Sets one limit, never above the hard limit we have (that would fail). */
static int
spawn_limit(int resource, rlim_t value)
{
	struct rlimit	rl;

	if (value == 0)
		return 0;
	if (getrlimit(resource, &rl) == -1)
		return -1;
	if (rl.rlim_max != RLIM_INFINITY && value > rl.rlim_max)
		value = rl.rlim_max;
	rl.rlim_cur = rl.rlim_max = value;
	return setrlimit(resource, &rl);
}

/* Sets the limits asked for; 0, or -1 with errno set. */
static int
spawn_limits(const struct spawn_limits *l)
{
	if (l == NULL)
		return 0;
	if (spawn_limit(RLIMIT_CPU, l->cpu_s) == -1 ||
	    spawn_limit(RLIMIT_AS, l->as_bytes) == -1 ||
	    spawn_limit(RLIMIT_NOFILE, l->nofile) == -1)
		return -1;
	return 0;
}

/* Waits for the parent's go; without it (EOF) nothing may run. */
static void
spawn_wait_go(int fd)
{
	ssize_t	n;
	char	go = 0;

	while ((n = read(fd, &go, 1)) == -1 && errno == EINTR)
		;
	if (n != 1 || go != SPAWN_GO)
		_exit(127);
}

/* The child's side: everything in the header's order, then exec. */
static void
spawn_exec(const char *path, char *const argv[], const struct spawn_opts *o,
    pid_t parent)
{
	int	stage;

	if ((stage = spawn_signals(o, parent)) != 0)
		spawn_fail(o, stage);
	if (spawn_fds(o) == -1)
		spawn_fail(o, SPAWN_DUP);
	if (o->go_fd >= 0)
		spawn_wait_go(o->go_fd);
	spawn_close_others(o);
	if (spawn_limits(o->limits) == -1)
		spawn_fail(o, SPAWN_RLIMIT);
	execve(path, argv, o->envp != NULL ? o->envp : environ);
	spawn_fail(o, SPAWN_EXEC);
}

/*
 * Starts path with argv as o says.  Returns the child's pid, or -1 with
 * errno set.  With new_pgrp the parent sets the group too, so that it
 * exists as soon as this returns, whoever runs first.
 */
pid_t
spawn_start(const char *path, char *const argv[], const struct spawn_opts *o)
{
	sigset_t	all, old;
	pid_t		pid, parent = getpid();
	int		saved;

	sigfillset(&all);
	if (sigprocmask(SIG_BLOCK, &all, &old) == -1)
		return -1;
	pid = fork();
	if (pid == 0)
		spawn_exec(path, argv, o, parent);
	saved = errno;
	if (pid > 0 && o->new_pgrp)
		(void)setpgid(pid, pid);
	(void)sigprocmask(SIG_SETMASK, &old, NULL);
	errno = saved;
	return pid;
}

/*
 * Starts path with argv; io (or NULL) gives its standard descriptors,
 * ctl_fd (or -1) becomes its fd 3, and pdeathsig (or 0) is sent to it when
 * this process dies.  Returns the child's pid, or -1 with errno set.
 */
pid_t
spawn_child(const char *path, char *const argv[], const struct spawn_io *io,
    int ctl_fd, int pdeathsig)
{
	struct spawn_opts	o = { io, ctl_fd, pdeathsig, NULL, 0, -1, -1,
				    NULL };

	return spawn_start(path, argv, &o);
}
