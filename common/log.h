/*
 * Logging: one line per event on stderr, with journald priority prefixes
 * when stderr is the journal.  Each process calls log_init() once, first.
 */
#ifndef EAV_COMMON_LOG_H
#define EAV_COMMON_LOG_H

#include <stdarg.h>

/* sd-daemon(3) priorities. */
#define LOG_LVL_CRIT	2
#define LOG_LVL_ERR	3
#define LOG_LVL_WARNING	4
#define LOG_LVL_NOTICE	5
#define LOG_LVL_INFO	6
#define LOG_LVL_DEBUG	7

extern int	log_level;

void	log_init(const char *progname);
const char *log_procname(void);
int	log_level_parse(const char *);
const char *log_level_name(int);
void	log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_error(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_notice(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_emit(int, const char *, ...) __attribute__((format(printf, 2, 3)));
void	fatal(const char *, ...)
	    __attribute__((noreturn, format(printf, 1, 2)));
void	fatalx(const char *, ...)
	    __attribute__((noreturn, format(printf, 1, 2)));

/* Tests the level before formatting, so a debug line costs one branch. */
#define log_debug(...) do {						\
	if (log_level >= LOG_LVL_DEBUG)					\
		log_emit(LOG_LVL_DEBUG, __VA_ARGS__);			\
} while (0)

#endif
