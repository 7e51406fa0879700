/*
 * The one fork+exec recipe of eav (house style rule 14): used by eavd for
 * its children, and by tools that run programs.
 */
#ifndef EAV_COMMON_SPAWN_H
#define EAV_COMMON_SPAWN_H

#include <sys/types.h>

/* Descriptors for the child's stdin, stdout and stderr; -1 inherits. */
struct spawn_io {
	int	in;
	int	out;
	int	err;
};

pid_t	spawn_child(const char *, char *const [], const struct spawn_io *,
	    int, int);

#endif
