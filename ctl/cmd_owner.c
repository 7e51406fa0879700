/*
 * eavctl owner: which queue may mutate which resources.  A pattern
 * ending in ':' is a prefix (customer: owns customer:42), any other one
 * exact key; the longest match wins.  Every change needs a reason and is
 * audited; the checks are eav.resource_owner_set's and _clear's (see
 * sql/0018_ownership.sql).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "exitcode.h"

static int	owner_list(struct ctl *);
static int	owner_change(struct ctl *, int, char **, int);

/* owner list: every pattern, its queue and why. */
static int
owner_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "pattern", "queue", "set_by",
	    "set_at", "reason" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_OWNER_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* owner set PATTERN QUEUE --reason R | owner clear PATTERN --reason R */
static int
owner_change(struct ctl *ctl, int argc, char **argv, int set)
{
	static const struct option longopts[] = {
		{ "reason", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 }
	};
	const char	*params[4] = { NULL, NULL, NULL, ctl->actor };
	const char	*reason = NULL;
	PGresult	*res;
	int		 ch, r;

	/*
	 * main's getopt ran in "+" mode (stop at the first operand); 0 makes
	 * glibc start afresh, so --reason may also follow the operands.
	 */
	optind = 0;
	while ((ch = getopt_long(argc, argv, "r:", longopts, NULL)) != -1) {
		if (ch != 'r')
			return ctl_usage("owner");
		reason = optarg;
	}
	if (argc - optind != (set ? 2 : 1))
		return ctl_usage("owner");
	if (reason == NULL) {
		fprintf(stderr, "eavctl: owner %s needs --reason\n", argv[0]);
		return EAV_EXIT_USAGE;
	}
	params[0] = argv[optind];
	params[1] = set ? argv[optind + 1] : reason;
	params[2] = set ? reason : ctl->actor;
	if ((r = ctl_call(ctl, set ? DB_OWNER_SET : DB_OWNER_CLEAR, params,
	    &res)) != 0)
		return r;
	if (set)
		printf("%s now belongs to queue %s (%s)\n", params[0],
		    params[1], PQgetvalue(res, 0, 0));
	else
		printf("%s belongs to no queue now (was %s)\n", params[0],
		    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

int
cmd_owner(struct ctl *ctl, int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "list") == 0)
		return argc <= 2 ? owner_list(ctl) : ctl_usage("owner");
	if (strcmp(argv[1], "set") == 0 || strcmp(argv[1], "clear") == 0)
		return owner_change(ctl, argc - 1, argv + 1,
		    strcmp(argv[1], "set") == 0);
	return ctl_usage("owner");
}
