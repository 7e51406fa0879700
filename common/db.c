/*
 * Every libpq result is checked against the status its statement expects,
 * classified by SQLSTATE and cleared on every path unless handed to the
 * caller (who then owns it and must PQclear it).  Errors are logged once,
 * here, with the statement name; callers decide what a status means.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "db.h"
#include "log.h"

struct db_stmt_def {
	const char	*name;
	const char	*sql;
	int		 nparams;
};

static const struct db_stmt_def stmts[DB_NSTMTS] = {
#define DB_STMT(id, sql, n) [id] = { #id, sql, n },
#include "db_stmts.def"
#undef DB_STMT
};

static enum db_status	db_prepare(struct db *, enum db_stmt);
static void		db_notice(void *, const char *);
static int		out_of_conn(struct db *);
static void		db_conn_values(const char **, const char *,
			    const char *);

/* True (with a message) when there is no connection to use. */
static int
out_of_conn(struct db *db)
{
	if (db->conn != NULL)
		return 0;
	snprintf(db->errmsg, sizeof(db->errmsg), "not connected");
	db->sqlstate[0] = '\0';
	return 1;
}

/* Returns the SQL text of a statement. */
const char *
db_stmt_sql(enum db_stmt s)
{
	return stmts[s].sql;
}

/* Returns the number of parameters of a statement. */
int
db_stmt_nparams(enum db_stmt s)
{
	return stmts[s].nparams;
}

/* Returns a status as a word for logs. */
const char *
db_status_name(enum db_status st)
{
	static const char *const names[] = { "ok", "retry", "connection lost",
	    "bad input", "refused", "fatal" };

	return names[st];
}

/* Server notices (e.g. pg_terminate_backend warnings) go to debug. */
static void
db_notice(void *arg, const char *msg)
{
	(void)arg;
	log_debug("postgres: %s", msg);
}

/*
 * Connection keywords: our defaults come first so that the DSN (expanded
 * in place of dbname) may override them; application_name comes last
 * because it identifies the process to reconciliation.  Keepalives and a
 * TCP user timeout make a silently dead peer an error in bounded time
 * rather than a call that blocks for hours.
 */
static const char *const conn_keys[] = { "connect_timeout", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "dbname", "application_name", "user", NULL };
#define CONN_DSN	6
#define CONN_APPNAME	7
#define CONN_USER	8

/* The role every connection of this process logs in as (sql/0021), or
 * NULL for the DSN's user; after "dbname", so it overrides the DSN's. */
static const char	*conn_user;

void
db_set_user(const char *user)
{
	conn_user = user;
}

static void
db_conn_values(const char **vals, const char *dsn, const char *appname)
{
	static const char *const defaults[] = { "10", "1", "5", "2", "3",
	    "10000" };
	size_t	i;

	for (i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
		vals[i] = defaults[i];
	vals[CONN_DSN] = dsn;
	vals[CONN_APPNAME] = appname;
	vals[CONN_USER] = conn_user;
	vals[CONN_USER + 1] = NULL;
}

/* Takes a connection that reached CONNECTION_OK. */
void
db_adopt(struct db *db, PGconn *conn)
{
	db->conn = conn;
	memset(db->prepared, 0, sizeof(db->prepared));
	PQsetNoticeProcessor(db->conn, db_notice, NULL);
	db->backend_pid = PQbackendPID(db->conn);
}

/* Starts a non-blocking connection (PQconnectPoll drives it). */
PGconn *
db_connect_start(const char *dsn, const char *appname)
{
	const char	*vals[CONN_USER + 2];

	db_conn_values(vals, dsn, appname);
	return PQconnectStartParams(conn_keys, vals, 1);
}

/* Connects, blocking.  Returns 0, or -1 with the reason in db->errmsg. */
int
db_connect(struct db *db, const char *dsn, const char *appname)
{
	const char	*vals[CONN_USER + 2];
	PGconn		*conn;

	db_close(db);
	snprintf(db->appname, sizeof(db->appname), "%s", appname);
	db_conn_values(vals, dsn, appname);
	conn = PQconnectdbParams(conn_keys, vals, 1);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
		snprintf(db->errmsg, sizeof(db->errmsg), "%s",
		    conn ? PQerrorMessage(conn) : "out of memory");
		db->errmsg[strcspn(db->errmsg, "\n")] = '\0';
		PQfinish(conn);
		return -1;
	}
	db_adopt(db, conn);
	return 0;
}

/* Closes the connection and forgets prepared statements. */
void
db_close(struct db *db)
{
	if (db->conn != NULL)
		PQfinish(db->conn);
	db->conn = NULL;
	memset(db->prepared, 0, sizeof(db->prepared));
}

/* True if a connection is open and not known to be broken. */
int
db_is_connected(const struct db *db)
{
	return db->conn != NULL && PQstatus(db->conn) == CONNECTION_OK;
}

/*
 * Classifies a result (or NULL); logs failures at the appropriate level.
 * The result is not cleared.
 */
enum db_status
db_classify(struct db *db, const PGresult *res, const char *what)
{
	ExecStatusType	 st;
	const char	*state, *msg;

	st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
		db->sqlstate[0] = '\0';
		db->errmsg[0] = '\0';
		return DB_OK;
	}
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	if (msg == NULL)
		msg = PQerrorMessage(db->conn);
	snprintf(db->sqlstate, sizeof(db->sqlstate), "%s",
	    state ? state : "");
	snprintf(db->errmsg, sizeof(db->errmsg), "%s", msg);
	db->errmsg[strcspn(db->errmsg, "\n")] = '\0';

	if (PQstatus(db->conn) == CONNECTION_BAD || state == NULL ||
	    strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
	    strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0) {
		log_warnx("%s: connection lost: %s", what, db->errmsg);
		return DB_CONN_LOST;
	}
	/* Serialization, deadlock, lock or statement time-out, cancel. */
	if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
	    strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0) {
		log_info("%s: will retry: %s", what, db->errmsg);
		return DB_RETRY;
	}
	if (strncmp(state, "EA", 2) == 0) {
		log_debug("%s: refused: %s (%s)", what, db->errmsg, state);
		return DB_REFUSED;
	}
	if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
	    strncmp(state, "54", 2) == 0) {
		log_debug("%s: bad input: %s (%s)", what, db->errmsg, state);
		return DB_BADINPUT;
	}
	log_error("%s failed: %s (%s)", what, db->errmsg, state);
	return DB_FATAL;
}

static enum db_status
db_prepare(struct db *db, enum db_stmt s)
{
	PGresult	*res;
	enum db_status	 st;

	if (db->prepared[s])
		return DB_OK;
	res = PQprepare(db->conn, stmts[s].name, stmts[s].sql,
	    stmts[s].nparams, NULL);
	st = db_classify(db, res, stmts[s].name);
	PQclear(res);
	if (st == DB_OK)
		db->prepared[s] = 1;
	return st;
}

/*
 * Runs a statement with its parameters.  With out != NULL and DB_OK, the
 * result is handed over and the caller must PQclear it.
 */
enum db_status
db_call(struct db *db, enum db_stmt s, const char *const *params,
    PGresult **out)
{
	enum db_status	 st;

	if ((st = db_send(db, s, params)) != DB_OK)
		return st;
	return db_finish(db, s, out);
}

/* Sends a prepared statement without waiting for its result. */
enum db_status
db_send(struct db *db, enum db_stmt s, const char *const *params)
{
	enum db_status	 st;

	if (out_of_conn(db))
		return DB_CONN_LOST;
	if ((st = db_prepare(db, s)) != DB_OK)
		return st;
	if (!PQsendQueryPrepared(db->conn, stmts[s].name, stmts[s].nparams,
	    params, NULL, NULL, 0))
		return db_classify(db, NULL, stmts[s].name);
	return DB_OK;
}

/*
 * Sends a statement unprepared (one round trip, no PQprepare), for a
 * non-blocking connection that cannot wait for a prepare.
 */
enum db_status
db_send_params(struct db *db, enum db_stmt s, const char *const *params)
{
	if (out_of_conn(db))
		return DB_CONN_LOST;
	if (!PQsendQueryParams(db->conn, stmts[s].sql, stmts[s].nparams,
	    NULL, params, NULL, NULL, 0))
		return db_classify(db, NULL, stmts[s].name);
	return DB_OK;
}

/*
 * A statement's rows arrive before its transaction commits (at Sync): a
 * backend that dies in between leaves a good-looking result, then an
 * error or a closed connection.  Only a result followed by a live
 * connection counts; anything after it that is not a success wins.
 */
static PGresult *
db_last_word(struct db *db, PGresult *res)
{
	PGresult	*extra;
	ExecStatusType	 es;

	while ((extra = PQgetResult(db->conn)) != NULL) {
		es = PQresultStatus(extra);
		if (es == PGRES_TUPLES_OK || es == PGRES_COMMAND_OK)
			PQclear(extra);
		else {
			PQclear(res);
			res = extra;
		}
	}
	if (PQstatus(db->conn) == CONNECTION_BAD) {
		PQclear(res);
		return NULL;
	}
	return res;
}

/* Waits for the result of what db_send sent; see db_call for out. */
enum db_status
db_finish(struct db *db, enum db_stmt s, PGresult **out)
{
	PGresult	*res;
	enum db_status	 st;

	res = db_last_word(db, PQgetResult(db->conn));
	st = db_classify(db, res, stmts[s].name);
	if (st == DB_OK && out != NULL)
		*out = res;
	else
		PQclear(res);
	return st;
}

/*
 * Runs a fixed command (BEGIN, COMMIT, LISTEN x) given as a literal by the
 * db_exec() macro: never data.
 */
enum db_status
db_exec_literal(struct db *db, const char *literal)
{
	PGresult	*res;
	enum db_status	 st;

	if (out_of_conn(db))
		return DB_CONN_LOST;
	res = PQexecParams(db->conn, literal, 0, NULL, NULL, NULL, NULL, 0);
	if (PQstatus(db->conn) == CONNECTION_BAD) {
		PQclear(res);
		res = NULL;
	}
	st = db_classify(db, res, literal);
	PQclear(res);
	return st;
}

/*
 * Reads pending notifications and returns how many wake-ups they were; a
 * change of the armed injections only sets db->inject_changed, one of
 * the kill switches db->kill_changed, one of the schedules
 * db->sched_changed, one of the watchers db->watch_changed.
 */
int
db_drain_notifies(struct db *db)
{
	PGnotify	*n;
	int		 count = 0;

	if (db->conn == NULL)
		return 0;
	while ((n = PQnotifies(db->conn)) != NULL) {
		if (strcmp(n->relname, "eav_inject") == 0)
			db->inject_changed = 1;
		else if (strcmp(n->relname, "eav_kill_switch") == 0)
			db->kill_changed = 1;
		else if (strcmp(n->relname, "eav_schedules") == 0)
			db->sched_changed = 1;
		else if (strcmp(n->relname, "eav_watchers") == 0)
			db->watch_changed = 1;
		else
			count++;
		PQfreemem(n);
	}
	return count;
}
