/*
 * eavctl kill-switch: engage or release a kill switch (global, one queue
 * or one tool) with a reason, or list them.  Engaging returns once every
 * claim in flight has committed: from then on nothing of the scope is
 * claimed (see sql/0010_kill_switch.sql).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "exitcode.h"

static int	kill_list(struct ctl *);
static int	kill_set(struct ctl *, int, char **);

static int
kill_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "switch", "state", "generation",
	    "changed_by", "changed_at", "reason" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_KILL_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* kill-switch on|off [--queue Q | --tool T] --reason R */
static int
kill_set(struct ctl *ctl, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "queue", required_argument, NULL, 'q' },
		{ "tool", required_argument, NULL, 't' },
		{ "reason", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 }
	};
	const char	*params[5] = { NULL, "global", NULL, NULL, ctl->actor };
	PGresult	*res;
	int		 ch, r;

	params[0] = strcmp(argv[0], "on") == 0 ? "true" : "false";
	while ((ch = getopt_long(argc, argv, "q:t:r:", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'q':
		case 't':
			if (params[2] != NULL)
				return ctl_usage("kill-switch");
			params[1] = ch == 'q' ? "queue" : "tool";
			params[2] = optarg;
			break;
		case 'r':
			params[3] = optarg;
			break;
		default:
			return ctl_usage("kill-switch");
		}
	}
	if (optind != argc || params[3] == NULL) {
		fprintf(stderr, "eavctl: kill-switch %s needs --reason\n",
		    argv[0]);
		return EAV_EXIT_USAGE;
	}
	if ((r = ctl_call(ctl, DB_KILL_SET, params, &res)) != 0)
		return r;
	printf("kill switch %s%s%s %s (generation %s)\n", params[1],
	    params[2] ? " " : "", params[2] ? params[2] : "",
	    params[0][0] == 't' ? "engaged" : "released",
	    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

int
cmd_kill(struct ctl *ctl, int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "list") == 0)
		return argc <= 2 ? kill_list(ctl) : ctl_usage("kill-switch");
	if (strcmp(argv[1], "on") == 0 || strcmp(argv[1], "off") == 0)
		return kill_set(ctl, argc - 1, argv + 1);
	return ctl_usage("kill-switch");
}
