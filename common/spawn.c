/*
 * fork+exec with no window for surprises: all signals are blocked around
 * fork so no handler runs in the child before it resets them; the child
 * asks to die with its parent (and checks the parent did not die first,
 * since PR_SET_PDEATHSIG only covers deaths after the call); the control
 * descriptor lands on fd 3 and every other descriptor above 2 is closed.
 * Any failure in the child is _exit(127): it never returns into parent
 * code.
 */
#include <sys/prctl.h>
#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "spawn.h"

static void	spawn_exec(const char *, char *const [],
		    const struct spawn_io *, int, int, pid_t)
		    __attribute__((noreturn));
static int	spawn_dup(int, int);

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

static void
spawn_exec(const char *path, char *const argv[], const struct spawn_io *io,
    int ctl_fd, int pdeathsig, pid_t parent)
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
		_exit(127);
	if (pdeathsig != 0 && prctl(PR_SET_PDEATHSIG, pdeathsig) == -1)
		_exit(127);
	if (getppid() != parent)
		_exit(127);
	if (io != NULL && (spawn_dup(io->in, STDIN_FILENO) == -1 ||
	    spawn_dup(io->out, STDOUT_FILENO) == -1 ||
	    spawn_dup(io->err, STDERR_FILENO) == -1))
		_exit(127);
	if (spawn_dup(ctl_fd, 3) == -1)
		_exit(127);
	closefrom(ctl_fd >= 0 ? 4 : 3);
	execv(path, argv);
	_exit(127);
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
	sigset_t	all, old;
	pid_t		pid, parent = getpid();
	int		saved;

	sigfillset(&all);
	if (sigprocmask(SIG_BLOCK, &all, &old) == -1)
		return -1;
	pid = fork();
	if (pid == 0)
		spawn_exec(path, argv, io, ctl_fd, pdeathsig, parent);
	saved = errno;
	(void)sigprocmask(SIG_SETMASK, &old, NULL);
	errno = saved;
	return pid;
}
