/*
 * The tamper-evident audit (sql/0012_audit_chain.sql, eavctl audit): a
 * transition whose audit row cannot be written does not happen; the
 * sealer never seals past a row that may still commit; each tampering of
 * reliability.md D.7 item 3 is caught by eavctl audit verify, naming the
 * first bad seq; 8 concurrent writers give one unforked chain.
 */
#include <sys/wait.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define OUT_MAX		8192
#define TAMPER_ROWS	30
#define WRITERS		8
#define WRITER_ROWS	10000
#define WRITER_BATCH	10

static char	out_path[512];
static char	out_text[OUT_MAX];

static int		 ctl(const char *, const char *, const char *,
			    const char *);
static const char	*out_read(void);
static void		 seal_all(PGconn *);
static void		 write_spaced(PGconn *, int);
static void		 anchor_path(const struct th_db *, char *, size_t);
static void		 writer(const char *, int);
static int		 names_seq(const char *, int);

/* Runs eavctl -d dsn audit a1 [a2 [a3]]; returns its exit code. */
static int
ctl(const char *dsn, const char *a1, const char *a2, const char *a3)
{
	char	*argv[] = { th_bin("eavctl"), "-d", (char *)(uintptr_t)dsn,
	    "audit", (char *)(uintptr_t)a1, (char *)(uintptr_t)a2,
	    (char *)(uintptr_t)a3, NULL };
	int	 status;

	snprintf(out_path, sizeof(out_path), "%s/audit-%d.out", th_tmpdir(),
	    (int)getpid());
	status = th_run(argv, out_path);
	ck_assert_msg(WIFEXITED(status), "eavctl audit %s: status %d", a1,
	    status);
	return WEXITSTATUS(status);
}

/* The output of the last eavctl run, in a static buffer. */
static const char *
out_read(void)
{
	FILE	*fp = fopen(out_path, "r");
	size_t	 n;

	ck_assert_ptr_nonnull(fp);
	n = fread(out_text, 1, sizeof(out_text) - 1, fp);
	out_text[n] = '\0';
	fclose(fp);
	return out_text;
}

/* Seals until nothing is left (the horizon takes two rounds). */
static void
seal_all(PGconn *c)
{
	ck_assert_msg(th_wait(c, TH_TIMEOUT_MS, "SELECT eav.audit_seal(10000)"
	    " >= 0 AND (SELECT unsealed = 0 FROM eav.audit_head())", 0),
	    "audit rows left unsealed");
}

/*
 * Writes n audit rows with an unused id after each, so that a forged row
 * can take an id between two real ones.
 */
static void
write_spaced(PGconn *c, int n)
{
	char	num[16];
	int	i;

	for (i = 1; i <= n; i++) {
		snprintf(num, sizeof(num), "%d", i);
		PQclear(th_exec(c, "SELECT eav.audit('test.row', 'success', "
		    "'test', gen_random_uuid(), $1::bigint, NULL, "
		    "jsonb_build_object('n', $1::int, 'f', 0.1)), "
		    "nextval('eav.audit_events_id_seq')", 1, num));
	}
}

static void
anchor_path(const struct th_db *db, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s.anchor", th_tmpdir(), db->name);
}

/* A transition whose audit row fails rolls back whole (enqueue, claim). */
/* FM-046 */
START_TEST(test_audit_write_failure)
{
	struct th_db	 db;
	char		*inc, *task, *err;
	long long	 events;

	th_db_new(&db);
	inc = th_str(db.conn, "SELECT eav.node_start('n1', 'test', 1, "
	    "'test')::text", 0);
	task = th_str(db.conn, "SELECT eav.enqueue('noop', '{}')::text", 0);
	PQclear(th_exec(db.conn, "CREATE FUNCTION pg_temp.no_audit() "
	    "RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.type IN "
	    "('step.claimed', 'task.enqueued') THEN RAISE EXCEPTION "
	    "'audit disk full' USING ERRCODE = '53100'; END IF; RETURN NEW; "
	    "END $$", 0));
	PQclear(th_exec(db.conn, "CREATE TRIGGER no_audit BEFORE INSERT ON "
	    "eav.audit_events FOR EACH ROW EXECUTE FUNCTION "
	    "pg_temp.no_audit()", 0));
	events = th_ll(db.conn, "SELECT count(*) FROM eav.audit_events", 0);
	err = strdup(th_err(db.conn, "SELECT * FROM eav.claim('n1', "
	    "$1::bigint, 4242, 1, NULL)", 1, inc));
	ck_assert_msg(strstr(err, "53100") != NULL, "claim: %s", err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.steps WHERE "
	    "task_id = $1::bigint AND state = 'pending' AND attempt = 0 AND "
	    "claim_epoch = 0 AND owner_pid IS NULL", 1, task), 1);
	free(err);
	err = strdup(th_err(db.conn, "SELECT eav.enqueue('noop', '{}')",
	    0));
	ck_assert_msg(strstr(err, "audit disk full") != NULL, "%s", err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.tasks", 0),
	    1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events", 0), events);
	/* Once the cause is gone, the same call goes through. */
	PQclear(th_exec(db.conn, "DROP TRIGGER no_audit ON eav.audit_events",
	    0));
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.claim('n1', "
	    "$1::bigint, 4242, 1, NULL)", 1, inc), 1);
	free(err);
	free(inc);
	free(task);
	th_db_free(&db);
}
END_TEST

/*
 * The horizon: a row whose transaction is still open holds back the
 * sealing of every later id; once it commits, both are sealed in id
 * order, and a rolled-back id is a gap the chain does not notice.
 */
START_TEST(test_seal_waits_for_open_writer)
{
	static const char *const sealed_sql = "SELECT count(*) FROM "
	    "eav.audit_chain c JOIN eav.audit_events e USING (id) "
	    "WHERE e.type LIKE 'test.%'";
	struct th_db	 db;
	PGconn		*open;
	int		 i;

	th_db_new(&db);
	open = th_connect(db.dsn);
	PQclear(th_exec(open, "BEGIN", 0));
	PQclear(th_exec(open, "SELECT eav.audit('test.slow', 'success', "
	    "'test', NULL, NULL, NULL)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.audit('test.fast', 'success', "
	    "'test', NULL, NULL, NULL)", 0));
	for (i = 0; i < 5; i++)
		PQclear(th_exec(db.conn, "SELECT eav.audit_seal(100)", 0));
	ck_assert_int_eq(th_ll(db.conn, sealed_sql, 0), 0);
	PQclear(th_exec(open, "COMMIT", 0));
	seal_all(db.conn);
	ck_assert_int_eq(th_ll(db.conn, sealed_sql, 0), 2);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_chain"
	    " c JOIN eav.audit_events e USING (id) WHERE e.type = 'test.slow'"
	    " AND c.seq < (SELECT c2.seq FROM eav.audit_chain c2 JOIN "
	    "eav.audit_events e2 USING (id) WHERE e2.type = 'test.fast')", 0),
	    1);
	/* A rolled-back id leaves a gap in ids, none in seq. */
	PQclear(th_exec(open, "BEGIN", 0));
	PQclear(th_exec(open, "SELECT eav.audit('test.undone', 'success', "
	    "'test', NULL, NULL, NULL)", 0));
	PQclear(th_exec(db.conn, "SELECT eav.audit('test.after', 'success', "
	    "'test', NULL, NULL, NULL)", 0));
	PQclear(th_exec(open, "ROLLBACK", 0));
	seal_all(db.conn);
	ck_assert_int_eq(th_ll(db.conn, sealed_sql, 0), 3);
	ck_assert_int_eq(th_ll(db.conn, "SELECT max(seq) - count(*) FROM "
	    "eav.audit_chain", 0), 0);
	ck_assert_int_eq(ctl(db.dsn, "verify", NULL, NULL), 0);
	PQfinish(open);
	th_db_free(&db);
}
END_TEST

static const char *const chain_changes[] = {
	"INSERT INTO eav.audit_chain (seq, id, prev_hash, hash) VALUES "
	    "(999, 999, sha256(''), sha256(''))",
	"UPDATE eav.audit_chain SET hash = sha256('x')",
	"DELETE FROM eav.audit_chain WHERE seq = 2",
	"TRUNCATE eav.audit_chain",
};

/* The chain is written by the sealer only and never changed (EA009). */
/* FM-022 */
START_TEST(test_chain_append_only)
{
	struct th_db	 db;
	const char	*err;

	th_db_new(&db);
	write_spaced(db.conn, 3);
	seal_all(db.conn);
	err = th_err(db.conn, chain_changes[_i], 0);
	ck_assert_msg(strncmp(err, "EA009", 5) == 0, "%s: %s",
	    chain_changes[_i], err);
	err = th_err(db.conn, "SELECT eav.audit_seal(0)", 0);
	ck_assert_msg(strncmp(err, "22023", 5) == 0, "%s", err);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_chain",
	    0), 3);
	ck_assert_int_eq(ctl(db.dsn, "verify", NULL, NULL), 0);
	th_db_free(&db);
}
END_TEST

/*
 * The canonical form does not depend on session settings: rows sealed by
 * a session with odd ones verify from a session with the defaults.  Rows
 * carry their session's role (v2), a row written before 0034 has none
 * (v1), and verify checks both forms.
 */
START_TEST(test_canonical_settings)
{
	static const char *const canon_sql = "SELECT string_agg("
	    "eav.audit_canonical(e), '|' ORDER BY id) FROM eav.audit_events e";
	struct th_db	 db;
	PGconn		*plain;
	char		*odd, *def;

	th_db_new(&db);
	PQclear(th_exec(db.conn, "SELECT set_config('TimeZone', "
	    "'Pacific/Chatham', false), set_config('DateStyle', 'SQL, DMY', "
	    "false), set_config('extra_float_digits', '-10', false), "
	    "set_config('IntervalStyle', 'sql_standard', false)", 0));
	write_spaced(db.conn, 5);
	PQclear(th_exec(db.conn, "SELECT eav.audit('test.odd', 'success', "
	    "'t\u00e9st', NULL, NULL, NULL, '{\"f\": 1.000000000001, "
	    "\"e\": 1e-7, \"s\": \"\\u00e9\\n\"}')", 0));
	/* A row as written before 0034, without a role: the v1 form. */
	PQclear(th_exec(db.conn, "INSERT INTO eav.audit_events (type, "
	    "outcome, actor, role) VALUES ('test.v1', 'success', 'old', NULL)",
	    0));
	write_spaced(db.conn, 2);
	seal_all(db.conn);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events e WHERE eav.audit_canonical(e) LIKE "
	    "'eav.audit.v1%' AND type = 'test.v1'", 0), 1);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM "
	    "eav.audit_events e WHERE eav.audit_canonical(e) LIKE "
	    "'eav.audit.v2%' AND role = session_user AND "
	    "eav.audit_canonical(e) LIKE '%' || eav.audit_field(session_user)",
	    0), 8);
	plain = th_connect(db.dsn);
	odd = th_str(db.conn, canon_sql, 0);
	def = th_str(plain, canon_sql, 0);
	ck_assert_str_eq(odd, def);
	ck_assert_int_eq(ctl(db.dsn, "verify", NULL, NULL), 0);
	free(odd);
	free(def);
	PQfinish(plain);
	th_db_free(&db);
}
END_TEST

/*
 * reliability.md D.7 item 3, as a superuser with the triggers off: what
 * is changed, whether the chain is then recomputed, and the exit code of
 * verify without and with the anchor written before, and the seq named.
 */
struct tamper {
	const char	*what;
	const char	*sql;
	int		 reseal;
	int		 plain, anchored;
	int		 seq;
};

static const struct tamper tampers[] = {
	{ "(a) payload edited", "UPDATE eav.audit_events SET payload = "
	    "jsonb_set(payload, '{n}', '11') WHERE id = (SELECT id FROM "
	    "eav.audit_chain WHERE seq = 10)", 0, 3, 3, 10 },
	{ "(b) middle row deleted", "WITH d AS (DELETE FROM eav.audit_chain "
	    "WHERE seq = 10 RETURNING id) DELETE FROM eav.audit_events WHERE "
	    "id IN (SELECT id FROM d)", 0, 3, 3, 10 },
	{ "(b') middle event deleted, seal kept", "DELETE FROM "
	    "eav.audit_events WHERE id = (SELECT id FROM eav.audit_chain "
	    "WHERE seq = 10)", 0, 3, 3, 10 },
	{ "(c) last 10 rows deleted", "WITH d AS (DELETE FROM eav.audit_chain "
	    "WHERE seq > 20 RETURNING id) DELETE FROM eav.audit_events WHERE "
	    "id IN (SELECT id FROM d)", 0, 0, 3, 21 },
	{ "(d) two rows' seq swapped", "DO $$ BEGIN "
	    "UPDATE eav.audit_chain SET seq = 1000000 WHERE seq = 10; "
	    "UPDATE eav.audit_chain SET seq = 10 WHERE seq = 11; "
	    "UPDATE eav.audit_chain SET seq = 11 WHERE seq = 1000000; END $$",
	    0, 3, 3, 10 },
	{ "(e) forged row inserted", "INSERT INTO eav.audit_events (id, type, "
	    "outcome, actor) VALUES ((SELECT id - 1 FROM eav.audit_chain "
	    "WHERE seq = 10), 'step.succeeded', 'success', 'mallory')",
	    0, 3, 3, 10 },
	{ "(g) role edited", "UPDATE eav.audit_events SET role = "
	    "'eav_operator' WHERE id = (SELECT id FROM eav.audit_chain WHERE "
	    "seq = 10)", 0, 3, 3, 10 },
	{ "(g') role removed (made to look v1)", "UPDATE eav.audit_events SET "
	    "role = NULL WHERE id = (SELECT id FROM eav.audit_chain WHERE "
	    "seq = 10)", 0, 3, 3, 10 },
	{ "(f) edited, chain recomputed", "DO $$ BEGIN "
	    "UPDATE eav.audit_events SET payload = '{}' WHERE id = (SELECT id "
	    "FROM eav.audit_chain WHERE seq = 10); "
	    "DELETE FROM eav.audit_chain; END $$", 1, 0, 3, TAMPER_ROWS },
};

/* True if out names seq as the first bad one. */
static int
names_seq(const char *out, int seq)
{
	char		 want[64];
	const char	*p;

	snprintf(want, sizeof(want), "broken at seq %d", seq);
	return (p = strstr(out, want)) != NULL &&
	    (p[strlen(want)] < '0' || p[strlen(want)] > '9');
}

/* Each tampering is caught, and by the anchor where only it can. */
/* FM-050 */
START_TEST(test_tamper_detected)
{
	const struct tamper	*t = &tampers[_i];
	struct th_db		 db;
	char			 anchor[512];
	int			 rc;

	th_db_new(&db);
	anchor_path(&db, anchor, sizeof(anchor));
	write_spaced(db.conn, TAMPER_ROWS);
	seal_all(db.conn);
	ck_assert_int_eq(ctl(db.dsn, "anchor", anchor, NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "verify", "--anchor", anchor), 0);
	PQclear(th_exec(db.conn, "SET session_replication_role = replica",
	    0));
	PQclear(th_exec(db.conn, t->sql, 0));
	PQclear(th_exec(db.conn, "RESET session_replication_role", 0));
	if (t->reseal)
		seal_all(db.conn);
	rc = ctl(db.dsn, "verify", NULL, NULL);
	ck_assert_msg(rc == t->plain, "%s: verify exited %d: %s", t->what, rc,
	    out_read());
	ck_assert_msg(rc == 0 || names_seq(out_read(), t->seq),
	    "%s: seq %d not named: %s", t->what, t->seq, out_read());
	rc = ctl(db.dsn, "verify", "--anchor", anchor);
	ck_assert_msg(rc == t->anchored, "%s: verify --anchor exited %d: %s",
	    t->what, rc, out_read());
	ck_assert_msg(names_seq(out_read(), t->seq), "%s: seq %d not named: "
	    "%s", t->what, t->seq, out_read());
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'audit_chain_broken' AND severity = 'critical' "
	    "AND state = 'open'", 0), 1);
	th_db_free(&db);
}
END_TEST

/* One writer: WRITER_ROWS audit rows in transactions of WRITER_BATCH. */
static void
writer(const char *dsn, int n)
{
	PGconn		*c = PQconnectdb(dsn);
	PGresult	*res;
	char		 num[16];
	const char	*p[1] = { num };
	int		 i, ok = PQstatus(c) == CONNECTION_OK;

	snprintf(num, sizeof(num), "%d", n);
	for (i = 0; ok && i < WRITER_ROWS / WRITER_BATCH; i++) {
		res = PQexecParams(c, "SELECT eav.audit('test.w', 'success', "
		    "'writer:' || $1, NULL, g, NULL, jsonb_build_object('w', "
		    "$1::int, 'g', g)) FROM generate_series(1, 10) g", 1, NULL,
		    p, NULL, NULL, 0);
		ok = PQresultStatus(res) == PGRES_TUPLES_OK;
		PQclear(res);
	}
	PQfinish(c);
	_exit(ok ? 0 : 1);
}

/*
 * 8 writers x 10,000 rows while eavd seals (and this test seals too, to
 * race its lock): one chain, seq 1..N without gaps in id order, every
 * row sealed within the deadline, verify passes (D.7 item 4, P8).
 */
START_TEST(test_concurrent_writers_one_chain)
{
	struct th_db	 db;
	struct th_eavd	 e;
	pid_t		 pids[WRITERS];
	long long	 deadline;
	int		 i, live, status;
	char		*delay;

	th_db_new(&db);
	th_eavd_conf(&e, &db, "[supervisor]\nworkers = 1\n");
	th_eavd_up(&e, db.conn, 1);
	for (i = 0; i < WRITERS; i++) {
		ck_assert_int_ge(pids[i] = fork(), 0);
		if (pids[i] == 0)
			writer(db.dsn, i);
	}
	deadline = th_now_ms() + 240000;
	for (live = WRITERS; live > 0 && th_now_ms() < deadline; ) {
		PQclear(th_exec(db.conn, "SELECT eav.audit_seal(500)", 0));
		for (i = 0; i < WRITERS; i++)
			if (pids[i] > 0 && waitpid(pids[i], &status,
			    WNOHANG) == pids[i]) {
				ck_assert_msg(WIFEXITED(status) &&
				    WEXITSTATUS(status) == 0, "writer %d: "
				    "status %d", i, status);
				pids[i] = 0;
				live--;
			}
	}
	ck_assert_int_eq(live, 0);
	ck_assert_msg(th_wait(db.conn, 60000, "SELECT (SELECT unsealed = 0 "
	    "FROM eav.audit_head())", 0), "rows left unsealed");
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.audit_chain"
	    " c JOIN eav.audit_events e USING (id) WHERE e.type = 'test.w'",
	    0), WRITERS * WRITER_ROWS);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM (SELECT seq - "
	    "lag(seq) OVER (ORDER BY id) AS step, seq, "
	    "row_number() OVER (ORDER BY id) AS n FROM eav.audit_chain) x "
	    "WHERE step <> 1 OR seq <> n", 0), 0);
	ck_assert_int_eq(th_ll(db.conn, "SELECT (SELECT count(*) FROM "
	    "eav.audit_events) - (SELECT count(*) FROM eav.audit_chain)", 0),
	    0);
	delay = th_str(db.conn, "SELECT format('p50 %s ms, p99 %s ms, max %s "
	    "ms', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)), "
	    "round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)), "
	    "round(max(d))) FROM (SELECT extract(epoch FROM c.sealed_at - "
	    "e.at) * 1000 AS d FROM eav.audit_chain c JOIN eav.audit_events e "
	    "USING (id) WHERE e.type = 'test.w') x", 0);
	printf("audit: %d writers x %d rows, sealing delay %s\n", WRITERS,
	    WRITER_ROWS, delay);
	free(delay);
	ck_assert_int_eq(ctl(db.dsn, "verify", NULL, NULL), 0);
	th_eavd_stop_ok(&e);
	th_db_free(&db);
}
END_TEST

/* eavctl audit's exit codes on bad usage, bad anchors, no database. */
START_TEST(test_ctl_exit_codes)
{
	struct th_db	 db;
	char		 anchor[512];
	FILE		*fp;

	th_db_new(&db);
	anchor_path(&db, anchor, sizeof(anchor));
	ck_assert_int_eq(ctl(db.dsn, "verify", NULL, NULL), 0);
	ck_assert_int_eq(ctl(db.dsn, "anchor", anchor, NULL), 0);
	ck_assert_ptr_nonnull(strstr(out_read(), "\nseq 0\n"));
	ck_assert_int_eq(ctl(db.dsn, "verify", "--anchor", anchor), 0);
	ck_assert_int_eq(ctl(db.dsn, "nonsense", NULL, NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "verify", "extra", NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "anchor", NULL, NULL), 2);
	ck_assert_int_eq(ctl(db.dsn, "verify", "--anchor", "/nonexistent/a"),
	    2);
	ck_assert_ptr_nonnull(fp = fopen(anchor, "w"));
	fputs("not an anchor\n", fp);
	fclose(fp);
	ck_assert_int_eq(ctl(db.dsn, "verify", "--anchor", anchor), 2);
	ck_assert_int_eq(ctl(db.dsn, "anchor", "/nonexistent/a", NULL), 1);
	ck_assert_int_eq(ctl("host=/nonexistent dbname=x", "verify", NULL,
	    NULL), 1);
	th_db_free(&db);
}
END_TEST

Suite *
suite_audit(void)
{
	Suite	*s = suite_create("audit");
	TCase	*tc = tcase_create("audit");

	tcase_add_test(tc, test_audit_write_failure);
	tcase_add_test(tc, test_seal_waits_for_open_writer);
	tcase_add_loop_test(tc, test_chain_append_only, 0,
	    (int)(sizeof(chain_changes) / sizeof(chain_changes[0])));
	tcase_add_test(tc, test_canonical_settings);
	tcase_add_loop_test(tc, test_tamper_detected, 0,
	    (int)(sizeof(tampers) / sizeof(tampers[0])));
	tcase_add_test(tc, test_ctl_exit_codes);
	tcase_add_test(tc, test_concurrent_writers_one_chain);
	tcase_set_timeout(tc, 300);
	suite_add_tcase(s, tc);
	return s;
}
