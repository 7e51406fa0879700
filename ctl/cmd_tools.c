/*
 * eavctl tools: list the tool registry with health, show one tool,
 * register or change one from a JSON config, reset a tool's health.
 * Every check is eav.tool_register's, which names the field it refuses.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"

static int	tools_list(struct ctl *);
static int	tools_show(struct ctl *, const char *);
static int	tools_register(struct ctl *, int, char **);
static int	tools_reset(struct ctl *, const char *);

/* tools list: one line per tool, with its health. */
static int
tools_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "tool", "kind", "idempotent",
	    "timeout_ms", "health", "errors", "rate_limited_until",
	    "last_error" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_TOOLS_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* tools show name: the registration as one JSON object. */
static int
tools_show(struct ctl *ctl, const char *name)
{
	const char	*params[1] = { name };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_TOOLS_SHOW, params, &res)) != 0)
		return r;
	if (PQntuples(res) == 0) {
		fprintf(stderr, "eavctl: tool \"%s\" does not exist\n", name);
		PQclear(res);
		return EAV_EXIT_FATAL;
	}
	printf("%s\n", PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/*
 * tools register [-i] [-t timeout_ms] [-d description] name kind config:
 * -i marks it idempotent; config is JSON ("-" reads it from stdin).
 */
static int
tools_register(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[7] = { NULL, NULL, NULL, "false", "30000", "",
			    ctl->actor };
	char		 buf[65536];
	size_t		 n;
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "it:d:")) != -1) {
		switch (ch) {
		case 'i':
			params[3] = "true";
			break;
		case 't':
			params[4] = optarg;
			break;
		case 'd':
			params[5] = optarg;
			break;
		default:
			return ctl_usage("tools");
		}
	}
	if (argc - optind != 3)
		return ctl_usage("tools");
	params[0] = argv[optind];
	params[1] = argv[optind + 1];
	params[2] = argv[optind + 2];
	if (strcmp(params[2], "-") == 0) {
		n = fread(buf, 1, sizeof(buf) - 1, stdin);
		if (ferror(stdin) || n == sizeof(buf) - 1) {
			fprintf(stderr, "eavctl: cannot read the config from "
			    "stdin (at most %zu bytes)\n", sizeof(buf) - 2);
			return EAV_EXIT_FATAL;
		}
		buf[n] = '\0';
		params[2] = buf;
	}
	if ((r = ctl_call(ctl, DB_TOOLS_REGISTER, params, &res)) != 0)
		return r;
	PQclear(res);
	printf("tool %s registered\n", params[0]);
	return 0;
}

/* tools reset name: an operator declares the tool available again. */
static int
tools_reset(struct ctl *ctl, const char *name)
{
	const char	*params[2] = { name, ctl->actor };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_TOOLS_RESET, params, &res)) != 0)
		return r;
	printf("tool %s available (was %s)\n", name, PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* eavctl tools list | show | register | reset */
int
cmd_tools(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "list") == 0)
		return tools_list(ctl);
	if (argc == 3 && strcmp(argv[1], "show") == 0)
		return tools_show(ctl, argv[2]);
	if (argc >= 2 && strcmp(argv[1], "register") == 0)
		return tools_register(ctl, argc - 1, argv + 1);
	if (argc == 3 && strcmp(argv[1], "reset") == 0)
		return tools_reset(ctl, argv[2]);
	return ctl_usage("tools");
}
