/*
 * Schema migrations embedded in every binary (scripts/embed-sql.sh), and
 * the runner that applies them under an advisory lock.
 */
#ifndef EAV_COMMON_MIGRATE_H
#define EAV_COMMON_MIGRATE_H

struct db;

struct migration {
	int		 version;
	const char	*name;
	const char	*sql;
};

extern const struct migration	eav_migrations[];
extern const int		eav_migration_count;

int	migrate_apply(struct db *, int *);

#endif
