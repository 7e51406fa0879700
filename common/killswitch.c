/*
 * Observing the kill switches; see killswitch.h.
 */
#include <stdio.h>
#include <stdlib.h>

#include "killswitch.h"
#include "log.h"

void
kill_view_init(struct kill_view *k)
{
	k->seen = -1;
	k->stopped_all = 0;
}

/* Parameters of DB_KILL_OBSERVE; buf holds the generation's text. */
void
kill_params(const struct kill_view *k, const char *actor, char *buf,
    size_t len, const char *params[2])
{
	snprintf(buf, len, "%lld", k->seen);
	params[0] = actor;
	params[1] = k->seen < 0 ? NULL : buf;
}

/*
 * Takes in a DB_KILL_OBSERVE result.  Returns 1 if the global switch was
 * released (the caller has work to wake), else 0.
 */
int
kill_view_apply(struct kill_view *k, const PGresult *res)
{
	long long	 gen = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	int		 all = PQgetvalue(res, 0, 1)[0] == 't';
	const char	*scopes = PQgetvalue(res, 0, 2);
	int		 released = k->stopped_all && !all;

	if (gen != k->seen && (k->seen >= 0 || *scopes != '\0')) {
		if (*scopes != '\0')
			log_warnx("kill switch (generation %lld) engaged: %s",
			    gen, scopes);
		else
			log_notice("kill switches released (generation %lld)",
			    gen);
	}
	k->seen = gen;
	k->stopped_all = all;
	return released;
}

/* The blocking form, for the worker and the producer. */
enum db_status
kill_observe(struct db *db, const char *actor, struct kill_view *k)
{
	PGresult	*res = NULL;
	const char	*params[2];
	char		 buf[24];
	enum db_status	 st;

	db->kill_changed = 0;
	kill_params(k, actor, buf, sizeof(buf), params);
	if ((st = db_call(db, DB_KILL_OBSERVE, params, &res)) != DB_OK)
		return st;
	(void)kill_view_apply(k, res);
	PQclear(res);
	return DB_OK;
}
