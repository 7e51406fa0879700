/*
 * libpq wrapper shared by every process: connect with an identifying
 * application_name, call the statements of db_stmts.def by enum (prepared
 * lazily, once per connection), and classify every failure.
 */
#ifndef EAV_COMMON_DB_H
#define EAV_COMMON_DB_H

#include <stdint.h>

#include <libpq-fe.h>

enum db_stmt {
#define DB_STMT(id, sql, n) id,
#include "db_stmts.def"
#undef DB_STMT
	DB_NSTMTS
};

enum db_status {
	DB_OK,
	DB_RETRY,	/* deadlock, serialization, time-out: try again */
	DB_CONN_LOST,	/* connection broken or server shutting down */
	DB_BADINPUT,	/* the caller's data was refused (22, 23, 54xxx) */
	DB_REFUSED,	/* eav refused the transition (EAxxx) */
	DB_FATAL	/* anything else: a bug or a broken database */
};

struct db {
	PGconn		*conn;
	char		 appname[64];
	uint8_t		 prepared[DB_NSTMTS];
	int		 backend_pid;
	char		 sqlstate[6];
	char		 errmsg[1024];
	int		 inject_changed;	/* NOTIFY eav_inject seen */
	int		 kill_changed;	/* NOTIFY eav_kill_switch seen */
	int		 sched_changed;	/* NOTIFY eav_schedules seen */
	int		 watch_changed;	/* NOTIFY eav_watchers seen */
};

void		 db_set_user(const char *);
int		 db_connect(struct db *, const char *, const char *);
PGconn		*db_connect_start(const char *, const char *);
void		 db_adopt(struct db *, PGconn *);
void		 db_close(struct db *);
int		 db_is_connected(const struct db *);
enum db_status	 db_call(struct db *, enum db_stmt, const char *const *,
		    PGresult **);
enum db_status	 db_send(struct db *, enum db_stmt, const char *const *);
enum db_status	 db_send_params(struct db *, enum db_stmt,
		    const char *const *);
enum db_status	 db_finish(struct db *, enum db_stmt, PGresult **);
enum db_status	 db_exec_literal(struct db *, const char *);
enum db_status	 db_classify(struct db *, const PGresult *, const char *);
int		 db_drain_notifies(struct db *);
const char	*db_stmt_sql(enum db_stmt);
int		 db_stmt_nparams(enum db_stmt);
const char	*db_status_name(enum db_status);

/* Only a string literal compiles here, so no data can become SQL. */
#define db_exec(db, literal)	db_exec_literal((db), "" literal "")

#endif
