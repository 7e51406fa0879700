/*
 * What every process knows of the kill switches (sql/0010).  The claim
 * and the producer's ingest enforce them in the database; a process only
 * learns of them, by NOTIFY eav_kill_switch, to stop asking while
 * everything is stopped, to wake when released, and to say in the audit
 * (kill_switch.observed) that it saw the change.
 */
#ifndef EAV_COMMON_KILLSWITCH_H
#define EAV_COMMON_KILLSWITCH_H

#include <libpq-fe.h>

#include "db.h"

struct kill_view {
	long long	seen;		/* generation observed; -1: none yet */
	int		stopped_all;	/* the global switch is engaged */
};

void		 kill_view_init(struct kill_view *);
void		 kill_params(const struct kill_view *, const char *,
		    char *, size_t, const char *[2]);
int		 kill_view_apply(struct kill_view *, const PGresult *);
enum db_status	 kill_observe(struct db *, const char *, struct kill_view *);

#endif
