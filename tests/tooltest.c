/*
 * Helpers of the suites that run tools against a far side (exec, mcp,
 * http, watchers): the far side's tables and eavd's config, steps and
 * their states, the processes a tool left (/proc), for checks that
 * nothing survives, and a throwaway CA for https far sides.
 * See harness.h.
 */
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "harness.h"

#define TH_PF_EXITING	0x00000004	/* the kernel's PF_EXITING */

static int	th_doomed(pid_t);
static void	th_certs_one(struct th_certs *, char *, char *, char *, char *,
		    int);

/* The recorder's tables, in the test's database. */
static const char far_deliveries_sql[] =
    "CREATE TABLE far_deliveries (id bigserial PRIMARY KEY, key text NOT NULL,"
    " step bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())";
static const char far_effects_sql[] =
    "CREATE TABLE far_effects (key text PRIMARY KEY, step bigint NOT NULL,"
    " attempt int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())";

/*
 * A database with the recorder's tables, and the environment eavd (and
 * so the worker) will have: the recorder's DSN, and secrets that must
 * never reach a program (EAV_DSN is the test database's, as eavd uses it).
 */
void
th_far_db(struct th_db *db)
{
	th_db_new(db);
	PQclear(th_exec(db->conn, far_deliveries_sql, 0));
	PQclear(th_exec(db->conn, far_effects_sql, 0));
	setenv("RECORDER_DSN", db->dsn, 1);
	setenv("EAV_DSN", db->dsn, 1);
	setenv("PGPASSWORD", "canary-pgpassword", 1);
	setenv("EAV_TEST_CANARY", "canary-secret", 1);
	/* Retries after an unknown outcome or a failure come back soon. */
	PQclear(th_exec(db->conn, "UPDATE eav.queues SET retry_base_ms = 10, "
	    "retry_max_ms = 100 WHERE name = 'default'", 0));
}

void
th_far_conf(struct th_eavd *e, const struct th_db *db, const char *node,
    int workers, int concurrency)
{
	char	text[512];

	snprintf(text, sizeof(text), "[supervisor]\nnode_name = %s\n"
	    "workers = %d\nrestart_backoff_min = 10ms\n"
	    "restart_backoff_max = 100ms\nrestart_intensity = 0\n"
	    "shutdown_grace = 20s\n[worker]\npoll_interval = 100ms\n"
	    "concurrency = %d\nbatch_size = %d\n", node, workers,
	    concurrency, concurrency);
	th_eavd_conf(e, db, text);
}

/* Enqueues one step of tool; returns its id (static buffer, one of 4). */
const char *
th_enqueue(PGconn *c, const char *tool, const char *input, int max_attempts)
{
	static char	id[4][24];
	static int	i;
	char		max[16];

	i = (i + 1) % 4;
	snprintf(max, sizeof(max), "%d", max_attempts);
	snprintf(id[i], sizeof(id[i]), "%lld", th_ll(c, "SELECT "
	    "eav.step_id(eav.enqueue($1, $2::jsonb, p_max_attempts => "
	    "$3::int), 1)", 3, tool, input, max));
	return id[i];
}

/* Waits until the step is in state; fails the test with the log. */
void
th_wait_state(PGconn *c, const struct th_eavd *e, const char *step,
    const char *state)
{
	ck_assert_msg(th_wait(c, TH_TOOL_DEADLINE_MS, "SELECT state = $2 FROM "
	    "eav.steps WHERE id = $1::bigint", 2, step, state),
	    "step %s never reached %s (log %s)", step, state, e->log);
}

/* The step's error, or "" (caller frees). */
char *
th_step_error(PGconn *c, const char *step)
{
	return th_str(c, "SELECT coalesce(error, '') FROM eav.steps WHERE "
	    "id = $1::bigint", 1, step);
}

/* Asserts the step's error contains want, and that no result was kept. */
void
th_assert_failed(PGconn *c, const char *step, const char *want)
{
	char	*err = th_step_error(c, step);

	ck_assert_msg(strstr(err, want) != NULL, "step %s: error \"%s\" "
	    "lacks \"%s\"", step, err, want);
	free(err);
	ck_assert_int_eq(th_ll(c, "SELECT count(*) FROM eav.steps WHERE "
	    "id = $1::bigint AND state = 'failed' AND result IS NULL", 1,
	    step), 1);
}

/* Reads a whole small file into buf; its length, or -1. */
ssize_t
th_read_file(const char *path, char *buf, size_t len)
{
	FILE	*fp = fopen(path, "r");
	size_t	 n;

	if (fp == NULL)
		return -1;
	n = fread(buf, 1, len - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	return (ssize_t)n;
}

/* Waits for the recorder's pid file; fills the pids it names. */
int
th_read_pidfile(const char *path, pid_t *pid, pid_t *child)
{
	long long	deadline = th_now_ms() + TH_TOOL_DEADLINE_MS;
	char		buf[64];
	int		a, b = 0;

	while (th_read_file(path, buf, sizeof(buf)) <= 0 ||
	    sscanf(buf, "%d %d", &a, &b) < 1) {
		if (th_now_ms() > deadline)
			return -1;
		th_pause_ms(5);
	}
	*pid = (pid_t)a;
	if (child != NULL)
		*child = (pid_t)b;
	return 0;
}

/* The state letter and process group of pid; -1 if there is none. */
int
th_proc_stat(pid_t pid, char *state, pid_t *pgrp)
{
	char	path[64], buf[1024], *p;
	int	ppid, pg;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (th_read_file(path, buf, sizeof(buf)) <= 0)
		return -1;
	/* The command name may hold anything: parse after its last ')'. */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %c %d %d", state, &ppid, &pg) != 3)
		return -1;
	*pgrp = (pid_t)pg;
	return 0;
}

/*
 * True if pid has a SIGKILL pending, or is exiting (PF_EXITING in the
 * flags of /proc/pid/stat): it will never run user code again.  A
 * process killed a moment ago may still show state R while the kernel
 * takes it down, and once the signal is taken from its pending set it
 * shows only PF_EXITING until it is a zombie (its memory is freed then,
 * which takes a while on a loaded machine).
 */
static int
th_doomed(pid_t pid)
{
	char			 path[64], buf[4096], *p, state;
	unsigned long long	 mask;
	unsigned		 flags;
	const char		*fields[] = { "\nSigPnd:", "\nShdPnd:" };
	size_t			 i;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (th_read_file(path, buf, sizeof(buf)) <= 0 ||
	    (p = strrchr(buf, ')')) == NULL)
		return 1;
	if (sscanf(p + 1, " %c %*d %*d %*d %*d %*d %u", &state, &flags) == 2 &&
	    (flags & TH_PF_EXITING) != 0)
		return 1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (th_read_file(path, buf, sizeof(buf)) <= 0)
		return 1;
	for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if ((p = strstr(buf, fields[i])) != NULL &&
		    sscanf(p + strlen(fields[i]), " %llx", &mask) == 1 &&
		    (mask & (1ULL << (SIGKILL - 1))) != 0)
			return 1;
	return 0;
}

/*
 * True if pid is not a live process whose command line holds marker:
 * no such process, a zombie, one about to die of SIGKILL, or a pid
 * reused by another program.
 */
int
th_gone(pid_t pid, const char *marker)
{
	char	path[64], buf[4096], state;
	pid_t	pg;
	ssize_t	n, i;

	if (th_proc_stat(pid, &state, &pg) == -1 || state == 'Z' ||
	    state == 'X' || th_doomed(pid))
		return 1;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if ((n = th_read_file(path, buf, sizeof(buf))) <= 0)
		return 1;
	for (i = 0; i < n; i++)
		if (buf[i] == '\0')
			buf[i] = ' ';
	return strstr(buf, marker) == NULL;
}

/* Waits (bounded) until pid is gone; 1, or 0 at the deadline. */
int
th_wait_gone(pid_t pid, const char *marker, int timeout_ms)
{
	long long	deadline = th_now_ms() + timeout_ms;

	while (!th_gone(pid, marker)) {
		if (th_now_ms() > deadline)
			return 0;
		th_pause_ms(2);
	}
	return 1;
}

/* The recorders' marker: --marker=<database>. */
void
th_marker(const struct th_db *db, char *buf, size_t len)
{
	snprintf(buf, len, "--marker=%s", db->name);
}

/* True if the NUL-separated environment of pid has the entry want. */
int
th_env_has(pid_t pid, const char *want)
{
	char	path[64], buf[16384];
	ssize_t	n, i;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	if ((n = th_read_file(path, buf, sizeof(buf))) <= 0)
		return 0;
	for (i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
		if (strcmp(buf + i, want) == 0)
			return 1;
	return 0;
}

/*
 * Counts live (not zombie) processes whose command line holds mark and,
 * if step is not NULL, whose environment names that step and attempt.
 */
int
th_count_live(const char *mark, const char *step, const char *attempt)
{
	DIR		*d = opendir("/proc");
	struct dirent	*de;
	char		 want_s[64], want_a[64];
	int		 n = 0;
	pid_t		 pid;

	ck_assert_ptr_nonnull(d);
	snprintf(want_s, sizeof(want_s), "EAV_STEP_ID=%s", step ? step : "");
	snprintf(want_a, sizeof(want_a), "EAV_ATTEMPT=%s",
	    attempt ? attempt : "");
	while ((de = readdir(d)) != NULL) {
		if ((pid = (pid_t)atoi(de->d_name)) <= 0 || th_gone(pid, mark))
			continue;
		if (step != NULL && (!th_env_has(pid, want_s) ||
		    !th_env_has(pid, want_a)))
			continue;
		n++;
	}
	closedir(d);
	return n;
}

/* Waits until no step of tool is pending or running. */
void
th_wait_settled(PGconn *c, const struct th_eavd *e, const char *tool,
    int timeout_ms)
{
	ck_assert_msg(th_wait(c, timeout_ms, "SELECT NOT EXISTS (SELECT 1 "
	    "FROM eav.steps WHERE tool = $1 AND state IN ('pending', "
	    "'running'))", 1, tool), "steps of %s did not settle (log %s)",
	    tool, e->log);
}

/* Asserts eav.check_invariants() finds nothing. */
void
th_assert_sound(PGconn *c)
{
	char	*v = th_str(c, "SELECT coalesce(string_agg(inv || '=' || "
	    "violations || ' (' || coalesce(sample, '') || ')', ', '), '') "
	    "FROM eav.check_invariants(false) WHERE violations > 0", 0);

	ck_assert_msg(v != NULL && *v == '\0', "invariants violated: %s", v);
	free(v);
}

/* Asserts /proc/<pid>/fd holds exactly 0, 1 and 2. */
void
th_assert_fds(pid_t pid)
{
	char		 path[64];
	DIR		*d;
	struct dirent	*de;
	int		 seen = 0, n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	ck_assert_ptr_nonnull(d = opendir(path));
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		n++;
		ck_assert_msg(strcmp(de->d_name, "0") == 0 ||
		    strcmp(de->d_name, "1") == 0 ||
		    strcmp(de->d_name, "2") == 0, "the program has fd %s",
		    de->d_name);
		seen |= 1 << atoi(de->d_name);
	}
	closedir(d);
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(seen, 7);
}

/* True if pid is a live child of eavd (so a stale pid is never shot). */
int
th_child_of(pid_t pid, pid_t eavd)
{
	char	path[64], buf[1024], *p, state;
	int	ppid;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (th_read_file(path, buf, sizeof(buf)) <= 0 ||
	    (p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %c %d", &state, &ppid) != 2)
		return 0;
	return state != 'Z' && (pid_t)ppid == eavd;
}

/*
 * Picks a call of tool claimed at least min_ms ago (so its program has
 * likely started), run by a live worker.  1, or 0 if there is none now.
 */
int
th_pick_call(PGconn *c, pid_t eavd, const char *tool, const char *min_ms,
    struct th_call *k)
{
	PGresult	*res;
	int		 found = 0;

	res = th_exec(c, "SELECT id, claim_epoch, attempt, owner_pid FROM "
	    "eav.steps WHERE state = 'running' AND tool = $1 AND "
	    "claimed_at <= now() - make_interval(secs => $2::int / 1000.0) "
	    "ORDER BY random() LIMIT 1", 2, tool, min_ms);
	if (PQntuples(res) == 1) {
		snprintf(k->step, sizeof(k->step), "%s", PQgetvalue(res, 0, 0));
		snprintf(k->epoch, sizeof(k->epoch), "%s",
		    PQgetvalue(res, 0, 1));
		snprintf(k->attempt, sizeof(k->attempt), "%s",
		    PQgetvalue(res, 0, 2));
		k->owner = (pid_t)atoi(PQgetvalue(res, 0, 3));
		found = th_child_of(k->owner, eavd);
	}
	PQclear(res);
	return found;
}

/* openssl req's config: the extensions of a CA and of the two servers. */
static const char certs_cnf[] =
    "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = eav test\n"
    "[ca]\nbasicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "[good]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1\n"
    "[wrong]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:wrong.example\n";

/*
 * One certificate of subject CN=cn with extensions ext of the config, and
 * its new key: signed by the CA, or self-signed (the CA itself).
 */
static void
th_certs_one(struct th_certs *k, char *ext, char *cn, char *cert, char *key,
    int by_ca)
{
	char	 log[300], subj[64];
	char	*argv[] = { "/usr/bin/openssl", "req", "-x509", "-config",
	    k->cnf, "-extensions", ext, "-subj", subj, "-newkey", "ec",
	    "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
	    "-out", cert, "-days", "2", "-CA", k->ca, "-CAkey", k->ca_key,
	    NULL };
	int	 status;

	snprintf(subj, sizeof(subj), "/CN=%s", cn);
	if (!by_ca)
		argv[20] = NULL;	/* "-CA" */
	snprintf(log, sizeof(log), "%s/openssl.log", k->dir);
	status = th_run(argv, log);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "openssl req -extensions %s failed (see %s)", ext, log);
}

/* Makes the test's CA and certificates with the openssl program. */
void
th_certs_make(struct th_certs *k)
{
	FILE	*fp;

	snprintf(k->dir, sizeof(k->dir), "%s/tls.%d", th_tmpdir(),
	    (int)getpid());
	ck_assert_msg(mkdir(k->dir, 0700) == 0 || errno == EEXIST, "%s: %s",
	    k->dir, strerror(errno));
	snprintf(k->cnf, sizeof(k->cnf), "%s/openssl.cnf", k->dir);
	snprintf(k->ca, sizeof(k->ca), "%s/ca.pem", k->dir);
	snprintf(k->ca_key, sizeof(k->ca_key), "%s/ca.key", k->dir);
	snprintf(k->good, sizeof(k->good), "%s/good.pem", k->dir);
	snprintf(k->good_key, sizeof(k->good_key), "%s/good.key", k->dir);
	snprintf(k->wrong, sizeof(k->wrong), "%s/wrong.pem", k->dir);
	snprintf(k->wrong_key, sizeof(k->wrong_key), "%s/wrong.key", k->dir);
	ck_assert_ptr_nonnull(fp = fopen(k->cnf, "w"));
	ck_assert_int_eq(fputs(certs_cnf, fp) >= 0, 1);
	ck_assert_int_eq(fclose(fp), 0);
	th_certs_one(k, "ca", "eav test CA", k->ca, k->ca_key, 0);
	th_certs_one(k, "good", "localhost", k->good, k->good_key, 1);
	th_certs_one(k, "wrong", "wrong.example", k->wrong, k->wrong_key, 1);
}
