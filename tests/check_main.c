/*
 * The Check runner: every suite, in fork mode so a crashing test cannot
 * take the runner down.  CK_RUN_SUITE / CK_RUN_CASE select a subset.
 */
#include <stdlib.h>

#include <check.h>

#include "harness.h"

int
main(void)
{
	Suite	*(*const suites[])(void) = { suite_config, suite_schema,
		    suite_transitions, suite_claim, suite_producer, suite_ctl,
		    suite_inject, suite_supervisor, suite_crash, suite_exec,
		    suite_http, suite_mcp, suite_kill,
		    suite_governance, suite_audit, suite_redact,
		    suite_diagnose, suite_schedule, suite_ownership,
		    suite_watcher, suite_events };
	SRunner	*sr = srunner_create(NULL);
	size_t	 i;
	int	 failed;

	for (i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
		if (suites[i] != NULL)
			srunner_add_suite(sr, suites[i]());
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
