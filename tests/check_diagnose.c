/*
 * eavctl diagnose and eav.diagnose (sql/0019_diagnose.sql): a deliberately
 * ungoverned configuration is reported in each of the five categories with
 * the expected findings and exit 3; a governed one is ok there and exits
 * 0; --verify reports the audit chain as eavctl walked it; checks of
 * schema another migration adds (approvals, rules) follow it when it is
 * there.  The --json document is parsed with jansson.
 */
#include <sys/wait.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "harness.h"

#define OUT_MAX		262144

static char	out_path[512];
static char	out_text[OUT_MAX];

static int		 diagnose(const struct th_db *, const char *,
			    const char *);
static const char	*out_read(void);
static json_t		*report_load(void);
static json_t		*finding(json_t *, const char *, const char *);
static const char	*severity(json_t *, const char *, const char *);
static int		 has_string(json_t *, const char *);
static void		 ungoverned(PGconn *);
static void		 governed(PGconn *);

/* Runs eavctl -d dsn diagnose [a1 [a2]]; returns its exit code. */
static int
diagnose(const struct th_db *db, const char *a1, const char *a2)
{
	char	*argv[] = { th_bin("eavctl"), "-d", (char *)(uintptr_t)db->dsn,
		    "diagnose", (char *)(uintptr_t)a1, (char *)(uintptr_t)a2,
		    NULL };
	int	 status;

	snprintf(out_path, sizeof(out_path), "%s/diag-%d.out", th_tmpdir(),
	    (int)getpid());
	status = th_run(argv, out_path);
	ck_assert_msg(WIFEXITED(status), "eavctl diagnose: status %d",
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

/* The last output as a JSON report (caller json_decrefs). */
static json_t *
report_load(void)
{
	json_error_t	 err;
	json_t		*j = json_loads(out_read(), 0, &err);

	ck_assert_msg(j != NULL, "not JSON: %s: %s", err.text, out_text);
	ck_assert(json_is_array(json_object_get(j, "categories")));
	return j;
}

/* The finding of a check in a category (borrowed); fails if absent. */
static json_t *
finding(json_t *report, const char *category, const char *check)
{
	json_t	*c, *f;
	size_t	 i, k;

	json_array_foreach(json_object_get(report, "categories"), i, c) {
		if (strcmp(json_string_value(json_object_get(c, "category")),
		    category) != 0)
			continue;
		json_array_foreach(json_object_get(c, "findings"), k, f)
			if (strcmp(json_string_value(json_object_get(f,
			    "check")), check) == 0)
				return f;
	}
	ck_abort_msg("no finding %s / %s", category, check);
	return NULL;
}

static const char *
severity(json_t *report, const char *category, const char *check)
{
	return json_string_value(json_object_get(finding(report, category,
	    check), "severity"));
}

/* Whether a JSON array holds the string s. */
static int
has_string(json_t *array, const char *s)
{
	json_t	*v;
	size_t	 i;

	json_array_foreach(array, i, v)
		if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
			return 1;
	return 0;
}

/*
 * Everything issue 7 warns about: non-idempotent exec and http tools
 * without approval (one with an hour's timeout), a queue with the
 * largest limits, no retry budget, a kill switch never engaged, an open
 * critical alarm.
 */
static void
ungoverned(PGconn *c)
{
	PQclear(th_exec(c, "SELECT eav.tool_register('crm.update', 'exec', "
	    "'{\"argv\": [\"/bin/true\"]}', false, 3600000)", 0));
	PQclear(th_exec(c, "SELECT eav.tool_register('billing.charge', "
	    "'http', '{\"url\": \"http://127.0.0.1:9/\"}', false, 10000)", 0));
	PQclear(th_exec(c, "SELECT eav.queue_set_recursion('default', 1000, "
	    "10000000)", 0));
	PQclear(th_exec(c, "SELECT eav.alarm_raise('secret_leak', 'critical', "
	    "'audit', 'a secret reached a payload', '{}', 'test')", 0));
}

/*
 * The same deployment governed: an idempotent tool with a short timeout,
 * budgets on every queue and tool, a kill switch drill just now (which
 * resolves its own alarm), no open alarm, the audit sealed.
 */
static void
governed(PGconn *c)
{
	PQclear(th_exec(c, "SELECT eav.tool_register('crm.update', 'exec', "
	    "'{\"argv\": [\"/bin/true\"]}', true, 10000)", 0));
	PQclear(th_exec(c, "SELECT eav.retry_budget_set(scope, name, 60, "
	    "'operator:test') FROM (SELECT 'queue' AS scope, name FROM "
	    "eav.queues UNION ALL SELECT 'tool', name FROM eav.tools WHERE "
	    "kind <> 'builtin') x", 0));
	PQclear(th_exec(c, "SELECT eav.kill_switch_engage('queue', 'default', "
	    "'drill', 'operator:test')", 0));
	PQclear(th_exec(c, "SELECT eav.kill_switch_release('queue', "
	    "'default', 'drill over', 'operator:test')", 0));
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.alarms WHERE "
	    "state <> 'resolved'", 0), 0);
	ck_assert_msg(th_wait(c, TH_TIMEOUT_MS, "SELECT eav.audit_seal(10000)"
	    " >= 0 AND (SELECT unsealed = 0 FROM eav.audit_head())", 0),
	    "audit rows left unsealed");
}

/* Each category names its findings; the critical alarm makes it exit 3. */
START_TEST(test_diagnose_ungoverned)
{
	struct th_db	 db;
	json_t		*r, *f;
	long long	 alarm;

	th_db_new(&db);
	ungoverned(db.conn);
	alarm = th_ll(db.conn, "SELECT id FROM eav.alarms WHERE type = "
	    "'secret_leak'", 0);
	ck_assert_int_eq(diagnose(&db, "--json", NULL), 3);
	r = report_load();
	ck_assert_str_eq(json_string_value(json_object_get(r, "worst")),
	    "critical");

	f = finding(r, "mutation control", "non_idempotent_tools");
	ck_assert_str_eq(json_string_value(json_object_get(f, "severity")),
	    "warning");
	f = json_object_get(f, "evidence");
	ck_assert(has_string(json_object_get(f, "tools"), "crm.update"));
	ck_assert(has_string(json_object_get(f, "tools"), "billing.charge"));
	/* A builtin is eav's own: demo.notify is not a finding. */
	ck_assert(!has_string(json_object_get(f, "tools"), "demo.notify"));
	f = json_object_get(finding(r, "mutation control", "tool_timeouts"),
	    "evidence");
	ck_assert_int_eq(json_integer_value(json_object_get(f, "count")), 1);
	ck_assert_str_eq(severity(r, "mutation control", "tool_timeouts"),
	    "warning");

	f = finding(r, "loop control", "queue_limits");
	ck_assert_str_eq(json_string_value(json_object_get(f, "severity")),
	    "warning");
	f = json_array_get(json_object_get(json_object_get(f, "evidence"),
	    "too_high"), 0);
	ck_assert_str_eq(json_string_value(json_object_get(f, "queue")),
	    "default");
	ck_assert_int_eq(json_integer_value(json_object_get(f,
	    "max_trace_tasks")), 10000000);
	(void)finding(r, "loop control", "rule_debounce");

	(void)finding(r, "orchestration authority",
	    "resources_without_owners");
	(void)finding(r, "orchestration authority", "concurrent_writers");

	ck_assert_str_eq(severity(r, "traceability", "audit_chain"), "info");
	ck_assert_str_eq(severity(r, "traceability", "steps_without_trace"),
	    "ok");

	ck_assert_str_eq(severity(r, "containment", "kill_switch_tested"),
	    "warning");
	f = finding(r, "containment", "retry_budgets_queues");
	ck_assert_str_eq(json_string_value(json_object_get(f, "severity")),
	    "warning");
	ck_assert(has_string(json_object_get(json_object_get(f, "evidence"),
	    "queues"), "default"));
	f = finding(r, "containment", "open_alarms");
	ck_assert_str_eq(json_string_value(json_object_get(f, "severity")),
	    "critical");
	f = json_object_get(json_object_get(json_object_get(f, "evidence"),
	    "ids"), "critical");
	ck_assert_int_eq(json_integer_value(json_array_get(f, 0)), alarm);
	json_decref(r);
	th_db_free(&db);
}
END_TEST

/* Governed: those findings are ok, the chain verified, exit 0. */
START_TEST(test_diagnose_governed)
{
	struct th_db	 db;
	json_t		*r;
	const char	*ok[][2] = {
		{ "mutation control", "non_idempotent_tools" },
		{ "mutation control", "tool_timeouts" },
		{ "traceability", "audit_chain" },
		{ "traceability", "audit_sealing" },
		{ "traceability", "steps_without_trace" },
		{ "containment", "kill_switch_tested" },
		{ "containment", "retry_budgets_queues" },
		{ "containment", "retry_budgets_tools" },
		{ "containment", "open_alarms" },
	};
	size_t		 i;

	th_db_new(&db);
	governed(db.conn);
	ck_assert_int_eq(diagnose(&db, "--verify", "--json"), 0);
	r = report_load();
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		ck_assert_msg(strcmp(severity(r, ok[i][0], ok[i][1]), "ok") ==
		    0, "%s / %s: %s", ok[i][0], ok[i][1], severity(r, ok[i][0],
		    ok[i][1]));
	ck_assert_str_ne(json_string_value(json_object_get(r, "worst")),
	    "critical");
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(
	    finding(r, "traceability", "audit_chain"), "evidence"), "seq")),
	    th_ll(db.conn, "SELECT max(seq) FROM eav.audit_chain", 0));
	json_decref(r);
	th_db_free(&db);
}
END_TEST

/* Text: a heading per category, one line per finding, then evidence and
 * fix; a summary line; exit 3 on the critical alarm; bad usage exits 2. */
START_TEST(test_diagnose_text)
{
	struct th_db	 db;
	const char	*out;

	th_db_new(&db);
	ungoverned(db.conn);
	ck_assert_int_eq(diagnose(&db, NULL, NULL), 3);
	out = out_read();
	ck_assert_msg(strncmp(out, "mutation control\n", 17) == 0, "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "\nloop control\n"));
	ck_assert_ptr_nonnull(strstr(out, "\norchestration authority\n"));
	ck_assert_ptr_nonnull(strstr(out, "\ntraceability\n"));
	ck_assert_ptr_nonnull(strstr(out, "\ncontainment\n"));
	ck_assert_ptr_nonnull(strstr(out, "  warning   non_idempotent_tools: "
	    "2 non-idempotent tool(s) without approval\n"
	    "            evidence: {"));
	ck_assert_ptr_nonnull(strstr(out, "  critical  open_alarms: 1 open "
	    "alarm(s)\n"));
	ck_assert_ptr_nonnull(strstr(out, "            fix: eavctl budget set "
	    "-q QUEUE"));
	ck_assert_ptr_nonnull(strstr(out, "\ndiagnose: "));
	ck_assert_ptr_nonnull(strstr(out, " 1 critical\n"));
	ck_assert_int_eq(diagnose(&db, "--bogus", NULL), 2);
	ck_assert_ptr_nonnull(strstr(out_read(), "usage: eavctl diagnose"));
	ck_assert_int_eq(diagnose(&db, "--json", "--json"), 2);
	th_db_free(&db);
}
END_TEST

/*
 * --verify walks the chain in eavctl: a sealed row changed behind the
 * triggers' back is critical, names the seq, raises audit_chain_broken,
 * and exits 3; without --verify that open alarm still says so.
 */
START_TEST(test_diagnose_verify_broken)
{
	struct th_db	 db;
	json_t		*r, *f;

	th_db_new(&db);
	governed(db.conn);
	PQclear(th_exec(db.conn, "SET session_replication_role = replica", 0));
	PQclear(th_exec(db.conn, "UPDATE eav.audit_events SET actor = "
	    "'forged' WHERE id = (SELECT id FROM eav.audit_chain WHERE seq = "
	    "1)", 0));
	PQclear(th_exec(db.conn, "RESET session_replication_role", 0));
	ck_assert_int_eq(diagnose(&db, "--json", "--verify"), 3);
	r = report_load();
	f = finding(r, "traceability", "audit_chain");
	ck_assert_str_eq(json_string_value(json_object_get(f, "severity")),
	    "critical");
	ck_assert_msg(strstr(json_string_value(json_object_get(f, "finding")),
	    "broken at seq 1") != NULL, "%s", json_string_value(
	    json_object_get(f, "finding")));
	json_decref(r);
	ck_assert_int_eq(th_ll(db.conn, "SELECT count(*) FROM eav.alarms "
	    "WHERE type = 'audit_chain_broken' AND state = 'open'", 0), 1);
	ck_assert_int_eq(diagnose(&db, "--json", NULL), 3);
	r = report_load();
	ck_assert_str_eq(severity(r, "traceability", "audit_chain"),
	    "critical");
	json_decref(r);
	th_db_free(&db);
}
END_TEST

/*
 * In psql: a tool with an approval policy is no longer a finding; without
 * a schema a check is "not available" at info, and once the table exists
 * (here a stand-in for rules) the check reads it.
 */
START_TEST(test_diagnose_schema_detection)
{
	struct th_db	 db;
	const char	 q[] = "SELECT severity || ' ' || finding FROM "
	    "eav.diagnose() WHERE check_name = $1";
	char		*s;

	th_db_new(&db);
	ungoverned(db.conn);
	PQclear(th_exec(db.conn, "SELECT eav.tool_approval_set('crm.update', "
	    "'{}')", 0));
	s = th_str(db.conn, q, 1, "non_idempotent_tools");
	ck_assert_str_eq(s, "warning 1 non-idempotent tool(s) without "
	    "approval");
	free(s);
	if (th_ll(db.conn, "SELECT count(*) FROM pg_class WHERE oid = "
	    "to_regclass('eav.rules')", 0) == 0) {
		s = th_str(db.conn, q, 1, "rule_debounce");
		ck_assert_msg(strncmp(s, "info not available: ", 20) == 0,
		    "%s", s);
		free(s);
		PQclear(th_exec(db.conn, "CREATE TABLE eav.rules (debounce_ms "
		    "integer)", 0));
		PQclear(th_exec(db.conn, "INSERT INTO eav.rules VALUES (0), "
		    "(500)", 0));
		s = th_str(db.conn, q, 1, "rule_debounce");
		ck_assert_str_eq(s, "warning 1 rule(s) without debounce");
		free(s);
	}
	th_db_free(&db);
}
END_TEST

Suite *
suite_diagnose(void)
{
	Suite	*s = suite_create("diagnose");
	TCase	*tc = tcase_create("diagnose");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_diagnose_ungoverned);
	tcase_add_test(tc, test_diagnose_governed);
	tcase_add_test(tc, test_diagnose_text);
	tcase_add_test(tc, test_diagnose_verify_broken);
	tcase_add_test(tc, test_diagnose_schema_detection);
	suite_add_tcase(s, tc);
	return s;
}
