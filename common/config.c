/*
 * Configuration table and loader.  A file is parsed into a fresh struct;
 * the caller swaps it in only when config_load() succeeded, so a bad
 * reload leaves the running configuration untouched.  Unknown sections or
 * keys, duplicate keys and out-of-range values are errors naming the file,
 * the line and the option.  EAV_DSN in the environment overrides
 * database.dsn.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"
#include "log.h"
#include "xalloc.h"

enum cfg_type { CFG_INT, CFG_DURATION, CFG_BOOL, CFG_STRING, CFG_LEVEL };

struct cfg_option {
	const char	*section;
	const char	*name;
	enum cfg_type	 type;
	size_t		 offset;
	const char	*def;
	long long	 min, max;	/* ints: value; durations: ms */
	int		 reloadable;
};

#define OPT(sec, nm, ty, field, def, mn, mx, rl)			\
	{ sec, nm, ty, offsetof(struct eav_config, field), def, mn, mx, rl }

static const struct cfg_option options[] = {
	OPT("database", "dsn", CFG_STRING, dsn, "dbname=eav", 0, 4096, 0),
	OPT("database", "child_roles", CFG_BOOL, child_roles, "on", 0, 1, 0),
	OPT("log", "level", CFG_LEVEL, log_level, "info", 0, 0, 1),
	OPT("supervisor", "node_name", CFG_STRING, node_name, "", 0, 63, 0),
	OPT("supervisor", "workers", CFG_INT, workers, "4", 1, 64, 1),
	OPT("supervisor", "restart_backoff_min", CFG_DURATION,
	    restart_backoff_min, "100ms", 1, 60000, 1),
	OPT("supervisor", "restart_backoff_max", CFG_DURATION,
	    restart_backoff_max, "30s", 1, 3600000, 1),
	OPT("supervisor", "restart_intensity", CFG_INT, restart_intensity,
	    "10", 0, 100, 1),
	OPT("supervisor", "restart_period", CFG_DURATION, restart_period,
	    "5m", 1000, 86400000, 1),
	OPT("supervisor", "restart_stable", CFG_DURATION, restart_stable,
	    "10s", 0, 86400000, 1),
	OPT("supervisor", "shutdown_grace", CFG_DURATION, shutdown_grace,
	    "10s", 0, 3600000, 1),
	OPT("supervisor", "startup_timeout", CFG_DURATION, startup_timeout,
	    "30s", 100, 3600000, 1),
	OPT("supervisor", "sweep_interval", CFG_DURATION, sweep_interval,
	    "5s", 100, 3600000, 1),
	OPT("worker", "concurrency", CFG_INT, worker_concurrency, "50",
	    1, 10000, 1),
	OPT("worker", "batch_size", CFG_INT, worker_batch_size, "50",
	    1, 10000, 1),
	OPT("worker", "poll_interval", CFG_DURATION, worker_poll_interval,
	    "1s", 10, 3600000, 1),
	OPT("worker", "queues", CFG_STRING, worker_queues, "", 0, 4096, 1),
	OPT("worker", "reconnect_max", CFG_DURATION, worker_reconnect_max,
	    "2s", 10, 600000, 1),
	OPT("worker", "db_lost_exit", CFG_DURATION, worker_db_lost_exit,
	    "60s", 1000, 86400000, 1),
	OPT("producer", "batch_size", CFG_INT, producer_batch_size, "100",
	    1, 10000, 1),
	OPT("producer", "poll_interval", CFG_DURATION, producer_poll_interval,
	    "1s", 10, 3600000, 1),
	OPT("producer", "demo", CFG_BOOL, producer_demo, "off", 0, 1, 1),
	OPT("producer", "demo_rate", CFG_INT, producer_demo_rate, "20",
	    1, 10000, 1),
	OPT("producer", "schedule_interval", CFG_DURATION,
	    producer_schedule_interval, "60s", 100, 3600000, 1),
	OPT("producer", "classifier", CFG_STRING, producer_classifier, "",
	    0, 128, 1),
	OPT("audit", "seal_interval", CFG_DURATION, audit_seal_interval,
	    "200ms", 10, 60000, 1),
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

struct cfg_parse {
	struct eav_config	*cfg;
	FILE			*fp;
	int			 lineno;
	const char		*path;
	char			*err;
	size_t			 errlen;
	int			 failed;
	unsigned char		 seen[NOPTIONS];
};

static const struct cfg_option *cfg_find(const char *, const char *);
static int	cfg_set(struct eav_config *, const struct cfg_option *,
		    const char *, char *, size_t);
static int	cfg_parse_duration(const char *, long long *);
static int	cfg_parse_bool(const char *, int *);
static int	cfg_handler(void *, const char *, const char *, const char *);
static char	*cfg_reader(char *, int, void *);
static int	cfg_check(struct eav_config *, char *, size_t);
static int	cfg_check_intensity(const struct eav_config *, char *, size_t);
static void	cfg_print_value(const struct eav_config *,
		    const struct cfg_option *, FILE *, int);
static void	cfg_defaults(struct eav_config *);
static int	cfg_decode_line(struct eav_config *, char *, char *, size_t);
static int	cfg_read_full(int, char *, size_t);

static const struct cfg_option *
cfg_find(const char *section, const char *name)
{
	size_t	i;

	for (i = 0; i < NOPTIONS; i++)
		if (strcmp(options[i].section, section) == 0 &&
		    strcmp(options[i].name, name) == 0)
			return &options[i];
	return NULL;
}

/* Parses "250ms", "30s", "5m", "1h" (or "0") into milliseconds. */
static int
cfg_parse_duration(const char *s, long long *ms)
{
	char		*end;
	long long	 v, mul;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || v < 0)
		return -1;
	if (*end == '\0')
		mul = v == 0 ? 1 : -1;
	else if (strcmp(end, "ms") == 0)
		mul = 1;
	else if (strcmp(end, "s") == 0)
		mul = 1000;
	else if (strcmp(end, "m") == 0)
		mul = 60000;
	else if (strcmp(end, "h") == 0)
		mul = 3600000;
	else
		mul = -1;
	if (mul < 0 || v > LLONG_MAX / mul)
		return -1;
	*ms = v * mul;
	return 0;
}

static int
cfg_parse_bool(const char *s, int *b)
{
	if (strcasecmp(s, "on") == 0 || strcasecmp(s, "true") == 0 ||
	    strcasecmp(s, "yes") == 0 || strcmp(s, "1") == 0)
		*b = 1;
	else if (strcasecmp(s, "off") == 0 || strcasecmp(s, "false") == 0 ||
	    strcasecmp(s, "no") == 0 || strcmp(s, "0") == 0)
		*b = 0;
	else
		return -1;
	return 0;
}

/* Stores one option's value; on error writes a message without location. */
static int
cfg_set(struct eav_config *cfg, const struct cfg_option *o, const char *v,
    char *err, size_t errlen)
{
	char		*p = (char *)cfg + o->offset;
	char		*end;
	long long	 n = 0;
	int		 b;

	switch (o->type) {
	case CFG_STRING:
		if (strlen(v) > (size_t)o->max) {
			snprintf(err, errlen, "value longer than %lld bytes",
			    o->max);
			return -1;
		}
		free(*(char **)p);
		*(char **)p = xstrdup(v);
		return 0;
	case CFG_BOOL:
		if (cfg_parse_bool(v, &b) == -1) {
			snprintf(err, errlen, "\"%s\" is not on or off", v);
			return -1;
		}
		*(int *)p = b;
		return 0;
	case CFG_LEVEL:
		if ((b = log_level_parse(v)) == -1) {
			snprintf(err, errlen, "\"%s\" is not one of debug, "
			    "info, notice, warning, error", v);
			return -1;
		}
		*(int *)p = b;
		return 0;
	case CFG_DURATION:
		if (cfg_parse_duration(v, &n) == -1) {
			snprintf(err, errlen, "\"%s\" is not a duration "
			    "(a number with ms, s, m or h)", v);
			return -1;
		}
		break;
	case CFG_INT:
		errno = 0;
		n = strtoll(v, &end, 10);
		if (errno != 0 || end == v || *end != '\0') {
			snprintf(err, errlen, "\"%s\" is not an integer", v);
			return -1;
		}
		break;
	}
	if (n < o->min || n > o->max) {
		snprintf(err, errlen, "%s is out of range [%lld, %lld]%s", v,
		    o->min, o->max, o->type == CFG_DURATION ? " ms" : "");
		return -1;
	}
	*(int *)p = (int)n;
	return 0;
}

/* Reads a line for inih, counting lines: inih's handler gets none. */
static char *
cfg_reader(char *buf, int size, void *arg)
{
	struct cfg_parse	*cp = arg;
	char			*r;

	if ((r = fgets(buf, size, cp->fp)) != NULL)
		cp->lineno++;
	return r;
}

static int
cfg_handler(void *arg, const char *section, const char *name,
    const char *value)
{
	struct cfg_parse	*cp = arg;
	const struct cfg_option	*o;
	char			 msg[256];
	int			 lineno = cp->lineno;

	if (cp->failed)
		return 1;
	if ((o = cfg_find(section, name)) == NULL) {
		snprintf(cp->err, cp->errlen, "%s:%d: unknown option %s.%s",
		    cp->path, lineno, section, name);
		cp->failed = 1;
		return 1;
	}
	if (cp->seen[o - options]++) {
		snprintf(cp->err, cp->errlen, "%s:%d: option %s.%s given "
		    "twice", cp->path, lineno, section, name);
		cp->failed = 1;
		return 1;
	}
	if (cfg_set(cp->cfg, o, value, msg, sizeof(msg)) == -1) {
		snprintf(cp->err, cp->errlen, "%s:%d: option %s.%s: %s",
		    cp->path, lineno, section, name, msg);
		cp->failed = 1;
	}
	return 1;
}

/*
 * With back-off between restarts, restart_intensity + 1 crashes of one
 * slot take at least the sum of intensity back-offs; if that exceeds
 * restart_period the limit could never trip for a kind with one slot.
 */
static int
cfg_check_intensity(const struct eav_config *cfg, char *err, size_t errlen)
{
	long long	need = 0, b = cfg->restart_backoff_min;
	int		i;

	for (i = 0; i < cfg->restart_intensity; i++) {
		need += b;
		b = b * 2 > cfg->restart_backoff_max ?
		    cfg->restart_backoff_max : b * 2;
	}
	if (need <= cfg->restart_period)
		return 0;
	snprintf(err, errlen, "supervisor.restart_intensity: %d restarts "
	    "with back-off from restart_backoff_min to restart_backoff_max "
	    "take at least %lld ms, more than restart_period (%d ms), so the "
	    "limit could never trip", cfg->restart_intensity, need,
	    cfg->restart_period);
	return -1;
}

/* Cross-option checks and derived defaults. */
static int
cfg_check(struct eav_config *cfg, char *err, size_t errlen)
{
	char	host[256];
	const char *q;

	if (strpbrk(cfg->dsn, "\r\n") != NULL ||
	    strpbrk(cfg->node_name, "\r\n") != NULL) {
		snprintf(err, errlen, "database.dsn and supervisor.node_name "
		    "must be one line");
		return -1;
	}
	if (cfg->restart_backoff_max < cfg->restart_backoff_min) {
		snprintf(err, errlen, "supervisor.restart_backoff_max is "
		    "less than supervisor.restart_backoff_min");
		return -1;
	}
	if (cfg_check_intensity(cfg, err, errlen) == -1)
		return -1;
	for (q = cfg->worker_queues; *q != '\0'; q++)
		if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') ||
		    *q == '_' || *q == '.' || *q == '-' || *q == ',')) {
			snprintf(err, errlen, "worker.queues: \"%s\" is not "
			    "a comma-separated list of queue names",
			    cfg->worker_queues);
			return -1;
		}
	if (cfg->node_name[0] == '\0') {
		if (gethostname(host, sizeof(host)) == -1)
			snprintf(host, sizeof(host), "localhost");
		host[63] = '\0';
		free(cfg->node_name);
		cfg->node_name = xstrdup(host);
	}
	return 0;
}

/* Sets every option to its default; defaults live only in the table. */
static void
cfg_defaults(struct eav_config *cfg)
{
	char	err[256];
	size_t	i;

	memset(cfg, 0, sizeof(*cfg));
	for (i = 0; i < NOPTIONS; i++)
		if (cfg_set(cfg, &options[i], options[i].def, err,
		    sizeof(err)) == -1)
			fatalx("default of %s.%s: %s", options[i].section,
			    options[i].name, err);
}

/*
 * Loads defaults, then the file (if path is not NULL), then EAV_DSN.
 * Returns 0, or -1 with a message in err; cfg is then freed.
 */
int
config_load(struct eav_config *cfg, const char *path, char *err,
    size_t errlen)
{
	struct cfg_parse	 cp;
	const char		*dsn;
	int			 r;

	cfg_defaults(cfg);
	if (path != NULL) {
		memset(&cp, 0, sizeof(cp));
		cp.cfg = cfg;
		cp.path = path;
		cp.err = err;
		cp.errlen = errlen;
		if ((cp.fp = fopen(path, "r")) == NULL) {
			snprintf(err, errlen, "%s: cannot open: %s", path,
			    strerror(errno));
			config_free(cfg);
			return -1;
		}
		r = ini_parse_stream(cfg_reader, &cp, cfg_handler, &cp);
		fclose(cp.fp);
		if (r == -1 || r == -2)
			snprintf(err, errlen, "%s: cannot read", path);
		else if (r > 0 && !cp.failed)
			snprintf(err, errlen, "%s:%d: syntax error", path, r);
		if (r != 0 || cp.failed) {
			config_free(cfg);
			return -1;
		}
		cfg->path = xstrdup(path);
	}
	if ((dsn = getenv("EAV_DSN")) != NULL && *dsn != '\0') {
		free(cfg->dsn);
		cfg->dsn = xstrdup(dsn);
	}
	if (cfg_check(cfg, err, errlen) == -1) {
		config_free(cfg);
		return -1;
	}
	return 0;
}

/* Frees the strings of a configuration. */
void
config_free(struct eav_config *cfg)
{
	size_t	i;

	for (i = 0; i < NOPTIONS; i++)
		if (options[i].type == CFG_STRING) {
			free(*(char **)((char *)cfg + options[i].offset));
			*(char **)((char *)cfg + options[i].offset) = NULL;
		}
	free(cfg->path);
	cfg->path = NULL;
}

static void
cfg_print_value(const struct eav_config *cfg, const struct cfg_option *o,
    FILE *fp, int reveal)
{
	const char	*p = (const char *)cfg + o->offset;
	int		 v;

	switch (o->type) {
	case CFG_STRING:
		/* A DSN may carry a password: never print it. */
		if (!reveal && strcmp(o->name, "dsn") == 0 &&
		    strstr(*(char *const *)p, "password") != NULL)
			fprintf(fp, "(hidden: contains a password)");
		else
			fprintf(fp, "%s", *(char *const *)p);
		break;
	case CFG_BOOL:
		fprintf(fp, "%s", *(const int *)p ? "on" : "off");
		break;
	case CFG_LEVEL:
		fprintf(fp, "%s", log_level_name(*(const int *)p));
		break;
	case CFG_DURATION:
		v = *(const int *)p;
		if (v != 0 && v % 1000 == 0)
			fprintf(fp, "%ds", v / 1000);
		else
			fprintf(fp, "%dms", v);
		break;
	case CFG_INT:
		fprintf(fp, "%d", *(const int *)p);
		break;
	}
}

/* Prints the effective configuration as an INI file. */
void
config_print(const struct eav_config *cfg, FILE *fp)
{
	const char	*sec = "";
	size_t		 i;

	for (i = 0; i < NOPTIONS; i++) {
		if (strcmp(sec, options[i].section) != 0) {
			sec = options[i].section;
			fprintf(fp, "%s[%s]\n", i ? "\n" : "", sec);
		}
		fprintf(fp, "%s = ", options[i].name);
		cfg_print_value(cfg, &options[i], fp, 0);
		fprintf(fp, "\n");
	}
}

/*
 * Names in err the first option that differs between two configurations
 * but cannot change without a restart; returns 0 if there is none.
 */
int
config_reloadable_diff(const struct eav_config *a,
    const struct eav_config *b, char *err, size_t errlen)
{
	const struct cfg_option	*o;
	const char		*pa, *pb;
	size_t			 i;
	int			 differ;

	for (i = 0; i < NOPTIONS; i++) {
		o = &options[i];
		if (o->reloadable)
			continue;
		pa = (const char *)a + o->offset;
		pb = (const char *)b + o->offset;
		if (o->type == CFG_STRING)
			differ = strcmp(*(char *const *)pa,
			    *(char *const *)pb) != 0;
		else
			differ = *(const int *)pa != *(const int *)pb;
		if (differ) {
			snprintf(err, errlen, "%s.%s", o->section, o->name);
			return 1;
		}
	}
	return 0;
}

/*
 * eavd hands each child the configuration it validated, so a child never
 * parses a file eavd has not accepted (a reload is whole or nothing).  On
 * fd 3: "eav-config <n>\n" and n bytes of "section.name=value" lines.
 */
int
config_send(int fd, const struct eav_config *cfg)
{
	char	*text = NULL, head[64];
	size_t	 len = 0, i, off;
	ssize_t	 n;
	FILE	*fp;
	int	 hl;

	if ((fp = open_memstream(&text, &len)) == NULL)
		fatal("open_memstream");
	for (i = 0; i < NOPTIONS; i++) {
		fprintf(fp, "%s.%s=", options[i].section, options[i].name);
		cfg_print_value(cfg, &options[i], fp, 1);
		fputc('\n', fp);
	}
	if (fclose(fp) != 0)
		fatal("open_memstream");
	hl = snprintf(head, sizeof(head), "eav-config %zu\n", len);
	for (off = 0; off < (size_t)hl; off += (size_t)n)
		if ((n = write(fd, head + off, (size_t)hl - off)) <= 0)
			goto fail;
	for (off = 0; off < len; off += (size_t)n)
		if ((n = write(fd, text + off, len - off)) <= 0)
			goto fail;
	explicit_bzero(text, len);	/* the DSN may hold a password */
	free(text);
	return 0;
fail:
	explicit_bzero(text, len);
	free(text);
	return -1;
}

/* Reads exactly len bytes; -1 on EOF or error. */
static int
cfg_read_full(int fd, char *buf, size_t len)
{
	size_t	off;
	ssize_t	n;

	for (off = 0; off < len; off += (size_t)n) {
		n = read(fd, buf + off, len - off);
		if (n == -1 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n <= 0)
			return -1;
	}
	return 0;
}

static int
cfg_decode_line(struct eav_config *cfg, char *line, char *err, size_t errlen)
{
	const struct cfg_option	*o;
	char			*eq, *dot, msg[256];

	if ((eq = strchr(line, '=')) == NULL ||
	    (dot = strchr(line, '.')) == NULL || dot > eq) {
		snprintf(err, errlen, "malformed configuration line from eavd");
		return -1;
	}
	*eq = *dot = '\0';
	if ((o = cfg_find(line, dot + 1)) == NULL) {
		snprintf(err, errlen, "unknown option %s.%s from eavd", line,
		    dot + 1);
		return -1;
	}
	if (cfg_set(cfg, o, eq + 1, msg, sizeof(msg)) == -1) {
		snprintf(err, errlen, "option %s.%s from eavd: %s", line,
		    dot + 1, msg);
		return -1;
	}
	return 0;
}

/* Receives the configuration config_send wrote; 0, or -1 with err. */
int
config_receive(int fd, struct eav_config *cfg, char *err, size_t errlen)
{
	char	head[64], *text, *line, *save;
	size_t	i, len;
	int	r = 0;

	for (i = 0; i < sizeof(head) - 1; i++)
		if (cfg_read_full(fd, head + i, 1) == -1 || head[i] == '\n')
			break;
	head[i] = '\0';
	if (sscanf(head, "eav-config %zu", &len) != 1 || len > 65536) {
		snprintf(err, errlen, "no configuration from eavd on fd 3");
		return -1;
	}
	text = xcalloc(1, len + 1);
	if (cfg_read_full(fd, text, len) == -1) {
		snprintf(err, errlen, "configuration from eavd cut short");
		free(text);
		return -1;
	}
	cfg_defaults(cfg);
	for (line = strtok_r(text, "\n", &save); line != NULL && r == 0;
	    line = strtok_r(NULL, "\n", &save))
		r = cfg_decode_line(cfg, line, err, errlen);
	explicit_bzero(text, len);
	free(text);
	if (r == 0)
		r = cfg_check(cfg, err, errlen);
	if (r == -1)
		config_free(cfg);
	return r;
}
