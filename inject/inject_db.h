/*
 * Live injection from eav.inject_points: see inject_db.c.
 */
#ifndef EAV_INJECT_INJECT_DB_H
#define EAV_INJECT_INJECT_DB_H

#include <libpq-fe.h>

#include "db.h"

void		inject_db_init(const char *, const char *, long long, int);
void		inject_db_load(PGresult *);
int		inject_db_subscribe(struct db *, const char *);
void		inject_db_close(void);

#endif
