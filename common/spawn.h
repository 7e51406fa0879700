/*
 * The one fork+exec recipe of eav (house style rule 14): used by eavd for
 * its children, and by the exec tool for the programs it runs.
 */
#ifndef EAV_COMMON_SPAWN_H
#define EAV_COMMON_SPAWN_H

#include <sys/types.h>
#include <sys/resource.h>

/* Descriptors for the child's stdin, stdout and stderr; -1 inherits. */
struct spawn_io {
	int	in;
	int	out;
	int	err;
};

/* Resource limits set just before exec (soft = hard); 0 leaves one. */
struct spawn_limits {
	rlim_t	cpu_s;
	rlim_t	as_bytes;
	rlim_t	nofile;
};

/* The byte a child waiting on go_fd needs before it may exec. */
#define SPAWN_GO	'g'

/* What failed in the child before exec, as it reports on err_fd. */
enum spawn_stage {
	SPAWN_SETPGID = 1,
	SPAWN_PDEATHSIG,
	SPAWN_DUP,
	SPAWN_RLIMIT,
	SPAWN_EXEC
};

/* The report a child writes on err_fd when it cannot exec. */
struct spawn_failure {
	int	stage;
	int	error;
};

/*
 * io NULL: inherit 0, 1, 2.  ctl_fd: becomes fd 3, or -1.  pdeathsig: 0
 * for none.  envp NULL: this environment.  new_pgrp: a process group of
 * its own.  go_fd: exec only after reading SPAWN_GO there, or -1.
 * err_fd: where a spawn_failure goes, or -1.  limits: NULL for none.
 */
struct spawn_opts {
	const struct spawn_io		*io;
	int				 ctl_fd;
	int				 pdeathsig;
	char *const			*envp;
	int				 new_pgrp;
	int				 go_fd;
	int				 err_fd;
	const struct spawn_limits	*limits;
};

pid_t		 spawn_child(const char *, char *const [],
		    const struct spawn_io *, int, int);
pid_t		 spawn_start(const char *, char *const [],
		    const struct spawn_opts *);
const char	*spawn_stage_name(int);

#endif
