/*
 * jscan: checks one JSON text fed to it in pieces, keeping none of it
 * but the first bytes of the values of a few top-level members the caller
 * names.  The mcp tool judges with it a message too large to hold (a
 * line over its cap): whether it is a JSON object at all, and what its
 * id, method, result and error are, in a fixed amount of memory however
 * long the message.
 *
 * It checks what jansson's parser checks (RFC 8259's grammar; strings:
 * escapes, \u surrogate pairs, no \u0000, no control character,
 * well-formed UTF-8; nesting up to jansson's 2048 levels; no key twice
 * among the named top-level members), except what would need the text
 * kept: the range of numbers, and duplicate keys elsewhere.
 */
#ifndef EAV_WORKER_JSCAN_H
#define EAV_WORKER_JSCAN_H

#include <stddef.h>

#define JSCAN_DEPTH	2048	/* levels of nesting, as jansson's */
#define JSCAN_NAMES	4	/* named top-level members */
#define JSCAN_RAW	128	/* bytes kept of a named member's value */
#define JSCAN_KEY	64	/* bytes kept of a top-level key, escaped */

/* A named top-level member: how often it came, and its value's text. */
struct jscan_member {
	const char	*name;
	int		 seen;
	size_t		 len;			/* of the value's text */
	char		 raw[JSCAN_RAW + 1];	/* its first JSCAN_RAW bytes */
};

/* The scanner's state: a push-down automaton over bytes. */
struct jscan {
	int			 state;
	int			 depth;
	unsigned char		 object[JSCAN_DEPTH / 8]; /* bit: an object */
	int			 key;		/* the string read is a key */
	char			 keybuf[JSCAN_KEY];
	size_t			 keylen;
	struct jscan_member	*member;	/* whose value comes next */
	int			 capture;	/* 2: the last byte kept */
	int			 u8_need;	/* UTF-8 bytes still to come */
	unsigned char		 u8_lo, u8_hi;	/* the next one's range */
	unsigned		 hex, nhex;	/* a \u escape */
	int			 low;		/* a low surrogate must come */
	const char		*lit;		/* true, false or null */
	size_t			 nlit;
	size_t			 off;		/* bytes fed */
	int			 nmembers;
	struct jscan_member	 members[JSCAN_NAMES];
	char			 err[128];
};

void	jscan_init(struct jscan *, const char *const *);
int	jscan_feed(struct jscan *, const char *, size_t);
int	jscan_end(struct jscan *);
const struct jscan_member *jscan_member(const struct jscan *, const char *);

#endif
