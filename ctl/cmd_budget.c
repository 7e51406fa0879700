/*
 * eavctl budget: the retry budgets (retries per minute) of queues and
 * tools.  Checks are eav.retry_budget_set's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

static int	budget_list(struct ctl *);
static int	budget_set(struct ctl *, int, char **, int);

static int
budget_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "budget", "per_min",
	    "used_this_window", "window_start", "set_by" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_BUDGET_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* budget set (-q queue | -t tool) per_min | budget clear (-q | -t) */
static int
budget_set(struct ctl *ctl, int argc, char **argv, int clear)
{
	const char	*params[4] = { NULL, NULL, NULL, ctl->actor };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "q:t:")) != -1) {
		if ((ch != 'q' && ch != 't') || params[0] != NULL)
			return ctl_usage("budget");
		params[0] = ch == 'q' ? "queue" : "tool";
		params[1] = optarg;
	}
	if (params[0] == NULL || argc - optind != (clear ? 0 : 1))
		return ctl_usage("budget");
	params[2] = clear ? NULL : argv[optind];
	if ((r = ctl_call(ctl, DB_BUDGET_SET, params, &res)) != 0)
		return r;
	PQclear(res);
	if (clear)
		printf("%s %s: no retry budget\n", params[0], params[1]);
	else
		printf("%s %s: at most %s retries a minute\n", params[0],
		    params[1], params[2]);
	return 0;
}

int
cmd_budget(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "list") == 0))
		return budget_list(ctl);
	if (strcmp(argv[1], "set") == 0 || strcmp(argv[1], "clear") == 0)
		return budget_set(ctl, argc - 1, argv + 1,
		    strcmp(argv[1], "clear") == 0);
	return ctl_usage("budget");
}
