/*
 * Configuration: defaults, ranges, units, unknown and duplicate options,
 * the shipped example, and eavd refusing a bad file by name.
 */
#include <sys/wait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "config.h"
#include "exitcode.h"
#include "harness.h"
#include "log.h"

static char	path[512];

static void
write_conf(const char *text)
{
	FILE	*fp;

	snprintf(path, sizeof(path), "%s/cfg-%d.conf", th_tmpdir(),
	    (int)getpid());
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	fputs(text, fp);
	fclose(fp);
}

/* Loads text; returns 0 or -1 with the error in err. */
static int
load(const char *text, struct eav_config *cfg, char *err, size_t len)
{
	write_conf(text);
	return config_load(cfg, path, err, len);
}

START_TEST(test_defaults)
{
	struct eav_config	cfg;
	char			err[512];

	unsetenv("EAV_DSN");
	ck_assert_int_eq(config_load(&cfg, NULL, err, sizeof(err)), 0);
	ck_assert_str_eq(cfg.dsn, "dbname=eav");
	ck_assert_int_eq(cfg.workers, 4);
	ck_assert_int_eq(cfg.restart_backoff_min, 100);
	ck_assert_int_eq(cfg.restart_backoff_max, 30000);
	ck_assert_int_eq(cfg.log_level, LOG_LVL_INFO);
	ck_assert_int_eq(cfg.producer_demo, 0);
	ck_assert_int_gt(strlen(cfg.node_name), 0);
	config_free(&cfg);
}
END_TEST

START_TEST(test_units_and_env)
{
	struct eav_config	cfg;
	char			err[512];

	setenv("EAV_DSN", "dbname=from_env", 1);
	ck_assert_int_eq(load("[supervisor]\nrestart_backoff_min = 250ms\n"
	    "restart_backoff_max = 2m\nshutdown_grace = 0\n[producer]\n"
	    "demo = yes\n[database]\ndsn = dbname=from_file\n", &cfg, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(cfg.restart_backoff_min, 250);
	ck_assert_int_eq(cfg.restart_backoff_max, 120000);
	ck_assert_int_eq(cfg.shutdown_grace, 0);
	ck_assert_int_eq(cfg.producer_demo, 1);
	ck_assert_str_eq(cfg.dsn, "dbname=from_env");
	config_free(&cfg);
	unsetenv("EAV_DSN");
}
END_TEST

static const struct {
	const char	*text;
	const char	*expect;
} bad[] = {
	{ "[supervisor]\nworkers = 0\n",
	    ":2: option supervisor.workers: 0 is out of range [1, 64]" },
	{ "[supervisor]\nworkers = 65\n", "supervisor.workers" },
	{ "[supervisor]\nworkers = four\n", "\"four\" is not an integer" },
	{ "[supervisor]\nworkers = -1\n", "out of range" },
	{ "[supervisor]\nrestart_backoff_min = 10\n", "is not a duration" },
	{ "[supervisor]\nrestart_backoff_min = 5 s\n", "is not a duration" },
	{ "[supervisor]\nrestart_backoff_max = 99999999999999999999h\n",
	    "is not a duration" },
	{ "[supervisor]\nworker = 3\n", "unknown option supervisor.worker" },
	{ "[nosuch]\nx = 1\n", "unknown option nosuch.x" },
	{ "[worker]\nbatch_size = 5\nbatch_size = 6\n", ":3: option "
	    "worker.batch_size given twice" },
	{ "[producer]\ndemo = maybe\n", "\"maybe\" is not on or off" },
	{ "[log]\nlevel = loud\n", "is not one of debug" },
	{ "[worker]\nqueues = a;DROP TABLE x\n", "worker.queues" },
	{ "[supervisor]\nrestart_backoff_min = 10s\nrestart_backoff_max = 1s\n",
	    "restart_backoff_max is less than" },
	{ "just text\n", ":1: syntax error" },
	{ "[supervisor]\nrestart_intensity = 101\n", "out of range" },
	{ "[supervisor]\nrestart_period = 60s\n", "could never trip" },
};

/* FM-011 */
START_TEST(test_bad_values)
{
	struct eav_config	cfg;
	char			err[512];

	ck_assert_int_eq(load(bad[_i].text, &cfg, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, bad[_i].expect) != NULL,
	    "\"%s\" does not contain \"%s\"", err, bad[_i].expect);
}
END_TEST

START_TEST(test_missing_file)
{
	struct eav_config	cfg;
	char			err[512];

	ck_assert_int_eq(config_load(&cfg, "/nonexistent/eav.conf", err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "cannot open"));
}
END_TEST

/* eav.conf.example parses and has a line for every option eavd knows. */
START_TEST(test_example_complete)
{
	char	example[512], out[512], line[256], key[128];
	char	*argv[] = { th_bin("eavd"), "-n", "-v", "-f", example,
		    NULL };
	FILE	*fp;
	int	status, options = 0;

	snprintf(example, sizeof(example), "%s/eav.conf.example", th_root());
	snprintf(out, sizeof(out), "%s/example-%d.out", th_tmpdir(),
	    (int)getpid());
	status = th_run(argv, out);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert(th_file_contains(out, "configuration OK"));
	fp = fopen(out, "r");
	ck_assert_ptr_nonnull(fp);
	while (fgets(line, sizeof(line), fp) != NULL) {
		if (sscanf(line, "%127s =", key) != 1 || line[0] == '[' ||
		    strchr(line, '=') == NULL)
			continue;
		options++;
		snprintf(line, sizeof(line), ";%s =", key);
		ck_assert_msg(th_file_contains(example, line),
		    "eav.conf.example lacks option %s", key);
	}
	fclose(fp);
	ck_assert_int_ge(options, 20);
}
END_TEST

/* eavd refuses a bad file and names the option, with EX_CONFIG. */
/* FM-011 */
START_TEST(test_eavd_refuses_bad_config)
{
	char	out[512];
	char	*argv[] = { th_bin("eavd"), "-f", path, NULL };
	int	status;

	write_conf("[worker]\nconcurrency = 0\n");
	snprintf(out, sizeof(out), "%s/refuse-%d.out", th_tmpdir(),
	    (int)getpid());
	status = th_run(argv, out);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), EAV_EXIT_CONFIG);
	ck_assert(th_file_contains(out, "worker.concurrency"));
}
END_TEST

Suite *
suite_config(void)
{
	Suite	*s = suite_create("config");
	TCase	*tc = tcase_create("config");

	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_units_and_env);
	tcase_add_loop_test(tc, test_bad_values, 0,
	    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_missing_file);
	tcase_add_test(tc, test_example_complete);
	tcase_add_test(tc, test_eavd_refuses_bad_config);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	return s;
}
