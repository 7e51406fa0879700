/*
 * Injection points armed live in eav.inject_points.  A process subscribes
 * on its main connection (eav.inject_subscribe LISTENs and returns the
 * armed rows) and loads them again whenever NOTIFY eav_inject arrives.
 *
 * Before a database-armed point acts, its firing is taken and committed
 * through a second connection of its own: the main one may be inside a
 * transaction or waiting for a COMMIT at that moment (worker.mid_complete,
 * producer.after_task_before_ack), and a crash must not roll the count
 * back, or the next process would crash again for the same firing.  The
 * second connection exists only while something is armed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "db.h"
#include "inject.h"
#include "inject_db.h"
#include "log.h"

static struct db	 side;
static const char	*side_dsn;
static const char	*side_actor;

static int
inject_db_take(long long dbid, long long step)
{
	PGresult	*res = NULL;
	char		 id[24], st[24], appname[64];
	const char	*params[3] = { id, side_actor, st };
	int		 taken;

	if (!db_is_connected(&side)) {
		snprintf(appname, sizeof(appname), "eav-inject:%d",
		    (int)getpid());
		if (db_connect(&side, side_dsn, appname) == -1) {
			log_warnx("injection %lld not fired: cannot "
			    "connect: %s", dbid, side.errmsg);
			return 0;
		}
	}
	snprintf(id, sizeof(id), "%lld", dbid);
	snprintf(st, sizeof(st), "%lld", step);
	if (db_call(&side, DB_INJECT_TAKE, params, &res) != DB_OK) {
		log_warnx("injection %lld not fired: %s", dbid, side.errmsg);
		db_close(&side);
		return 0;
	}
	taken = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return taken;
}

/* Remembers how to reach the database for takes (strings must live on). */
void
inject_db_init(const char *dsn, const char *actor)
{
	side_dsn = dsn;
	side_actor = actor;
	inject_set_taker(inject_db_take);
}

/* Replaces the database-armed specs with the rows of a subscribe call. */
void
inject_db_load(PGresult *res)
{
	char	err[256];
	int	i, n = PQntuples(res);

	inject_clear_db();
	for (i = 0; i < n; i++) {
		if (inject_arm_db(strtoll(PQgetvalue(res, i, 0), NULL, 10),
		    PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
		    strtol(PQgetvalue(res, i, 3), NULL, 10),
		    strtoll(PQgetvalue(res, i, 4), NULL, 10),
		    PQgetisnull(res, i, 5) ? NULL : PQgetvalue(res, i, 5),
		    err, sizeof(err)) == -1)
			log_warnx("injection %s ignored: %s",
			    PQgetvalue(res, i, 0), err);
		else
			log_notice("injection %s armed: %s=%s",
			    PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
			    PQgetvalue(res, i, 2));
	}
	if (n == 0 && db_is_connected(&side))
		db_close(&side);
}

/*
 * Subscribes on an idle connection and loads what is armed for this kind
 * of process.  Returns the db_call status.
 */
enum db_status
inject_db_subscribe(struct db *db, const char *kind)
{
	PGresult	*res = NULL;
	const char	*params[1] = { kind };
	enum db_status	 st;

	db->inject_changed = 0;
	if ((st = db_call(db, DB_INJECT_SUBSCRIBE, params, &res)) != DB_OK)
		return st;
	inject_db_load(res);
	PQclear(res);
	return DB_OK;
}

/* Closes the side connection (at exit). */
void
inject_db_close(void)
{
	if (db_is_connected(&side))
		db_close(&side);
}
