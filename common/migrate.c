/*
 * Applies the embedded migrations that the database lacks, in order, in
 * one transaction holding a transaction-level advisory lock, and records
 * each in eav.schema_migrations.  Two processes migrating at once
 * serialize on the lock; the second finds nothing left to do.  Re-running
 * is a no-op.  Migration files hold several statements, so they go through
 * the simple-query protocol: their text is part of the binary, never data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "db.h"
#include "log.h"
#include "migrate.h"

/* hashtext('eav.migrate') would do, but a constant is readable in pg_locks. */
#define MIGRATE_LOCK_KEY "4242000001"

static int	migrate_script(struct db *, const struct migration *);
static int	migrate_applied(struct db *, int);
static int	migrate_fail(struct db *, const char *);

static int
migrate_fail(struct db *db, const char *what)
{
	log_error("migration failed: %s: %s", what, db->errmsg);
	(void)db_exec(db, "ROLLBACK");
	return -1;
}

/* Runs one migration file; returns 0 or -1. */
static int
migrate_script(struct db *db, const struct migration *m)
{
	PGresult	*res;
	enum db_status	 st = DB_OK, r;

	if (!PQsendQuery(db->conn, m->sql))
		return db_classify(db, NULL, m->name) == DB_OK ? 0 : -1;
	while ((res = PQgetResult(db->conn)) != NULL) {
		r = db_classify(db, res, m->name);
		if (st == DB_OK)
			st = r;
		PQclear(res);
	}
	return st == DB_OK ? 0 : -1;
}

/* Returns 1 if version is recorded, 0 if not, -1 on error. */
static int
migrate_applied(struct db *db, int version)
{
	PGresult	*res;
	char		 v[16];
	const char	*p[1] = { v };
	int		 found;

	snprintf(v, sizeof(v), "%d", version);
	res = PQexecParams(db->conn, "SELECT 1 FROM eav.schema_migrations"
	    " WHERE version = $1::integer", 1, NULL, p, NULL, NULL, 0);
	if (db_classify(db, res, "schema_migrations") != DB_OK) {
		PQclear(res);
		return -1;
	}
	found = PQntuples(res) > 0;
	PQclear(res);
	return found;
}

/*
 * Brings the schema up to date.  Sets *applied to the number of
 * migrations run.  Returns 0, or -1 (rolled back) with db->errmsg set.
 */
int
migrate_apply(struct db *db, int *applied)
{
	PGresult	*res;
	char		 v[16];
	const char	*p[2];
	int		 i, r;

	*applied = 0;
	if (db_exec(db, "BEGIN") != DB_OK)
		return -1;
	if (db_exec(db, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")")
	    != DB_OK ||
	    db_exec(db, "CREATE SCHEMA IF NOT EXISTS eav") != DB_OK ||
	    db_exec(db, "CREATE TABLE IF NOT EXISTS eav.schema_migrations ("
	    " version integer PRIMARY KEY, name text NOT NULL,"
	    " applied_at timestamptz NOT NULL DEFAULT now())") != DB_OK)
		return migrate_fail(db, "schema_migrations");
	for (i = 0; i < eav_migration_count; i++) {
		const struct migration *m = &eav_migrations[i];

		if ((r = migrate_applied(db, m->version)) == -1)
			return migrate_fail(db, m->name);
		if (r == 1)
			continue;
		if (migrate_script(db, m) == -1)
			return migrate_fail(db, m->name);
		snprintf(v, sizeof(v), "%d", m->version);
		p[0] = v;
		p[1] = m->name;
		res = PQexecParams(db->conn, "INSERT INTO eav.schema_migrations"
		    " (version, name) VALUES ($1::integer, $2)", 2, NULL, p,
		    NULL, NULL, 0);
		r = db_classify(db, res, m->name);
		PQclear(res);
		if (r != DB_OK)
			return migrate_fail(db, m->name);
		log_info("applied migration %s", m->name);
		(*applied)++;
	}
	/*
	 * Grants (sql/0021) at every start, not only after a migration:
	 * roles an administrator created since then get theirs too.
	 */
	if (db_exec(db, "DO $$ BEGIN IF to_regprocedure("
	    "'eav.privileges_apply()') IS NOT NULL THEN PERFORM "
	    "eav.privileges_apply(); END IF; END $$") != DB_OK)
		return migrate_fail(db, "privileges");
	if (db_exec(db, "COMMIT") != DB_OK)
		return -1;
	return 0;
}
