/*
 * Test harness: every suite runs against the real PostgreSQL cluster that
 * tests/run.sh starts, each test in a fresh database made from a migrated
 * template.  Crash tests run the real binaries and kill them for real.
 * Waiting is always a poll with a deadline, never a bare sleep.
 */
#ifndef EAV_TESTS_HARNESS_H
#define EAV_TESTS_HARNESS_H

#include <sys/types.h>

#include <check.h>
#include <libpq-fe.h>

#define TH_TIMEOUT_MS	20000	/* default deadline of a wait */

struct th_db {
	char	 name[64];
	char	 dsn[512];
	PGconn	*conn;
};

struct th_eavd {
	pid_t	 pid;
	char	 conf[256];
	char	 log[256];
};

/* Paths and settings from tests/run.sh. */
char		*th_bin(const char *);
const char	*th_root(void);
const char	*th_tmpdir(void);

/* Databases. */
void		 th_db_new(struct th_db *);
void		 th_db_empty(struct th_db *);
void		 th_db_free(struct th_db *);
PGconn		*th_connect(const char *);

/*
 * SQL with text parameters (n of them, as const char *).  th_exec asserts
 * success and returns the result (caller PQclears); th_ll and th_str
 * return the single value of a one-row result (th_str: caller frees,
 * NULL for SQL NULL); th_err asserts failure and returns
 * "SQLSTATE: message" in a static buffer.
 */
PGresult	*th_exec(PGconn *, const char *, int, ...);
long long	 th_ll(PGconn *, const char *, int, ...);
char		*th_str(PGconn *, const char *, int, ...);
const char	*th_err(PGconn *, const char *, int, ...);

/* Polls sql (which must return one boolean) every 5 ms until it is true. */
int		 th_wait(PGconn *, int, const char *, int, ...);

/* eavd under test: config file, start, readiness, stop. */
void		 th_eavd_conf(struct th_eavd *, const struct th_db *,
		    const char *);
void		 th_eavd_start(struct th_eavd *);
int		 th_eavd_wait_up(struct th_eavd *, PGconn *, int, int);
int		 th_eavd_stop(struct th_eavd *, int, int);
int		 th_waitpid(pid_t, int);
int		 th_log_contains(const struct th_eavd *, const char *);
int		 th_file_contains(const char *, const char *);

/* Runs a program (argv[0] is a path) and returns its wait status;
 * output goes to out (or the test's stdout when NULL). */
int		 th_run(char *const [], const char *);

/* Monotonic milliseconds; a pause for pacing (never to wait for a
 * condition: th_wait); eavd up with its workers; eavd stopped by SIGTERM
 * with exit 0 and no sanitizer report in its log. */
long long	 th_now_ms(void);
void		 th_pause_ms(long);
void		 th_eavd_up(struct th_eavd *, PGconn *, int);
void		 th_eavd_stop_ok(struct th_eavd *);

/* Restarts the test cluster with pg_ctl restart -m fast. */
void		 th_pg_restart_fast(void);
void		 th_pg_ctl(const char *);

/*
 * Tools against a far side (tooltest.c): tests/far/recorder and mcpd
 * record each call in far_deliveries and each effect in far_effects of
 * the test's database, whose DSN they get as RECORDER_DSN (th_far_db
 * also puts secrets in the environment that no tool may see).
 */
#define TH_TOOL_DEADLINE_MS	30000

/* A call in progress: its step, claim and worker. */
struct th_call {
	char	step[24];
	char	epoch[24];
	char	attempt[16];
	pid_t	owner;
};

void		 th_far_db(struct th_db *);
void		 th_far_conf(struct th_eavd *, const struct th_db *,
		    const char *, int, int);
const char	*th_enqueue(PGconn *, const char *, const char *, int);
void		 th_wait_state(PGconn *, const struct th_eavd *, const char *,
		    const char *);
char		*th_step_error(PGconn *, const char *);
void		 th_assert_failed(PGconn *, const char *, const char *);
void		 th_wait_settled(PGconn *, const struct th_eavd *,
		    const char *, int);
void		 th_assert_sound(PGconn *);
ssize_t		 th_read_file(const char *, char *, size_t);
int		 th_read_pidfile(const char *, pid_t *, pid_t *);
int		 th_proc_stat(pid_t, char *, pid_t *);
int		 th_gone(pid_t, const char *);
int		 th_wait_gone(pid_t, const char *, int);
void		 th_marker(const struct th_db *, char *, size_t);
int		 th_env_has(pid_t, const char *);
int		 th_count_live(const char *, const char *, const char *);
void		 th_assert_fds(pid_t);
int		 th_child_of(pid_t, pid_t);
int		 th_pick_call(PGconn *, pid_t, const char *, const char *,
		    struct th_call *);

/* https far sides (tooltest.c): th_certs_make writes them with openssl. */
/* A throwaway CA and two server certificates it signed, per test. */
struct th_certs {
	char	dir[256];
	char	cnf[300];
	char	ca[300], ca_key[300];
	char	good[300], good_key[300];	/* localhost, 127.0.0.1, ::1 */
	char	wrong[300], wrong_key[300];	/* wrong.example only */
};

void		 th_certs_make(struct th_certs *);

/*
 * One Suite per file.  Weak, so a runner can be linked with a subset of
 * the files (make TEST_SRCS=...); a missing suite is skipped.
 */
Suite	*suite_config(void) __attribute__((weak));
Suite	*suite_schema(void) __attribute__((weak));
Suite	*suite_transitions(void) __attribute__((weak));
Suite	*suite_claim(void) __attribute__((weak));
Suite	*suite_producer(void) __attribute__((weak));
Suite	*suite_supervisor(void) __attribute__((weak));
Suite	*suite_crash(void) __attribute__((weak));
Suite	*suite_ctl(void) __attribute__((weak));
Suite	*suite_inject(void) __attribute__((weak));
Suite	*suite_exec(void) __attribute__((weak));
Suite	*suite_http(void) __attribute__((weak));
Suite	*suite_mcp(void) __attribute__((weak));
Suite	*suite_kill(void) __attribute__((weak));
Suite	*suite_governance(void) __attribute__((weak));
Suite	*suite_audit(void) __attribute__((weak));
Suite	*suite_redact(void) __attribute__((weak));
Suite	*suite_diagnose(void) __attribute__((weak));
Suite	*suite_schedule(void) __attribute__((weak));
Suite	*suite_ownership(void) __attribute__((weak));
Suite	*suite_watcher(void) __attribute__((weak));
Suite	*suite_events(void) __attribute__((weak));

#endif
