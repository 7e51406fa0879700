/* eavctl inject and eavctl check: the failure lab's operator commands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"
#include "inject.h"

static int	inject_list(struct ctl *, int, char **);
static int	inject_points(void);
static int	inject_arm_cmd(struct ctl *, int, char **);
static int	inject_disarm(struct ctl *, int, char **);
static int	positive(const char *, const char *, long long);

/* Checks an option's value is a positive integer up to max. */
static int
positive(const char *what, const char *s, long long max)
{
	char		*end;
	long long	 v = strtoll(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v <= 0 || v > max) {
		fprintf(stderr, "eavctl: %s must be an integer from 1 to %lld, "
		    "not \"%s\"\n", what, max, s);
		return -1;
	}
	return 0;
}

/* eavctl inject list [-a]: armed injections (-a: disarmed ones too). */
static int
inject_list(struct ctl *ctl, int argc, char **argv)
{
	static const char *const hdr[] = { "id", "point", "action", "arg",
	    "remaining", "step", "tool", "fired", "state", "armed_by",
	    "armed_at" };
	const char	*params[1] = { "false" };
	PGresult	*res;
	int		 r;

	if (argc == 2 && strcmp(argv[1], "-a") == 0)
		params[0] = "true";
	else if (argc != 1)
		return ctl_usage("inject");
	if ((r = ctl_call(ctl, DB_INJECT_LIST, params, &res)) != 0)
		return r;
	if (PQntuples(res) == 0)
		printf("no injection armed\n");
	else
		table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* eavctl inject points: every point and the actions it takes. */
static int
inject_points(void)
{
	int	p, a;

	for (p = 0; p < INJ_NPOINTS; p++) {
		a = inject_point_actions(p);
		printf("%-40s crash delay:<ms> exit:<code>%s%s\n",
		    inject_point_name(p), a & INJ_ACT_ERROR ? " error" : "",
		    a & INJ_ACT_DROP ? " drop" : "");
	}
	return 0;
}

/*
 * eavctl inject arm [-n count] [-s step] [-t tool] point action[:arg]:
 * checked here as EAV_INJECT would be, then by the table's constraints.
 */
static int
inject_arm_cmd(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[7] = { NULL, NULL, "0", NULL, NULL, NULL,
			    ctl->actor };
	char		 spec[256], err[256], act[64], *colon;
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "n:s:t:")) != -1) {
		if (ch == 'n' && positive("count", optarg, 1000000) == 0)
			params[3] = optarg;
		else if (ch == 's' && positive("step id", optarg,
		    (1LL << 62)) == 0)
			params[4] = optarg;
		else if (ch == 't')
			params[5] = optarg;
		else
			return ch == 'n' || ch == 's' ? EAV_EXIT_USAGE :
			    ctl_usage("inject");
	}
	if (argc - optind != 2)
		return ctl_usage("inject");
	/* Options go in -n, -s, -t here, not after the action as in
	 * EAV_INJECT. */
	if (strchr(argv[optind + 1], ',') != NULL) {
		fprintf(stderr, "eavctl: action \"%s\": give count, step and "
		    "tool with -n, -s and -t; nothing armed\n",
		    argv[optind + 1]);
		return EAV_EXIT_USAGE;
	}
	snprintf(spec, sizeof(spec), "%s=%s", argv[optind], argv[optind + 1]);
	if (inject_validate(spec, err, sizeof(err)) == -1) {
		fprintf(stderr, "eavctl: %s; nothing armed\n", err);
		return EAV_EXIT_USAGE;
	}
	snprintf(act, sizeof(act), "%s", argv[optind + 1]);
	if ((colon = strchr(act, ':')) != NULL) {
		*colon++ = '\0';
		params[2] = colon;
	}
	params[0] = argv[optind];
	params[1] = act;
	if ((r = ctl_call(ctl, DB_INJECT_ARM, params, &res)) != 0)
		return r;
	printf("injection %s armed: %s%s%s%s%s%s%s\n", PQgetvalue(res, 0, 0),
	    spec, params[3] ? ",count=" : "", params[3] ? params[3] : "",
	    params[4] ? ",step=" : "", params[4] ? params[4] : "",
	    params[5] ? ",tool=" : "", params[5] ? params[5] : "");
	PQclear(res);
	return 0;
}

/* eavctl inject disarm id|all */
static int
inject_disarm(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[2] = { NULL, ctl->actor };
	PGresult	*res;
	int		 r;

	if (argc != 2)
		return ctl_usage("inject");
	if (strcmp(argv[1], "all") != 0) {
		if (positive("injection id", argv[1], (1LL << 62)) == -1)
			return EAV_EXIT_USAGE;
		params[0] = argv[1];
	}
	if ((r = ctl_call(ctl, DB_INJECT_DISARM, params, &res)) != 0)
		return r;
	printf("%s injection(s) disarmed\n", PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* eavctl inject list|points|arm|disarm ... */
int
cmd_inject(struct ctl *ctl, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage("inject");
	if (strcmp(argv[1], "list") == 0)
		return inject_list(ctl, argc - 1, argv + 1);
	if (strcmp(argv[1], "points") == 0 && argc == 2)
		return inject_points();
	if (strcmp(argv[1], "arm") == 0)
		return inject_arm_cmd(ctl, argc - 1, argv + 1);
	if (strcmp(argv[1], "disarm") == 0)
		return inject_disarm(ctl, argc - 1, argv + 1);
	return ctl_usage("inject");
}

/*
 * eavctl check [-q]: eav.check_invariants; exits 3 when one is violated.
 * -q says the queue has drained, adding the at-quiescence checks.
 */
int
cmd_check(struct ctl *ctl, int argc, char **argv)
{
	static const char *const hdr[] = { "invariant", "violations",
	    "statement", "sample" };
	const char	*params[1] = { "false" };
	PGresult	*res;
	int		 i, r, bad = 0;

	if (argc == 2 && strcmp(argv[1], "-q") == 0)
		params[0] = "true";
	else if (argc != 1)
		return ctl_usage("check");
	if ((r = ctl_call(ctl, DB_CHECK_INVARIANTS, params, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	for (i = 0; i < PQntuples(res); i++)
		if (strcmp(PQgetvalue(res, i, 1), "0") != 0)
			bad++;
	printf("%d invariant(s) checked, %d violated\n", PQntuples(res), bad);
	PQclear(res);
	return bad > 0 ? EAV_EXIT_VIOLATION : 0;
}
