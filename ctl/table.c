/*
 * Prints a result as an aligned table, psql-style but narrower: long
 * cells are cut with "..." (the full text is one psql query away).
 */
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "ctl.h"

#define TABLE_MAX_WIDTH	72
#define TABLE_MAX_COLS	16

static int	cell_width(const char *);

static int
cell_width(const char *s)
{
	size_t	n = strlen(s);

	return n > TABLE_MAX_WIDTH ? TABLE_MAX_WIDTH : (int)n;
}

/* Prints res under headers (one per column); indent spaces before rows. */
void
table_print(PGresult *res, const char *const *headers, int indent)
{
	int	 widths[TABLE_MAX_COLS];
	int	 ncols = PQnfields(res), nrows = PQntuples(res), r, c, w;
	const char *v;

	if (ncols > TABLE_MAX_COLS)
		ncols = TABLE_MAX_COLS;
	for (c = 0; c < ncols; c++) {
		widths[c] = cell_width(headers[c]);
		for (r = 0; r < nrows; r++)
			if ((w = cell_width(PQgetvalue(res, r, c))) > widths[c])
				widths[c] = w;
	}
	printf("%*s", indent, "");
	for (c = 0; c < ncols; c++)
		printf("%-*s%s", c == ncols - 1 ? 0 : widths[c], headers[c],
		    c == ncols - 1 ? "\n" : "  ");
	for (r = 0; r < nrows; r++) {
		printf("%*s", indent, "");
		for (c = 0; c < ncols; c++) {
			v = PQgetisnull(res, r, c) ? "-" :
			    PQgetvalue(res, r, c);
			if (strlen(v) > TABLE_MAX_WIDTH)
				printf("%.*s...", TABLE_MAX_WIDTH - 3, v);
			else
				printf("%-*s", c == ncols - 1 ? 0 :
				    widths[c], v);
			printf("%s", c == ncols - 1 ? "\n" : "  ");
		}
	}
	if (nrows == 0)
		printf("%*s(none)\n", indent, "");
}
