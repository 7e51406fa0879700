/*
 * A JSON checker over a stream (see jscan.h).  One byte at a time, a
 * push-down automaton: the stack is one bit a level (object or array),
 * the state says what may come next.  A number ends at the first byte
 * that is not part of it, which is then read again as what follows.
 * Once an error is found the scanner stays failed, with the error and
 * the byte it was found at.
 *
 * A value of a named top-level member is kept from its first byte to its
 * last (capture): 1 while it is read, 2 when the byte just read was its
 * last; a number's end is found on the byte after it, which is not kept.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "jscan.h"

enum {
	JS_START,	/* before the top-level object */
	JS_VALUE,	/* a value must come */
	JS_ARRAY_FIRST,	/* a value or ']' */
	JS_OBJECT_FIRST, /* a key or '}' */
	JS_KEY,		/* a key */
	JS_COLON,
	JS_AFTER,	/* ',' or the container's end */
	JS_DONE,	/* the top-level object is read: white space only */
	JS_STRING,
	JS_ESCAPE,	/* after '\' */
	JS_HEX,		/* in the four digits of \u */
	JS_LOW_BS,	/* a '\' of a low surrogate's \u must come */
	JS_LOW_U,	/* its 'u' */
	JS_MINUS,	/* numbers: after '-' */
	JS_ZERO,	/* a leading 0 */
	JS_INT,
	JS_DOT,
	JS_FRAC,
	JS_EXP_MARK,	/* after 'e' or 'E' */
	JS_EXP_SIGN,
	JS_EXP,
	JS_LITERAL,
	JS_ERROR
};

static int	js_fail(struct jscan *, const char *);
static int	js_byte(struct jscan *, unsigned char);
static int	js_structure(struct jscan *, unsigned char);
static int	js_value(struct jscan *, unsigned char);
static int	js_open(struct jscan *, unsigned char);
static int	js_in_object(const struct jscan *);
static void	js_value_end(struct jscan *, int);
static int	js_string(struct jscan *, unsigned char);
static int	js_utf8_lead(struct jscan *, unsigned char);
static int	js_string_end(struct jscan *);
static int	js_key_end(struct jscan *);
static int	js_escape(struct jscan *, unsigned char);
static int	js_hex(struct jscan *, unsigned char);
static int	js_code_point(struct jscan *);
static int	js_number(struct jscan *, unsigned char);
static int	js_literal(struct jscan *, unsigned char);
static void	js_keep_key(struct jscan *, unsigned char);
static void	js_keep_value(struct jscan *, unsigned char);

/* A scanner at the start of a text; names: NULL-terminated, at most
 * JSCAN_NAMES of them, kept by reference. */
void
jscan_init(struct jscan *js, const char *const *names)
{
	memset(js, 0, sizeof(*js));
	js->state = JS_START;
	while (js->nmembers < JSCAN_NAMES && names[js->nmembers] != NULL) {
		js->members[js->nmembers].name = names[js->nmembers];
		js->nmembers++;
	}
}

/* Scans len more bytes: 0, or -1 once the text is not JSON (js->err). */
int
jscan_feed(struct jscan *js, const char *buf, size_t len)
{
	size_t		i;
	unsigned char	c;

	for (i = 0; i < len && js->state != JS_ERROR; i++) {
		c = (unsigned char)buf[i];
		if (js_byte(js, c) == -1)
			break;
		js->off++;
		if (js->capture != 0)
			js_keep_value(js, c);
		if (js->capture == 2) {
			js->capture = 0;
			js->member = NULL;
		}
	}
	return js->state == JS_ERROR ? -1 : 0;
}

/*
 * The text is over: 0 if it was one whole JSON object, 1 if it was only
 * white space, -1 if not JSON (js->err).
 */
int
jscan_end(struct jscan *js)
{
	if (js->state == JS_ERROR)
		return -1;
	if (js->state == JS_START)
		return 1;
	if (js->state != JS_DONE)
		return js_fail(js, "premature end of the text");
	return 0;
}

/* The named member name, or NULL if name was not named at init. */
const struct jscan_member *
jscan_member(const struct jscan *js, const char *name)
{
	int	i;

	for (i = 0; i < js->nmembers; i++)
		if (strcmp(js->members[i].name, name) == 0)
			return &js->members[i];
	return NULL;
}

/* Fails the scan: what, at the byte being read. */
static int
js_fail(struct jscan *js, const char *what)
{
	snprintf(js->err, sizeof(js->err), "%s at byte %zu", what, js->off);
	js->state = JS_ERROR;
	return -1;
}

/* One byte, dispatched on the state. */
static int
js_byte(struct jscan *js, unsigned char c)
{
	switch (js->state) {
	case JS_STRING:
		return js_string(js, c);
	case JS_ESCAPE:
		return js_escape(js, c);
	case JS_HEX:
	case JS_LOW_BS:
	case JS_LOW_U:
		return js_hex(js, c);
	case JS_MINUS:
	case JS_ZERO:
	case JS_INT:
	case JS_DOT:
	case JS_FRAC:
	case JS_EXP_MARK:
	case JS_EXP_SIGN:
	case JS_EXP:
		return js_number(js, c);
	case JS_LITERAL:
		return js_literal(js, c);
	default:
		return js_structure(js, c);
	}
}

/* Between tokens: white space, punctuation, or the start of a value. */
static int
js_structure(struct jscan *js, unsigned char c)
{
	if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
		return 0;
	switch (js->state) {
	case JS_START:
		return c == '{' ? js_open(js, c) : js_fail(js, "not an object");
	case JS_ARRAY_FIRST:
		if (c == ']')
			break;
		/* FALLTHROUGH */
	case JS_VALUE:
		return js_value(js, c);
	case JS_OBJECT_FIRST:
		if (c == '}')
			break;
		/* FALLTHROUGH */
	case JS_KEY:
		if (c != '"')
			return js_fail(js, "a key expected");
		js->key = 1;
		js->keylen = 0;
		js->state = JS_STRING;
		return 0;
	case JS_COLON:
		if (c != ':')
			return js_fail(js, "':' expected");
		js->state = JS_VALUE;
		return 0;
	case JS_AFTER:
		if (c == ',') {
			js->state = js_in_object(js) ? JS_KEY : JS_VALUE;
			return 0;
		}
		if (c != (js_in_object(js) ? '}' : ']'))
			return js_fail(js, js_in_object(js) ? "',' or '}' "
			    "expected" : "',' or ']' expected");
		break;
	default:
		return js_fail(js, "the end of the text expected");
	}
	/* The container closes. */
	js->depth--;
	js_value_end(js, 1);
	return 0;
}

/* The first byte of a value (kept if it is a named member's). */
static int
js_value(struct jscan *js, unsigned char c)
{
	if (js->depth == 1 && js->member != NULL)
		js->capture = 1;
	switch (c) {
	case '{':
	case '[':
		return js_open(js, c);
	case '"':
		js->key = 0;
		js->state = JS_STRING;
		return 0;
	case '-':
		js->state = JS_MINUS;
		return 0;
	case '0':
		js->state = JS_ZERO;
		return 0;
	case 't':
		js->lit = "true";
		break;
	case 'f':
		js->lit = "false";
		break;
	case 'n':
		js->lit = "null";
		break;
	default:
		if (c < '1' || c > '9')
			return js_fail(js, "invalid token");
		js->state = JS_INT;
		return 0;
	}
	js->nlit = 1;
	js->state = JS_LITERAL;
	return 0;
}

/* '{' or '[': one level deeper. */
static int
js_open(struct jscan *js, unsigned char c)
{
	if (js->depth == JSCAN_DEPTH)
		return js_fail(js, "maximum parsing depth reached");
	if (c == '{')
		js->object[js->depth / 8] |= 1u << (js->depth % 8);
	else
		js->object[js->depth / 8] &= ~(1u << (js->depth % 8));
	js->depth++;
	js->state = c == '{' ? JS_OBJECT_FIRST : JS_ARRAY_FIRST;
	return 0;
}

/* True if the innermost open container is an object. */
static int
js_in_object(const struct jscan *js)
{
	int	d = js->depth - 1;

	return d >= 0 && (js->object[d / 8] & (1u << (d % 8))) != 0;
}

/*
 * A value ended (with the byte just read if kept is 1, before it if 0):
 * what may come next, and the end of a named member's capture.
 */
static void
js_value_end(struct jscan *js, int kept)
{
	js->state = js->depth == 0 ? JS_DONE : JS_AFTER;
	if (js->depth != 1 || js->capture == 0)
		return;
	if (kept)
		js->capture = 2;
	else {
		js->capture = 0;
		js->member = NULL;
	}
}

/* A byte inside a string. */
static int
js_string(struct jscan *js, unsigned char c)
{
	if (js->u8_need > 0) {
		if (c < js->u8_lo || c > js->u8_hi)
			return js_fail(js, "invalid UTF-8");
		js->u8_lo = 0x80;
		js->u8_hi = 0xbf;
		js->u8_need--;
	} else if (c == '"')
		return js_string_end(js);
	else if (c == '\\')
		js->state = JS_ESCAPE;
	else if (c < 0x20)
		return js_fail(js, "control character in a string");
	else if (c >= 0x80 && js_utf8_lead(js, c) == -1)
		return -1;
	js_keep_key(js, c);
	return 0;
}

/* The first byte of a multi-byte UTF-8 sequence: what must follow it
 * (overlong forms, surrogates and code points past U+10FFFF refused). */
static int
js_utf8_lead(struct jscan *js, unsigned char c)
{
	js->u8_lo = 0x80;
	js->u8_hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		js->u8_need = 1;
	else if (c >= 0xe0 && c <= 0xef) {
		js->u8_need = 2;
		if (c == 0xe0)
			js->u8_lo = 0xa0;
		else if (c == 0xed)
			js->u8_hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		js->u8_need = 3;
		if (c == 0xf0)
			js->u8_lo = 0x90;
		else if (c == 0xf4)
			js->u8_hi = 0x8f;
	} else
		return js_fail(js, "invalid UTF-8");
	return 0;
}

/* The closing quote: of a value, or of a key. */
static int
js_string_end(struct jscan *js)
{
	if (!js->key) {
		js_value_end(js, 1);
		return 0;
	}
	js->key = 0;
	js->state = JS_COLON;
	return js->depth == 1 ? js_key_end(js) : 0;
}

/*
 * A top-level key is read: the member whose value comes next, if it is
 * a named one (a second time: refused, as jansson refuses duplicates).
 */
static int
js_key_end(struct jscan *js)
{
	char		 quoted[JSCAN_KEY + 3];
	const char	*name;
	json_t		*key;
	int		 i;

	js->member = NULL;
	if (js->keylen > JSCAN_KEY)
		return 0;	/* longer than any name */
	/* Escapes are decoded by jansson: "\u0069d" is "id". */
	snprintf(quoted, sizeof(quoted), "\"%.*s\"", (int)js->keylen,
	    js->keybuf);
	if ((key = json_loadb(quoted, js->keylen + 2, JSON_DECODE_ANY,
	    NULL)) == NULL)
		return js_fail(js, "a key that cannot be decoded");
	name = json_string_value(key);
	for (i = 0; i < js->nmembers && name != NULL; i++)
		if (strcmp(js->members[i].name, name) == 0)
			js->member = &js->members[i];
	json_decref(key);
	if (js->member != NULL && js->member->seen++ > 0)
		return js_fail(js, "duplicate object key");
	return 0;
}

/* The byte after '\'. */
static int
js_escape(struct jscan *js, unsigned char c)
{
	if (c == 'u') {
		js->hex = 0;
		js->nhex = 0;
		js->state = JS_HEX;
	} else if (c != '\0' && strchr("\"\\/bfnrt", c) != NULL)
		js->state = JS_STRING;
	else
		return js_fail(js, "invalid escape");
	js_keep_key(js, c);
	return 0;
}

/* The digits of \u, and the "\u" of a low surrogate. */
static int
js_hex(struct jscan *js, unsigned char c)
{
	js_keep_key(js, c);
	if (js->state == JS_LOW_BS || js->state == JS_LOW_U) {
		if (c != (js->state == JS_LOW_BS ? '\\' : 'u'))
			return js_fail(js, "invalid Unicode: a high surrogate "
			    "without a low one");
		js->state = js->state == JS_LOW_BS ? JS_LOW_U : JS_HEX;
		js->hex = 0;
		js->nhex = 0;
		return 0;
	}
	if (c >= '0' && c <= '9')
		js->hex = js->hex * 16 + (c - '0');
	else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
		js->hex = js->hex * 16 + ((c | 0x20) - 'a' + 10);
	else
		return js_fail(js, "invalid \\u escape");
	return ++js->nhex < 4 ? 0 : js_code_point(js);
}

/* A \u escape is whole: surrogates must pair, and U+0000 is refused. */
static int
js_code_point(struct jscan *js)
{
	int	high = js->hex >= 0xd800 && js->hex <= 0xdbff;
	int	low = js->hex >= 0xdc00 && js->hex <= 0xdfff;

	if (js->low != low)
		return js_fail(js, "invalid Unicode: a lone surrogate");
	if (js->hex == 0)
		return js_fail(js, "\\u0000 is not allowed");
	js->low = high;
	js->state = high ? JS_LOW_BS : JS_STRING;
	return 0;
}

/*
 * A byte of a number, or the one after it: -?(0|[1-9][0-9]*)
 * (\.[0-9]+)?([eE][+-]?[0-9]+)?
 */
static int
js_number(struct jscan *js, unsigned char c)
{
	int	digit = c >= '0' && c <= '9';

	switch (js->state) {
	case JS_MINUS:
		if (!digit)
			return js_fail(js, "invalid number");
		js->state = c == '0' ? JS_ZERO : JS_INT;
		return 0;
	case JS_DOT:
	case JS_EXP_SIGN:
		if (!digit)
			return js_fail(js, "invalid number");
		js->state = js->state == JS_DOT ? JS_FRAC : JS_EXP;
		return 0;
	case JS_EXP_MARK:
		if (!digit && c != '+' && c != '-')
			return js_fail(js, "invalid number");
		js->state = digit ? JS_EXP : JS_EXP_SIGN;
		return 0;
	case JS_ZERO:
		if (digit)
			return js_fail(js, "invalid number");
		/* FALLTHROUGH */
	default:
		break;
	}
	if (digit)
		return 0;	/* JS_INT, JS_FRAC, JS_EXP go on */
	if (c == '.' && js->state != JS_FRAC && js->state != JS_EXP) {
		js->state = JS_DOT;
		return 0;
	}
	if ((c == 'e' || c == 'E') && js->state != JS_EXP) {
		js->state = JS_EXP_MARK;
		return 0;
	}
	js_value_end(js, 0);
	return js_structure(js, c);
}

/* A byte of true, false or null. */
static int
js_literal(struct jscan *js, unsigned char c)
{
	if (c != (unsigned char)js->lit[js->nlit])
		return js_fail(js, "invalid token");
	if (js->lit[++js->nlit] == '\0')
		js_value_end(js, 1);
	return 0;
}

/* A byte of a top-level key, as written (one past JSCAN_KEY: too long). */
static void
js_keep_key(struct jscan *js, unsigned char c)
{
	if (!js->key || js->depth != 1)
		return;
	if (js->keylen < JSCAN_KEY)
		js->keybuf[js->keylen] = (char)c;
	if (js->keylen <= JSCAN_KEY)
		js->keylen++;
}

/* A byte of a named member's value. */
static void
js_keep_value(struct jscan *js, unsigned char c)
{
	struct jscan_member	*m = js->member;

	if (m == NULL)
		return;
	if (m->len < JSCAN_RAW)
		m->raw[m->len] = (char)c;
	m->len++;
}
