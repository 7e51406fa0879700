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

struct spawn_opts {
	const struct spawn_io		*io;	/* NULL: inherit 0, 1, 2 */
	int				 ctl_fd;	/* becomes fd 3, or -1 */
	int				 pdeathsig;	/* 0: none */
	char *const			*envp;	/* NULL: this environment */
	int				 new_pgrp;	/* own process group */
	int				 go_fd;	/* exec only after a byte, or -1 */
	int				 err_fd;	/* spawn_failure, or -1 */
	const struct spawn_limits	*limits;	/* NULL: none */
};

pid_t		 spawn_child(const char *, char *const [],
		    const struct spawn_io *, int, int);
pid_t		 spawn_start(const char *, char *const [],
		    const struct spawn_opts *);
const char	*spawn_stage_name(int);

#endif
