/*
 * eavctl redaction: the redaction policy of sql/0014_redaction.sql.
 * Rules are added and disabled, never removed (the record of what was
 * redacted, and why, must outlive the rule); checks are
 * eav.redaction_rule_add's and eav.redaction_rule_disable's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

static int	redaction_list(struct ctl *, int, char **);
static int	redaction_add(struct ctl *, int, char **);
static int	redaction_disable(struct ctl *, int, char **);

/* redaction [list] [-a]: enabled rules, or every rule with -a. */
static int
redaction_list(struct ctl *ctl, int argc, char **argv)
{
	static const char *const hdr[] = { "label", "kind", "state",
	    "pattern", "hints", "by", "description" };
	const char	*params[1] = { "false" };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "a")) != -1) {
		if (ch != 'a')
			return ctl_usage("redaction");
		params[0] = "true";
	}
	if (argc != optind)
		return ctl_usage("redaction");
	if ((r = ctl_call(ctl, DB_REDACTION_LIST, params, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* redaction add [-h hint,...] [-m description] KIND LABEL PATTERN */
static int
redaction_add(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[6] = { NULL, NULL, NULL, NULL, "",
	    ctl->actor };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "h:m:")) != -1) {
		if (ch == 'h')
			params[3] = optarg;
		else if (ch == 'm')
			params[4] = optarg;
		else
			return ctl_usage("redaction");
	}
	if (argc - optind != 3)
		return ctl_usage("redaction");
	params[0] = argv[optind];
	params[1] = argv[optind + 1];
	params[2] = argv[optind + 2];
	if ((r = ctl_call(ctl, DB_REDACTION_ADD, params, &res)) != 0)
		return r;
	printf("redaction rule %s (%s) added, id %s\n", params[1], params[0],
	    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* redaction disable LABEL REASON */
static int
redaction_disable(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[3] = { NULL, NULL, ctl->actor };
	PGresult	*res;
	int		 r;

	if (argc != 3)
		return ctl_usage("redaction");
	params[0] = argv[1];
	params[1] = argv[2];
	if ((r = ctl_call(ctl, DB_REDACTION_DISABLE, params, &res)) != 0)
		return r;
	PQclear(res);
	printf("redaction rule %s disabled\n", params[0]);
	return 0;
}

int
cmd_redaction(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || argv[1][0] == '-')
		return redaction_list(ctl, argc, argv);
	if (strcmp(argv[1], "list") == 0)
		return redaction_list(ctl, argc - 1, argv + 1);
	if (strcmp(argv[1], "add") == 0)
		return redaction_add(ctl, argc - 1, argv + 1);
	if (strcmp(argv[1], "disable") == 0)
		return redaction_disable(ctl, argc - 1, argv + 1);
	return ctl_usage("redaction");
}
