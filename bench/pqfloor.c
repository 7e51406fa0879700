/*
 * The memory floor of a libpq client on this machine: connects, runs
 * SELECT 1 and prints a RESULT line with its peak RSS and private memory.
 * It links libpq and libc only, so what it prints is what Debian's libpq
 * (with OpenSSL, GSSAPI and LDAP, and through LDAP gnutls) costs any
 * process that connects, before a line of eav runs: the floor under the
 * eavd RSS target of make bench.
 *   pqfloor DSN
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

/* The value of field name in a /proc file, in KiB; -1 if absent. */
static long
proc_kib(const char *path, const char *name)
{
	char	 line[256];
	FILE	*fp;
	long	 v = -1;
	size_t	 n = strlen(name);

	if ((fp = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (strncmp(line, name, n) == 0 && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	fclose(fp);
	return v;
}

int
main(int argc, char **argv)
{
	PGconn		*conn;
	PGresult	*res;

	if (argc != 2) {
		fprintf(stderr, "usage: pqfloor DSN\n");
		return 2;
	}
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "pqfloor: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return 1;
	}
	res = PQexec(conn, "SELECT 1");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		fprintf(stderr, "pqfloor: %s", PQerrorMessage(conn));
		PQclear(res);
		PQfinish(conn);
		return 1;
	}
	PQclear(res);
	printf("RESULT {\"lib\": \"libpq\", \"test\": \"memory floor\", "
	    "\"rss_kib\": %ld, \"uss_kib\": %ld}\n",
	    proc_kib("/proc/self/status", "VmHWM"),
	    proc_kib("/proc/self/smaps_rollup", "Private_Clean") +
	    proc_kib("/proc/self/smaps_rollup", "Private_Dirty"));
	PQfinish(conn);
	return 0;
}
