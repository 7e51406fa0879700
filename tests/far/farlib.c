/* See farlib.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "farlib.h"

const char	*far_prog = "far";

/* Exit 2 with a message: a far side has no recovery of its own. */
void
far_die(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: ", far_prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

long long
far_num(json_t *in, const char *key, long long dflt)
{
	json_t	*v = json_object_get(in, key);

	return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

const char *
far_str(json_t *in, const char *key, const char *dflt)
{
	json_t	*v = json_object_get(in, key);

	return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Writes text to path through a rename, so a reader sees all or nothing. */
void
far_write_pidfile(const char *path, const char *text)
{
	char	 tmp[4096];
	FILE	*fp;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((fp = fopen(tmp, "w")) == NULL)
		far_die("%s: %s", tmp, strerror(errno));
	fputs(text, fp);
	if (fclose(fp) != 0 || rename(tmp, path) == -1)
		far_die("%s: %s", path, strerror(errno));
}

/*
 * One statement: the delivery (far_deliveries) and, for an idempotent far
 * side, the key's first effect (far_effects) commit together; with every,
 * each delivery is an effect.  Returns 1 if this delivery had the effect.
 */
int
far_record(PGconn *c, const char *key, const char *step, const char *att,
    int every)
{
	char		 pid[16];
	const char	*params[5] = { key, step, att, pid, every ? "t" : "f" };
	PGresult	*res;
	int		 effect;

	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	res = PQexecParams(c, "WITH d AS (INSERT INTO far_deliveries "
	    "(key, step, attempt, pid) VALUES ($1, $2::bigint, $3::int, "
	    "$4::int)), e AS (INSERT INTO far_effects (key, step, attempt) "
	    "SELECT $1, $2::bigint, $3::int WHERE NOT $5::boolean "
	    "ON CONFLICT (key) DO NOTHING RETURNING 1) "
	    "SELECT $5::boolean OR EXISTS (SELECT 1 FROM e)", 5, NULL, params,
	    NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		far_die("record: %s", PQerrorMessage(c));
	effect = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return effect;
}
