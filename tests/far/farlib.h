/*
 * What the test far sides that record in PostgreSQL share (recorder,
 * mcpd): fatal errors, JSON field access, an atomic pidfile, and the one
 * statement that records a delivery and (idempotent far side) its effect.
 */
#ifndef EAV_TESTS_FAR_FARLIB_H
#define EAV_TESTS_FAR_FARLIB_H

#include <jansson.h>
#include <libpq-fe.h>

/* Prefix of far_die's messages: the program's name. */
extern const char	*far_prog;

void		 far_die(const char *, ...) __attribute__((noreturn,
		    format(printf, 1, 2)));
long long	 far_num(json_t *, const char *, long long);
const char	*far_str(json_t *, const char *, const char *);
void		 far_write_pidfile(const char *, const char *);
int		 far_record(PGconn *, const char *, const char *,
		    const char *, int);

#endif
