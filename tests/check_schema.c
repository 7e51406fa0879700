/*
 * Schema: the embedded migrations applied by migrate_apply (twice is the
 * same as once, and two processes migrating at once apply them exactly
 * once), a COMMENT on every object of schema eav, and the append-only
 * audit log.
 */
#include <sys/types.h>
#include <sys/wait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "db.h"
#include "harness.h"
#include "log.h"
#include "migrate.h"

static void	migrate_once(const char *, int *);
static char	*fingerprint(PGconn *);
static pid_t	migrate_child(const char *);
static char	*audit_rows(PGconn *);

/*
 * Everything a migration defines in schema eav, as one md5: columns with
 * types and defaults, relations with their comments, functions, views,
 * constraints, indexes, triggers, and the seed rows.
 */
static const char *const fingerprint_sql =
    "SELECT md5(string_agg(d, E'\\n' ORDER BY d)) FROM ("
    " SELECT format('col %s.%s %s %s %s %s', c.relname, a.attname,"
    "  format_type(a.atttypid, a.atttypmod), a.attnotnull,"
    "  pg_get_expr(ad.adbin, ad.adrelid), col_description(c.oid, a.attnum))"
    "  AS d"
    " FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
    "  AND a.attnum > 0 AND NOT a.attisdropped"
    " LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum"
    " WHERE c.relnamespace = 'eav'::regnamespace AND c.relkind IN"
    "  ('r', 'p', 'v', 'm')"
    " UNION ALL SELECT format('rel %s %s %s', c.relname, c.relkind,"
    "  obj_description(c.oid, 'pg_class')) FROM pg_class c"
    " WHERE c.relnamespace = 'eav'::regnamespace"
    " UNION ALL SELECT 'fn ' || pg_get_functiondef(p.oid) ||"
    "  coalesce(obj_description(p.oid, 'pg_proc'), '') FROM pg_proc p"
    " WHERE p.pronamespace = 'eav'::regnamespace"
    " UNION ALL SELECT 'view ' || c.relname || pg_get_viewdef(c.oid)"
    " FROM pg_class c WHERE c.relnamespace = 'eav'::regnamespace"
    "  AND c.relkind = 'v'"
    " UNION ALL SELECT format('con %s %s %s', k.conrelid::regclass,"
    "  k.conname, pg_get_constraintdef(k.oid)) FROM pg_constraint k"
    " WHERE k.connamespace = 'eav'::regnamespace"
    " UNION ALL SELECT 'idx ' || pg_get_indexdef(i.indexrelid)"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE c.relnamespace = 'eav'::regnamespace"
    " UNION ALL SELECT 'trg ' || pg_get_triggerdef(t.oid) FROM pg_trigger t"
    " JOIN pg_class c ON c.oid = t.tgrelid"
    " WHERE c.relnamespace = 'eav'::regnamespace AND NOT t.tgisinternal"
    " UNION ALL SELECT 'settings ' || string_agg(s::text, ',' ORDER BY name)"
    " FROM eav.settings s"
    " UNION ALL SELECT 'queues ' || string_agg(name, ',' ORDER BY name)"
    " FROM eav.queues"
    " UNION ALL SELECT 'tools ' || string_agg(name || config::text, ','"
    "  ORDER BY name) FROM eav.tools"
    " UNION ALL SELECT 'accounts ' || string_agg(id || balance, ','"
    "  ORDER BY id) FROM eav.ledger_accounts"
    ") x";

/*
 * The first object of schema eav without a comment (NULL if none), and
 * how many objects were looked at.
 */
static const char *const uncommented_sql =
    "WITH o AS ("
    " SELECT 0 AS k, 'schema eav' AS what,"
    "  obj_description(n.oid, 'pg_namespace') AS d"
    " FROM pg_namespace n WHERE n.nspname = 'eav'"
    " UNION ALL SELECT 1, CASE WHEN c.relkind IN ('v', 'm') THEN 'view '"
    "  ELSE 'table ' END || 'eav.' || quote_ident(c.relname),"
    "  obj_description(c.oid, 'pg_class')"
    " FROM pg_class c WHERE c.relnamespace = 'eav'::regnamespace"
    "  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " UNION ALL SELECT 2, 'column eav.' || quote_ident(c.relname) || '.' ||"
    "  quote_ident(a.attname), col_description(c.oid, a.attnum)"
    " FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
    "  AND a.attnum > 0 AND NOT a.attisdropped"
    " WHERE c.relnamespace = 'eav'::regnamespace"
    "  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " UNION ALL SELECT 3, 'function eav.' || quote_ident(p.proname) || '(' ||"
    "  pg_get_function_identity_arguments(p.oid) || ')',"
    "  obj_description(p.oid, 'pg_proc')"
    " FROM pg_proc p WHERE p.pronamespace = 'eav'::regnamespace"
    ") SELECT (SELECT what FROM o WHERE coalesce(btrim(d), '') = ''"
    "  ORDER BY k, what LIMIT 1),"
    " (SELECT count(*) FROM o)";

/* Connects to dsn and migrates; fails the test on an error. */
static void
migrate_once(const char *dsn, int *applied)
{
	struct db	d;

	memset(&d, 0, sizeof(d));
	ck_assert_msg(db_connect(&d, dsn, "check_schema") == 0, "connect: %s",
	    d.errmsg);
	ck_assert_msg(migrate_apply(&d, applied) == 0, "migrate: %s",
	    d.errmsg);
	db_close(&d);
}

/* md5 of the schema's definition; the caller frees it. */
static char *
fingerprint(PGconn *c)
{
	char	*fp = th_str(c, fingerprint_sql, 0);

	ck_assert_ptr_nonnull(fp);
	return fp;
}

/* Migrates an empty database twice: the second run changes nothing. */
START_TEST(test_migrate_twice_is_once)
{
	struct th_db	 db, ref;
	char		*fp1, *fp2, *fpref;
	int		 applied;

	log_level = LOG_LVL_WARNING;
	th_db_empty(&db);
	migrate_once(db.dsn, &applied);
	ck_assert_int_eq(applied, eav_migration_count);
	ck_assert_int_ge(eav_migration_count, 3);
	fp1 = fingerprint(db.conn);

	migrate_once(db.dsn, &applied);
	ck_assert_int_eq(applied, 0);
	fp2 = fingerprint(db.conn);
	ck_assert_str_eq(fp1, fp2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.schema_migrations", 0), eav_migration_count);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(DISTINCT version) FROM "
	    "eav.schema_migrations WHERE version BETWEEN 1 AND $1::int", 1,
	    "9999"), eav_migration_count);

	/* eavctl migrate (the template) built the same schema. */
	th_db_new(&ref);
	fpref = fingerprint(ref.conn);
	ck_assert_str_eq(fp1, fpref);
	free(fp1);
	free(fp2);
	free(fpref);
	th_db_free(&ref);
	th_db_free(&db);
}
END_TEST

/* Forks a process that migrates dsn; its exit code is the count applied
 * (99 on failure). */
static pid_t
migrate_child(const char *dsn)
{
	struct db	d;
	pid_t		pid;
	int		applied;

	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid != 0)
		return pid;
	memset(&d, 0, sizeof(d));
	if (db_connect(&d, dsn, "check_schema_child") == -1 ||
	    migrate_apply(&d, &applied) == -1)
		_exit(99);
	db_close(&d);
	_exit(applied);
}

/*
 * Two processes migrate the same empty database at once.  The test holds
 * the migration lock until both are waiting for it, so they really race.
 */
START_TEST(test_migrate_concurrent)
{
	struct th_db	 db;
	PGresult	*res;
	pid_t		 pid[2];
	int		 st[2], i, waiting, total = 0;

	log_level = LOG_LVL_WARNING;
	th_db_empty(&db);
	res = th_exec(db.conn, "SELECT pg_advisory_lock(4242000001)", 0);
	PQclear(res);
	for (i = 0; i < 2; i++)
		pid[i] = migrate_child(db.dsn);
	waiting = th_wait(db.conn, TH_TIMEOUT_MS, "SELECT count(*) = 2 FROM "
	    "pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
	    "database = (SELECT oid FROM pg_database WHERE datname = "
	    "current_database())", 0);
	res = th_exec(db.conn, "SELECT pg_advisory_unlock(4242000001)", 0);
	PQclear(res);
	for (i = 0; i < 2; i++) {
		st[i] = th_waitpid(pid[i], 60000);
		ck_assert_msg(st[i] != -1 && WIFEXITED(st[i]) &&
		    WEXITSTATUS(st[i]) != 99, "migrating process %d failed", i);
		total += WEXITSTATUS(st[i]);
	}
	ck_assert_msg(waiting, "both processes did not wait for the lock");
	ck_assert_int_eq(total, eav_migration_count);
	ck_assert(WEXITSTATUS(st[0]) == 0 || WEXITSTATUS(st[1]) == 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.schema_migrations", 0), eav_migration_count);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tools "
	    "WHERE name = 'noop'", 0), 1);
	th_db_free(&db);
}
END_TEST

/* Every table, view, column and function of schema eav has a comment. */
START_TEST(test_everything_commented)
{
	struct th_db	 db;
	PGresult	*res;

	th_db_new(&db);
	res = th_exec(db.conn, uncommented_sql, 0);
	ck_assert_msg(PQgetisnull(res, 0, 0), "%s has no COMMENT",
	    PQgetvalue(res, 0, 0));
	ck_assert_int_ge(atoi(PQgetvalue(res, 0, 1)), 200);
	PQclear(res);

	/* The check does find a missing comment, and names it. */
	res = th_exec(db.conn, "CREATE TABLE eav.zz_probe (x integer)", 0);
	PQclear(res);
	res = th_exec(db.conn, "COMMENT ON TABLE eav.zz_probe IS 'probe'", 0);
	PQclear(res);
	res = th_exec(db.conn, uncommented_sql, 0);
	ck_assert_str_eq(PQgetvalue(res, 0, 0), "column eav.zz_probe.x");
	PQclear(res);
	th_db_free(&db);
}
END_TEST

/* Every audit row as text; the caller frees it. */
static char *
audit_rows(PGconn *c)
{
	char	*rows = th_str(c, "SELECT count(*) || ':' || "
	    "md5(string_agg(a::text, ',' ORDER BY id)) FROM eav.audit_events a",
	    0);

	ck_assert_ptr_nonnull(rows);
	return rows;
}

static const char *const audit_changes[] = {
	"UPDATE eav.audit_events SET actor = 'mallory'",
	"UPDATE eav.audit_events SET payload = '{}' WHERE id = (SELECT max(id) "
	    "FROM eav.audit_events)",
	"DELETE FROM eav.audit_events",
	"DELETE FROM eav.audit_events WHERE type = 'test.first'",
	"TRUNCATE eav.audit_events",
};

/* UPDATE, DELETE and TRUNCATE of eav.audit_events fail with EA009. */
/* FM-022 */
START_TEST(test_audit_append_only)
{
	struct th_db	 db;
	PGresult	*res;
	const char	*err;
	char		*before, *after;

	th_db_new(&db);
	res = th_exec(db.conn, "SELECT eav.audit('test.first', 'success', "
	    "'test', NULL, NULL, NULL, '{\"n\": 1}'), eav.audit('test.second', "
	    "'failure', 'test', NULL, NULL, NULL)", 0);
	PQclear(res);
	before = audit_rows(db.conn);
	ck_assert_int_ge(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events", 0), 2);

	err = th_err(db.conn, audit_changes[_i], 0);
	ck_assert_msg(strncmp(err, "EA009: ", 7) == 0, "%s: %s",
	    audit_changes[_i], err);
	ck_assert_ptr_nonnull(strstr(err, "append-only"));
	after = audit_rows(db.conn);
	ck_assert_str_eq(before, after);
	free(before);
	free(after);
	th_db_free(&db);
}
END_TEST

/*
 * A statement's rows reach the client before its transaction commits: a
 * backend that dies in between (here during a deferred trigger at
 * commit) leaves a good-looking result, then the connection's end.  That
 * is a lost connection, whose outcome is unknown, never a success.
 */
/* FM-059 */
START_TEST(test_result_then_backend_death)
{
	struct th_db	 db;
	struct db	 d;
	PGresult	*res = NULL;
	const char	*params[6] = { "fm059", NULL, NULL, NULL, NULL,
			    "test" };
	char		 pid[16];

	th_db_new(&db);
	PQclear(th_exec(db.conn, "CREATE FUNCTION public.slow_commit() "
	    "RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM "
	    "pg_sleep(60); RETURN NULL; END $$", 0));
	PQclear(th_exec(db.conn, "CREATE CONSTRAINT TRIGGER slow AFTER "
	    "INSERT ON eav.queues DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
	    "EXECUTE FUNCTION public.slow_commit()", 0));
	memset(&d, 0, sizeof(d));
	ck_assert_msg(db_connect(&d, db.dsn, "check_schema") == 0, "%s",
	    d.errmsg);
	snprintf(pid, sizeof(pid), "%d", d.backend_pid);
	ck_assert_int_eq(db_send(&d, DB_QUEUE_SET, params), DB_OK);
	ck_assert(th_wait(db.conn, 20000, "SELECT wait_event = 'PgSleep' "
	    "FROM pg_stat_activity WHERE pid = $1::int", 1, pid));
	ck_assert(th_ll(db.conn, "SELECT pg_terminate_backend($1::int)::int",
	    1, pid) == 1);
	ck_assert_int_eq(db_finish(&d, DB_QUEUE_SET, &res), DB_CONN_LOST);
	ck_assert_ptr_null(res);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.queues "
	    "WHERE name = 'fm059'", 0), 0);
	db_close(&d);
	th_db_free(&db);
}
END_TEST

Suite *
suite_schema(void)
{
	Suite	*s = suite_create("schema");
	TCase	*tc = tcase_create("schema");

	tcase_add_test(tc, test_migrate_twice_is_once);
	tcase_add_test(tc, test_migrate_concurrent);
	tcase_add_test(tc, test_everything_commented);
	tcase_add_test(tc, test_result_then_backend_death);
	tcase_add_loop_test(tc, test_audit_append_only, 0,
	    (int)(sizeof(audit_changes) / sizeof(audit_changes[0])));
	tcase_set_timeout(tc, 90);
	suite_add_tcase(s, tc);
	return s;
}
