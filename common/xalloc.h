/*
 * Allocation wrappers that cannot fail silently: on overflow or OOM they
 * log and exit, so ordinary code has no NULL-check ladders.
 */
#ifndef EAV_COMMON_XALLOC_H
#define EAV_COMMON_XALLOC_H

#include <stddef.h>

void	*xmalloc(size_t);
void	*xcalloc(size_t, size_t);
void	*xreallocarray(void *, size_t, size_t);
char	*xstrdup(const char *);
char	*xasprintf(const char *, ...)
	    __attribute__((format(printf, 1, 2)));

#endif
