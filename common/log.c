/*
 * Log lines go to stderr only; journald or the terminal owns storage.
 * A line is "2026-11-23T10:52:01.123Z warning eav-worker[123]: message
 * key=value", or "<4>eav-worker[123]: message key=value" when stderr is the
 * journal (JOURNAL_STREAM matches it), since journald adds the time.
 * Each line is written with a single write(2) so that lines of the
 * processes sharing stderr do not interleave.  errno is preserved.
 */
#include <sys/stat.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "exitcode.h"
#include "log.h"

int		 log_level = LOG_LVL_INFO;
static char	 log_name[32] = "eav";
static int	 log_journal;

static const char *const level_names[] = {
	[LOG_LVL_CRIT] = "crit", [LOG_LVL_ERR] = "error",
	[LOG_LVL_WARNING] = "warning", [LOG_LVL_NOTICE] = "notice",
	[LOG_LVL_INFO] = "info", [LOG_LVL_DEBUG] = "debug",
};

static void	log_vemit(int, const char *, va_list, int);

/* Sets the process name and detects whether stderr is the journal. */
void
log_init(const char *progname)
{
	const char		*js;
	struct stat		 st;
	unsigned long long	 dev, ino;

	snprintf(log_name, sizeof(log_name), "%s", progname);
	js = getenv("JOURNAL_STREAM");
	if (js != NULL && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
	    fstat(STDERR_FILENO, &st) == 0 &&
	    (unsigned long long)st.st_dev == dev &&
	    (unsigned long long)st.st_ino == ino)
		log_journal = 1;
}

/* Returns the name given to log_init. */
const char *
log_procname(void)
{
	return log_name;
}

/* Parses a level name; returns -1 if unknown. */
int
log_level_parse(const char *s)
{
	size_t	i;

	for (i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (level_names[i] != NULL && strcmp(s, level_names[i]) == 0)
			return (int)i;
	return -1;
}

/* Returns the name of a level. */
const char *
log_level_name(int level)
{
	if (level < LOG_LVL_CRIT || level > LOG_LVL_DEBUG)
		return "?";
	return level_names[level];
}

static void
log_vemit(int level, const char *fmt, va_list ap, int with_errno)
{
	char		 buf[2048];
	struct timespec	 ts;
	struct tm	 tm;
	size_t		 n = 0;
	int		 saved = errno, r;

	if (level > log_level)
		return;
	if (log_journal)
		r = snprintf(buf, sizeof(buf), "<%d>%s[%d]: ", level,
		    log_name, (int)getpid());
	else {
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		r = snprintf(buf, sizeof(buf),
		    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s[%d]: ",
		    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		    tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
		    log_level_name(level), log_name, (int)getpid());
	}
	if (r > 0)
		n = (size_t)r < sizeof(buf) ? (size_t)r : sizeof(buf) - 1;
	r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	if (r > 0)
		n += (size_t)r < sizeof(buf) - n ? (size_t)r :
		    sizeof(buf) - n - 1;
	if (with_errno && n < sizeof(buf) - 1) {
		r = snprintf(buf + n, sizeof(buf) - n, ": %s",
		    strerror(saved));
		if (r > 0)
			n += (size_t)r < sizeof(buf) - n ? (size_t)r :
			    sizeof(buf) - n - 1;
	}
	/* Keep one event on one line, whatever the message contained. */
	for (size_t i = 0; i < n; i++)
		if (buf[i] == '\n' || buf[i] == '\r')
			buf[i] = ' ';
	if (n >= sizeof(buf) - 1)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	(void)!write(STDERR_FILENO, buf, n);
	errno = saved;
}

/* Logs at the given level. */
void
log_emit(int level, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vemit(level, fmt, ap, 0);
	va_end(ap);
}

#define LOG_FN(name, level, with_errno)					\
void									\
name(const char *fmt, ...)						\
{									\
	va_list	ap;							\
									\
	va_start(ap, fmt);						\
	log_vemit(level, fmt, ap, with_errno);				\
	va_end(ap);							\
}

LOG_FN(log_warn, LOG_LVL_WARNING, 1)
LOG_FN(log_warnx, LOG_LVL_WARNING, 0)
LOG_FN(log_error, LOG_LVL_ERR, 0)
LOG_FN(log_notice, LOG_LVL_NOTICE, 0)
LOG_FN(log_info, LOG_LVL_INFO, 0)

/* Logs at crit with strerror(errno) and exits EAV_EXIT_FATAL. */
void
fatal(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vemit(LOG_LVL_CRIT, fmt, ap, 1);
	va_end(ap);
	exit(EAV_EXIT_FATAL);
}

/* Logs at crit and exits EAV_EXIT_FATAL. */
void
fatalx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vemit(LOG_LVL_CRIT, fmt, ap, 0);
	va_end(ap);
	exit(EAV_EXIT_FATAL);
}
