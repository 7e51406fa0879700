/*
 * Injection points armed live in eav.inject_points.  A process LISTENs on
 * eav_inject, then loads the armed rows (eav.inject_armed), and loads them
 * again whenever a NOTIFY says they changed: armed, disarmed, used up.
 *
 * Before a database-armed point acts, a worker or producer takes its
 * firing and commits it through a second connection of its own: the main
 * one may be inside a transaction or waiting for a COMMIT at that moment
 * (worker.mid_complete, producer.after_task_before_ack), and a crash must
 * not roll the count back, or the next process would crash again for the
 * same firing.  The second connection exists only while something is
 * armed for this process.  eavd, which must not block, takes its firings
 * through its asynchronous channel instead (supervisor/sdb.c).
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
#include "xalloc.h"

static struct db	 side;
static char		*side_dsn;
static char		*side_actor;
static char		*side_appname;
static int		 side_armed;	/* database specs loaded */

/* The taker of workers and producers: 1 taken, 0 used up, -1 error. */
static int
inject_db_take(long long dbid, long long step)
{
	PGresult	*res = NULL;
	char		 id[24], st[24];
	const char	*params[3] = { id, side_actor, st };
	int		 taken;

	if (!db_is_connected(&side) &&
	    db_connect(&side, side_dsn, side_appname) == -1) {
		log_warnx("injection %lld not fired: cannot connect: %s",
		    dbid, side.errmsg);
		return -1;
	}
	snprintf(id, sizeof(id), "%lld", dbid);
	snprintf(st, sizeof(st), "%lld", step);
	if (db_call(&side, DB_INJECT_TAKE, params, &res) != DB_OK) {
		log_warnx("injection %lld not fired: %s", dbid, side.errmsg);
		db_close(&side);
		return -1;
	}
	taken = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return taken;
}

/*
 * Remembers how to reach the database for takes: the DSN, the actor
 * audited for each firing, and the second connection's application_name
 * (eav-inject:<incarnation>:<pid>, which the invariant checker knows).
 * With take 0 (eavd) no taker is installed.
 */
void
inject_db_init(const char *dsn, const char *actor, long long incarnation,
    int take)
{
	char	appname[64];

	inject_db_close();
	snprintf(appname, sizeof(appname), "eav-inject:%lld:%d", incarnation,
	    (int)getpid());
	side_dsn = xstrdup(dsn);
	side_actor = xstrdup(actor);
	side_appname = xstrdup(appname);
	if (take)
		inject_set_taker(inject_db_take);
}

/* Replaces the database-armed specs with the rows of eav.inject_armed. */
void
inject_db_load(PGresult *res)
{
	char	err[256];
	int	i, n = PQntuples(res);

	inject_clear_db();
	side_armed = 0;
	for (i = 0; i < n; i++) {
		if (inject_arm_db(strtoll(PQgetvalue(res, i, 0), NULL, 10),
		    PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
		    strtol(PQgetvalue(res, i, 3), NULL, 10),
		    strtoll(PQgetvalue(res, i, 4), NULL, 10),
		    PQgetisnull(res, i, 5) ? NULL : PQgetvalue(res, i, 5),
		    err, sizeof(err)) == -1) {
			log_warnx("injection %s ignored: %s",
			    PQgetvalue(res, i, 0), err);
			continue;
		}
		side_armed++;
		log_notice("injection %s armed: %s=%s", PQgetvalue(res, i, 0),
		    PQgetvalue(res, i, 1), PQgetvalue(res, i, 2));
	}
	if (side_armed == 0 && db_is_connected(&side))
		db_close(&side);
}

/*
 * LISTENs, then loads what is armed for this kind of process, on an idle
 * connection.  Failing for another reason than the connection is no
 * reason to drop it (the outcomes it must deliver matter more): the load
 * is tried again at the next wake-up.  Returns -1 if the connection was
 * lost, else 0.
 */
int
inject_db_subscribe(struct db *db, const char *kind)
{
	PGresult	*res = NULL;
	const char	*params[1] = { kind };
	enum db_status	 st;

	db->inject_changed = 0;
	if ((st = db_call(db, DB_INJECT_LISTEN, NULL, &res)) == DB_OK) {
		PQclear(res);
		st = db_call(db, DB_INJECT_ARMED, params, &res);
	}
	if (st == DB_CONN_LOST)
		return -1;
	if (st != DB_OK) {
		log_warnx("cannot load injections: %s", db->errmsg);
		db->inject_changed = 1;
		return 0;
	}
	inject_db_load(res);
	PQclear(res);
	return 0;
}

/* Closes the second connection and forgets the settings (at exit). */
void
inject_db_close(void)
{
	if (db_is_connected(&side))
		db_close(&side);
	free(side_dsn);
	free(side_actor);
	free(side_appname);
	side_dsn = side_actor = side_appname = NULL;
}
