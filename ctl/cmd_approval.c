/*
 * eavctl approvals: the open approvals; approve or deny one; set a
 * tool's approval policy.  The checks (expired, decided, four eyes) are
 * eav.approval_approve's and eav.approval_deny's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

static int	approvals_list(struct ctl *);
static int	approvals_decide(struct ctl *, int, char **, int);
static int	approvals_policy(struct ctl *, const char *, const char *);

static int
approvals_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "id", "step", "task", "tool",
	    "requested_by", "expires_at", "four_eyes" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_APPROVALS_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* approve [-n note] id | deny -r reason id */
static int
approvals_decide(struct ctl *ctl, int argc, char **argv, int approve)
{
	const char	*params[3] = { NULL, ctl->actor, NULL };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, approve ? "n:" : "r:")) != -1) {
		if (ch == '?')
			return ctl_usage("approvals");
		params[2] = optarg;
	}
	if (argc - optind != 1)
		return ctl_usage("approvals");
	params[0] = argv[optind];
	if ((r = ctl_call(ctl, approve ? DB_APPROVAL_APPROVE :
	    DB_APPROVAL_DENY, params, &res)) != 0)
		return r;
	PQclear(res);
	printf("approval %s %s\n", params[0], approve ? "approved" : "denied");
	return 0;
}

/* policy tool json|off */
static int
approvals_policy(struct ctl *ctl, const char *tool, const char *policy)
{
	const char	*params[3] = { tool, NULL, ctl->actor };
	PGresult	*res;
	int		 r;

	if (strcmp(policy, "off") != 0)
		params[1] = policy;
	if ((r = ctl_call(ctl, DB_APPROVAL_POLICY, params, &res)) != 0)
		return r;
	if (PQgetisnull(res, 0, 0))
		printf("tool %s: no approval needed\n", tool);
	else
		printf("tool %s: approval %s\n", tool, PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

int
cmd_approvals(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "list") == 0))
		return approvals_list(ctl);
	if (strcmp(argv[1], "approve") == 0 || strcmp(argv[1], "deny") == 0)
		return approvals_decide(ctl, argc - 1, argv + 1,
		    strcmp(argv[1], "approve") == 0);
	if (argc == 4 && strcmp(argv[1], "policy") == 0)
		return approvals_policy(ctl, argv[2], argv[3]);
	return ctl_usage("approvals");
}
