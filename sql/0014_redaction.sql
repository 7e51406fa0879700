-- 0014_redaction: no secret is stored.  Every column that takes text
-- from outside eav passes the redaction policy (eav.redaction_rules) on
-- its way in, in a BEFORE trigger, so no writer (the transition
-- functions, eav.audit, a hand-written INSERT in psql) can get round it.
--
-- Two answers, by what the text is for:
--   * Records of what happened (steps.result, steps.error, every
--     audit_events.payload, alarms.message and details, inbox.error,
--     tools.last_error) are redacted: the matching part of a string, or
--     the whole value under a secret key name, becomes
--     "[REDACTED:<rule>]", and a critical secret_leak alarm plus an
--     audit event secret.leak name the field and the rule, never the
--     value.  Refusing them instead would lose an outcome that already
--     happened (a worker cannot take its call back).
--   * Data that drives a call (steps.input at enqueue, inbox.body, which
--     becomes step input, and tools.config) is refused with 22023 naming
--     the field and the rule, and nothing is stored.  Redacting it would
--     run the tool on "[REDACTED:...]" (a mutation with a wrong value is
--     worse than none), and storing it would keep the secret.  Secrets a
--     tool needs belong in its secret_headers or env, which name them;
--     the caller gets a clear error and loses nothing.  A refusal rolls
--     its transaction back, so it leaves no alarm: the error is the
--     signal (the producer records it as the event's rejection).
--
-- Rules: 'value' rules are case-insensitive POSIX (ARE) patterns found
-- anywhere in a string; 'key' rules must match a whole key name
-- (case-insensitive), and then the value under it is redacted whole
-- unless it is null, a boolean or empty; 'allow' rules match a whole
-- field path (e.g. config.secret_headers.Authorization) under which key
-- rules do not apply (value rules still do): http tool configs map
-- header names to the *names* of secrets.
--
-- Cost.  eav moves tens of thousands of steps a second with three audit
-- rows each, and almost every payload is built by eav from numbers and
-- ids.  PostgreSQL builds a regular expression's DFA afresh at every
-- match, so one combined pattern of all the rules costs ~35 us on an
-- 80-byte payload: more than the rest of a step.  Each rule therefore
-- has hints, lowercase literals one of which every match contains, and
-- the triggers' WHEN clauses call eav.redaction_screen(text), generated
-- from the hints as one lower(text) LIKE ANY (...) (a few us, and no
-- call into PL/pgSQL); the JSON is walked, rule by rule, only when a
-- hint is there.  A rule without hints is screened by its own pattern
-- (correct, slower).  eav.redaction_screen is rewritten (CREATE OR REPLACE, no
-- lock on the hot tables) whenever eav.redaction_rules changes; it is an
-- inlinable SQL function, so every statement sees the current rules.
--
-- Recursion: the alarm and the audit row of a finding pass the same
-- triggers; they hold no value, and while eav.redaction_leak raises them
-- (eav.redaction_busy set) a finding is redacted but not alarmed again.
--
-- Not covered: tasks.kind (128 characters, the submitter's label),
-- kill switch reasons and alarm notes typed by operators (their audit
-- rows and alarms are covered), and what a tool does with its input.

-- Policy --------------------------------------------------------------------

CREATE TABLE eav.redaction_rules (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('key', 'value', 'allow')),
    label           text NOT NULL UNIQUE
                    CHECK (label ~ '^[a-z][a-z0-9_]{0,62}$'),
    pattern         text NOT NULL
                    CHECK (octet_length(pattern) BETWEEN 1 AND 1000),
    hints           text[] CHECK (cardinality(hints) BETWEEN 1 AND 16
                                  AND array_position(hints, NULL) IS NULL
                                  AND lower(hints::text) = hints::text),
    enabled         boolean NOT NULL DEFAULT true,
    description     text NOT NULL DEFAULT '',
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_by     text,
    disabled_at     timestamptz,
    disabled_reason text
);
COMMENT ON TABLE eav.redaction_rules IS 'The redaction policy every stored payload passes (0014_redaction.sql). Change it with eav.redaction_rule_add and eav.redaction_rule_disable (audited); rows are never deleted.';
COMMENT ON COLUMN eav.redaction_rules.id IS 'Rule id; value rules apply in id order.';
COMMENT ON COLUMN eav.redaction_rules.kind IS 'value (pattern found in a string: that part is replaced), key (pattern matches a whole key name: the value under it is replaced) or allow (pattern matches a whole field path under which key rules do not apply).';
COMMENT ON COLUMN eav.redaction_rules.label IS 'Name of the rule, as it appears in [REDACTED:<label>], findings and secret_leak alarms.';
COMMENT ON COLUMN eav.redaction_rules.pattern IS 'Case-insensitive POSIX regular expression (ARE).';
COMMENT ON COLUMN eav.redaction_rules.hints IS 'Lowercase literals of which every match contains one (for a key rule: every matching key name), so eav.redaction_screen can skip text without any; NULL: the pattern itself screens (slower).';
COMMENT ON COLUMN eav.redaction_rules.enabled IS 'False once disabled; a disabled rule is kept for the record.';
COMMENT ON COLUMN eav.redaction_rules.description IS 'What the rule catches.';
COMMENT ON COLUMN eav.redaction_rules.created_by IS 'Actor that added it (migration for the defaults).';
COMMENT ON COLUMN eav.redaction_rules.created_at IS 'When it was added.';
COMMENT ON COLUMN eav.redaction_rules.disabled_by IS 'Actor that disabled it.';
COMMENT ON COLUMN eav.redaction_rules.disabled_at IS 'When it was disabled.';
COMMENT ON COLUMN eav.redaction_rules.disabled_reason IS 'Why it was disabled.';

CREATE TRIGGER redaction_rules_no_delete BEFORE DELETE ON eav.redaction_rules
    FOR EACH ROW EXECUTE FUNCTION eav.refuse_delete();
CREATE TRIGGER redaction_rules_no_truncate BEFORE TRUNCATE ON eav.redaction_rules
    FOR EACH STATEMENT EXECUTE FUNCTION eav.refuse_delete();
COMMENT ON FUNCTION eav.refuse_delete() IS 'Trigger that refuses DELETE and TRUNCATE on eav.tools, eav.queues and eav.redaction_rules.';

-- Rewrites eav.redaction_screen from the enabled rules.  Each rule is its
-- own term, so a pattern is never combined with another's groups.
CREATE FUNCTION eav.redaction_compile() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_hints text[];
    v_rx text;
    v_body text;
BEGIN
    -- One rebuild at a time, each reading the rules after the previous
    -- one committed: two concurrent rule changes could otherwise each
    -- rebuild without the other's rule.
    PERFORM pg_advisory_xact_lock(hashtextextended('eav.redaction_screen', 0));
    SELECT array_agg(x ORDER BY x) INTO v_hints
    FROM (SELECT DISTINCT '%' || replace(replace(replace(h, '\', '\\'),
                 '%', '\%'), '_', '\_') || '%' AS x
          FROM eav.redaction_rules, unnest(hints) h
          WHERE enabled AND kind IN ('key', 'value')) s;
    SELECT string_agg(' OR p_text ~* ' || quote_literal(CASE kind
               WHEN 'key' THEN '"(?:' || pattern || ')"' ELSE pattern END),
               '' ORDER BY id)
    INTO v_rx
    FROM eav.redaction_rules
    WHERE enabled AND kind IN ('key', 'value') AND hints IS NULL;
    IF v_hints IS NULL AND v_rx IS NULL THEN
        v_body := 'SELECT false';
    ELSE
        v_body := 'SELECT ' || CASE WHEN v_hints IS NULL THEN 'false' ELSE
            'lower(p_text) LIKE ANY (' || quote_literal(v_hints)
            || '::text[])' END
            || coalesce(v_rx, '');
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION eav.redaction_screen(p_text text) '
        'RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS %L', v_body);
END;
$$;
COMMENT ON FUNCTION eav.redaction_compile() IS 'Rewrites eav.redaction_screen from the enabled key and value rules (their hints, or their patterns when they have none). Run by a trigger whenever eav.redaction_rules changes.';

CREATE FUNCTION eav.redaction_screen(p_text text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS 'SELECT false';
COMMENT ON FUNCTION eav.redaction_screen(text) IS 'Cheap test, generated by eav.redaction_compile: false when the text cannot hold anything an enabled rule matches (no rule''s hint is in it); true means "look closer" (eav.redact). Used in the WHEN clause of every redaction trigger.';

CREATE FUNCTION eav.redaction_rules_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eav.redaction_compile();
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.redaction_rules_changed() IS 'Statement trigger on eav.redaction_rules: recompiles eav.redaction_screen.';

CREATE TRIGGER redaction_rules_compile
    AFTER INSERT OR UPDATE ON eav.redaction_rules
    FOR EACH STATEMENT EXECUTE FUNCTION eav.redaction_rules_changed();

-- The defaults.  Labels are chosen so that no value rule matches a label
-- (findings carry them); hints so that everyday words rarely hold one.
INSERT INTO eav.redaction_rules (kind, label, pattern, hints, created_by, description) VALUES
    ('value', 'private_key_pem',
     '-----BEGIN[A-Z ]*PRIVATE KEY-----[^-]*(-----END[A-Z ]*PRIVATE KEY-----)?',
     '{private key}', 'migration', 'A PEM private key block (RSA, EC, OPENSSH, PKCS#8...).'),
    ('value', 'aws_access_key', '\m(AKIA|ASIA)[0-9A-Z]{16}\M', '{akia,asia}', 'migration',
     'AWS access key id (AKIA..., ASIA...).'),
    ('value', 'aws_secret_key',
     'aws_secret_access_key["'']?\s*[:=]\s*["'']?[A-Za-z0-9/+=]{40}', '{aws_secret}',
     'migration', 'AWS secret access key written as aws_secret_access_key=...'),
    ('value', 'github_token', '\mgh[pousr]_[A-Za-z0-9]{36,}', '{ghp_,gho_,ghu_,ghs_,ghr_}',
     'migration', 'GitHub token (ghp_, gho_, ghu_, ghs_, ghr_).'),
    ('value', 'github_pat', '\mgithub_pat_[A-Za-z0-9_]{22,}', '{github_pat_}', 'migration',
     'GitHub fine-grained personal access token.'),
    ('value', 'slack_token', '\mxox[baprs]-[A-Za-z0-9-]{10,}', '{xox}', 'migration',
     'Slack token (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-).'),
    ('value', 'stripe_key', '\m[sr]k_(live|test)_[A-Za-z0-9]{16,}', '{k_live_,k_test_}',
     'migration', 'Stripe secret or restricted key (sk_live_, rk_live_, sk_test_...).'),
    ('value', 'google_api_key', '\mAIza[0-9A-Za-z_-]{35}', '{aiza}', 'migration',
     'Google API key.'),
    ('value', 'sk_api_key', '\msk-(proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}', '{sk-}',
     'migration', 'OpenAI- or Anthropic-style secret key (sk-..., sk-proj-..., sk-ant-...).'),
    ('value', 'jwt', '\meyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+', '{eyj}',
     'migration', 'JSON Web Token (header.payload.signature).'),
    ('value', 'bearer_credential', '\mbearer\s+[A-Za-z0-9._~+/-]{8,}=*', '{bearer}',
     'migration', 'Bearer credential, e.g. from an Authorization header.'),
    ('value', 'basic_credential',
     'authorization["'']?\s*[:=]\s*["'']?(basic|digest|token)\s+[^\s"'',;]+',
     '{authorization}', 'migration',
     'Basic, Digest or token credential of an Authorization header.'),
    ('value', 'url_credentials', '[a-z][a-z0-9+.-]*://[^/\s:@"'']*:[^/\s@"'']+@', '{://}',
     'migration', 'User and password in a URL (postgres://user:pass@host, https://u:p@...).'),
    ('value', 'password_assignment',
     '\m(password|passwd|pwd)\s*=\s*(''([^''\\]|\\.)*''|[^\s''"&;,]+)', '{pass,pwd}',
     'migration', 'password= in a DSN, a query string or a config line.'),
    ('key', 'password', '.*(passw(or)?d|passphrase)|(.*[_.-])?(pass|pwd)', '{pass,pwd}',
     'migration', 'Key names ending in password, passwd or passphrase, or the word pass or pwd.'),
    ('key', 'secret', '.*secret(s|[_.-]?(access[_.-]?)?key)?', '{secret}', 'migration',
     'Key names ending in secret, secrets or secret_key (client_secret, webhookSecret...).'),
    ('key', 'token', '.*token', '{token}', 'migration',
     'Key names ending in token (access_token, refreshToken, x-auth-token...).'),
    ('key', 'api_key', '.*api[_.-]?key', '{api_key,apikey,api-key,api.key}', 'migration',
     'Key names ending in api_key, apikey, api-key.'),
    ('key', 'authorization', '(proxy-)?authorization', '{authorization}', 'migration',
     'Authorization and Proxy-Authorization headers.'),
    ('key', 'cookie', '(set-)?cookies?', '{cookie}', 'migration',
     'Cookie and Set-Cookie headers.'),
    ('key', 'private_key', '.*private[_.-]?key', '{private}', 'migration',
     'Key names ending in private_key, privateKey.'),
    ('key', 'credentials', '.*credentials?', '{credential}', 'migration',
     'Key names ending in credential or credentials.'),
    ('allow', 'secret_header_names', '(payload\.)?config\.secret_headers(\..*)?', NULL,
     'migration', 'An http tool''s secret_headers map header names to secret *names*; the secret itself is never stored.');

-- Redaction ---------------------------------------------------------------

CREATE FUNCTION eav.redact_text(p_text text, p_path text DEFAULT '',
    OUT redacted text, OUT findings text[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
BEGIN
    redacted := p_text;
    IF p_text IS NULL OR NOT eav.redaction_screen(p_text) THEN
        RETURN;
    END IF;
    FOR r IN SELECT label, pattern FROM eav.redaction_rules
             WHERE enabled AND kind = 'value' ORDER BY id LOOP
        IF redacted ~* r.pattern THEN
            redacted := regexp_replace(redacted, r.pattern,
                '[REDACTED:' || r.label || ']', 'gi');
            findings := findings || (r.label || '@' || p_path);
        END IF;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.redact_text(text, text) IS 'Applies the enabled value rules to a text: each match becomes [REDACTED:<rule>]. findings: one "<rule>@<p_path>" per rule that matched (NULL when none); never the value.';

-- The label of the first enabled key rule that matches the whole key, or
-- NULL.
CREATE FUNCTION eav.redaction_key_rule(p_key text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT label FROM eav.redaction_rules
    WHERE enabled AND kind = 'key' AND p_key ~* ('^(?:' || pattern || ')$')
    ORDER BY id LIMIT 1
$$;
COMMENT ON FUNCTION eav.redaction_key_rule(text) IS 'Label of the first enabled key rule whose pattern matches the whole key name (case-insensitive), or NULL.';

CREATE FUNCTION eav.redaction_allowed(p_path text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM eav.redaction_rules
                   WHERE enabled AND kind = 'allow'
                     AND p_path ~* ('^(?:' || pattern || ')$'))
$$;
COMMENT ON FUNCTION eav.redaction_allowed(text) IS 'True when an enabled allow rule matches the whole field path: key rules do not apply there and below.';

-- One level of eav.redact.  A subtree whose text no hint is in is kept
-- as it is, so only the branches that may hold a secret are rebuilt.
CREATE FUNCTION eav.redact_walk(p jsonb, p_path text, p_allowed boolean,
    INOUT findings text[], OUT redacted jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k text;
    v jsonb;
    v_key text;
    v_path text;
    v_rule text;
    v_allowed boolean;
    v_out jsonb;
    v_text text;
    v_f text[];
    i integer := 0;
BEGIN
    IF NOT eav.redaction_screen(p::text) THEN
        redacted := p;
        RETURN;
    END IF;
    CASE jsonb_typeof(p)
    WHEN 'object' THEN
        redacted := '{}';
        FOR k, v IN SELECT e.key, e.value FROM jsonb_each(p) e LOOP
            -- A key can be a secret too; the path names it redacted.
            SELECT t.redacted, t.findings INTO v_key, v_f
            FROM eav.redact_text(k, p_path) t;
            findings := findings || v_f;
            v_path := CASE WHEN p_path = '' THEN v_key
                           ELSE p_path || '.' || v_key END;
            v_allowed := p_allowed OR eav.redaction_allowed(v_path);
            v_rule := CASE WHEN NOT v_allowed THEN eav.redaction_key_rule(k) END;
            -- Nothing to hide in null, a boolean, an empty value or one
            -- already redacted (a copy of a redacted row).
            IF v_rule IS NOT NULL AND jsonb_typeof(v) NOT IN ('null', 'boolean')
               AND v NOT IN ('""', '{}', '[]')
               AND coalesce(v->>0 !~ '^\[REDACTED:[a-z0-9_]+\]$', true) THEN
                v_out := to_jsonb('[REDACTED:' || v_rule || ']');
                findings := findings || (v_rule || '@' || v_path);
            ELSE
                SELECT w.findings, w.redacted INTO findings, v_out
                FROM eav.redact_walk(v, v_path, v_allowed, findings) w;
            END IF;
            redacted := redacted || jsonb_build_object(v_key, v_out);
        END LOOP;
    WHEN 'array' THEN
        redacted := '[]';
        FOR v IN SELECT e FROM jsonb_array_elements(p) e LOOP
            SELECT w.findings, w.redacted INTO findings, v_out
            FROM eav.redact_walk(v, p_path || '[' || i || ']', p_allowed,
                findings) w;
            redacted := redacted || jsonb_build_array(v_out);
            i := i + 1;
        END LOOP;
    WHEN 'string' THEN
        SELECT t.redacted, t.findings INTO v_text, v_f
        FROM eav.redact_text(p->>0, p_path) t;
        findings := findings || v_f;
        redacted := to_jsonb(v_text);
    ELSE
        redacted := p;
    END CASE;
END;
$$;
COMMENT ON FUNCTION eav.redact_walk(jsonb, text, boolean, text[]) IS 'One level of eav.redact: objects by key (key rules, allow rules), arrays by element, strings by value rules; appends to findings.';

CREATE FUNCTION eav.redact(p jsonb, p_path text DEFAULT '',
    OUT redacted jsonb, OUT findings text[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p IS NULL OR NOT eav.redaction_screen(p::text) THEN
        redacted := p;
        RETURN;
    END IF;
    SELECT w.redacted, w.findings INTO redacted, findings
    FROM eav.redact_walk(p, p_path, eav.redaction_allowed(p_path), NULL) w;
END;
$$;
COMMENT ON FUNCTION eav.redact(jsonb, text) IS 'Applies the redaction policy to a JSON value, recursively: a value under a key a key rule matches becomes "[REDACTED:<rule>]" (null, booleans and empty values are kept), and each part of a string (or key) a value rule matches is replaced; allow rules exempt a field path from key rules. findings: one "<rule>@<field path>" per finding (paths from p_path: a.b[0].c), NULL when none; never the value.';

-- What a finding does -------------------------------------------------------

CREATE FUNCTION eav.redaction_leak(p_where text, p_findings text[],
    p_trace_id uuid, p_task_id bigint, p_step_id bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    f text;
    v_rule text;
    v_field text;
    v_subject text;
    v_alarm bigint;
BEGIN
    -- The alarm and audit rows below pass the same triggers: never raise
    -- from inside a raise.
    IF current_setting('eav.redaction_busy', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM set_config('eav.redaction_busy', 'on', true);
    FOR f IN SELECT DISTINCT x FROM unnest(p_findings) x ORDER BY 1 LOOP
        v_rule := split_part(f, '@', 1);
        v_field := substr(f, length(v_rule) + 2);
        v_subject := p_where || v_field;
        v_alarm := eav.alarm_raise('secret_leak', 'critical', v_subject,
            format('a secret (redaction rule %s) reached %s; it was redacted before it was stored',
                   v_rule, v_subject),
            jsonb_build_object('rule', v_rule, 'field', v_subject,
                               'task_id', p_task_id, 'step_id', p_step_id),
            'eav:redaction');
        PERFORM eav.audit('secret.leak', 'failure', 'eav:redaction', p_trace_id,
            p_task_id, p_step_id, jsonb_build_object('rule', v_rule,
                'field', v_subject, 'alarm_id', v_alarm));
    END LOOP;
    PERFORM set_config('eav.redaction_busy', 'off', true);
END;
$$;
COMMENT ON FUNCTION eav.redaction_leak(text, text[], uuid, bigint, bigint) IS 'For each finding of a redacted row: a critical secret_leak alarm whose subject is p_where followed by the field path (e.g. steps.error, audit:step.failed:payload.error) and an audit event secret.leak naming the field and the rule, never the value.';

-- Row triggers.  TG_ARGV names the columns; each column's value is
-- redacted as JSON (a text column as a JSON string).
CREATE FUNCTION eav.redaction_redact() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_row jsonb := to_jsonb(NEW);
    v_set jsonb := '{}';
    v_findings text[];
    r record;
    c text;
BEGIN
    FOREACH c IN ARRAY TG_ARGV LOOP
        IF v_row->c IS NOT NULL AND v_row->c <> 'null' THEN
            SELECT * INTO r FROM eav.redact(v_row->c, c);
            IF r.findings IS NOT NULL THEN
                v_set := v_set || jsonb_build_object(c, r.redacted);
                v_findings := v_findings || r.findings;
            END IF;
        END IF;
    END LOOP;
    IF v_findings IS NULL THEN
        RETURN NEW;
    END IF;
    NEW := jsonb_populate_record(NEW, v_set);
    IF TG_TABLE_NAME = 'audit_events' THEN
        PERFORM eav.redaction_leak('audit:' || NEW.type || ':', v_findings,
            (v_row->>'trace_id')::uuid, (v_row->>'task_id')::bigint,
            (v_row->>'step_id')::bigint);
    ELSIF TG_TABLE_NAME = 'steps' THEN
        PERFORM eav.redaction_leak('steps.', v_findings,
            (v_row->>'trace_id')::uuid, (v_row->>'task_id')::bigint,
            (v_row->>'id')::bigint);
    ELSE
        PERFORM eav.redaction_leak(TG_TABLE_NAME || '.', v_findings, NULL,
            NULL, NULL);
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION eav.redaction_redact() IS 'BEFORE trigger on columns that record what happened (TG_ARGV: the columns): redacts them (eav.redact) and reports each finding (eav.redaction_leak).';

CREATE FUNCTION eav.redaction_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_row jsonb := to_jsonb(NEW);
    v jsonb;
    v_findings text[];
    v_what text;
    c text;
BEGIN
    FOREACH c IN ARRAY TG_ARGV LOOP
        v := v_row->c;
        -- A text column holding JSON (an inbox body) is looked at as JSON,
        -- so key rules apply to it too.
        IF jsonb_typeof(v) = 'string' THEN
            BEGIN
                v := (v->>0)::jsonb;
            EXCEPTION WHEN invalid_text_representation THEN
                NULL;
            END;
        END IF;
        v_findings := v_findings || (SELECT r.findings FROM eav.redact(v, c) r);
    END LOOP;
    IF v_findings IS NULL THEN
        RETURN NEW;
    END IF;
    v_what := CASE TG_TABLE_NAME
        WHEN 'steps' THEN format('step %s of the task', v_row->>'ordinal')
        WHEN 'inbox' THEN format('event %s/%s', v_row->>'source', v_row->>'event_key')
        ELSE format('tool %s', v_row->>'name') END;
    RAISE EXCEPTION '%: field "%" matches redaction rule "%"', v_what,
        substr(v_findings[1], strpos(v_findings[1], '@') + 1),
        split_part(v_findings[1], '@', 1)
        USING ERRCODE = '22023',
              HINT = 'A secret is never stored: a tool gets secrets from its secret_headers or env, which name them. eav.redaction_rules lists the rules.';
END;
$$;
COMMENT ON FUNCTION eav.redaction_refuse() IS 'BEFORE trigger on columns that drive a call (TG_ARGV: the columns): raises 22023 naming the field and the rule of the first finding (never the value) when eav.redact finds a secret, so nothing is stored.';

CREATE TRIGGER audit_events_a_redact BEFORE INSERT ON eav.audit_events
    FOR EACH ROW WHEN (eav.redaction_screen(NEW.payload::text))
    EXECUTE FUNCTION eav.redaction_redact('payload');
COMMENT ON TRIGGER audit_events_a_redact ON eav.audit_events IS 'Redacts the payload before it is stored; named to fire before any other BEFORE INSERT trigger (triggers fire in name order), so whatever a later one computes from the row sees it redacted.';
CREATE TRIGGER steps_refuse_secret BEFORE INSERT ON eav.steps
    FOR EACH ROW WHEN (eav.redaction_screen(NEW.input::text))
    EXECUTE FUNCTION eav.redaction_refuse('input');
CREATE TRIGGER steps_redact BEFORE UPDATE ON eav.steps
    FOR EACH ROW WHEN ((NEW.result IS DISTINCT FROM OLD.result
                        AND eav.redaction_screen(NEW.result::text))
                       OR (NEW.error IS DISTINCT FROM OLD.error
                           AND eav.redaction_screen(NEW.error)))
    EXECUTE FUNCTION eav.redaction_redact('result', 'error');
CREATE TRIGGER alarms_redact BEFORE INSERT ON eav.alarms
    FOR EACH ROW WHEN (eav.redaction_screen(NEW.message)
                       OR eav.redaction_screen(NEW.details::text))
    EXECUTE FUNCTION eav.redaction_redact('message', 'details');
-- An update (a raise again, an ack) is looked at only if it changes them.
CREATE TRIGGER alarms_redact_update BEFORE UPDATE ON eav.alarms
    FOR EACH ROW WHEN ((NEW.message IS DISTINCT FROM OLD.message
                        AND eav.redaction_screen(NEW.message))
                       OR (NEW.details IS DISTINCT FROM OLD.details
                           AND eav.redaction_screen(NEW.details::text)))
    EXECUTE FUNCTION eav.redaction_redact('message', 'details');
CREATE TRIGGER inbox_refuse_secret BEFORE INSERT ON eav.inbox
    FOR EACH ROW WHEN (eav.redaction_screen(NEW.body))
    EXECUTE FUNCTION eav.redaction_refuse('body');
CREATE TRIGGER inbox_redact BEFORE UPDATE ON eav.inbox
    FOR EACH ROW WHEN (NEW.error IS DISTINCT FROM OLD.error
                       AND eav.redaction_screen(NEW.error))
    EXECUTE FUNCTION eav.redaction_redact('error');
CREATE TRIGGER tools_refuse_secret BEFORE INSERT ON eav.tools
    FOR EACH ROW WHEN (eav.redaction_screen(NEW.config::text))
    EXECUTE FUNCTION eav.redaction_refuse('config');
-- Health updates (every completion batch of a tool) leave config alone:
-- they must not walk it.
CREATE TRIGGER tools_refuse_secret_update BEFORE UPDATE ON eav.tools
    FOR EACH ROW WHEN (NEW.config IS DISTINCT FROM OLD.config
                       AND eav.redaction_screen(NEW.config::text))
    EXECUTE FUNCTION eav.redaction_refuse('config');
CREATE TRIGGER tools_redact BEFORE UPDATE ON eav.tools
    FOR EACH ROW WHEN (NEW.last_error IS DISTINCT FROM OLD.last_error
                       AND eav.redaction_screen(NEW.last_error))
    EXECUTE FUNCTION eav.redaction_redact('last_error');

-- Changing the policy ---------------------------------------------------------

CREATE FUNCTION eav.redaction_rule_add(p_kind text, p_label text, p_pattern text,
    p_hints text[] DEFAULT NULL, p_description text DEFAULT '',
    p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_id bigint;
    v_msg text;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('key', 'value', 'allow') THEN
        RAISE EXCEPTION 'redaction rule kind must be key, value or allow, not "%"',
            coalesce(p_kind, 'null') USING ERRCODE = '22023';
    END IF;
    IF p_label IS NULL OR p_label !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid redaction rule label "%"', left(p_label, 64)
            USING ERRCODE = '22023',
                  HINT = 'Lowercase letters, digits and _; start with a letter; at most 63 characters.';
    END IF;
    IF EXISTS (SELECT 1 FROM eav.redaction_rules WHERE label = p_label) THEN
        RAISE EXCEPTION 'a redaction rule labelled "%" exists', p_label
            USING ERRCODE = '22023', HINT = 'Labels are never reused; pick another.';
    END IF;
    IF p_pattern IS NULL OR octet_length(p_pattern) NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'redaction pattern must be 1 to 1000 bytes' USING ERRCODE = '22023';
    END IF;
    -- Compiled here, inside a block, so a bad pattern is a clear 22023
    -- and nothing is stored; the anchored form is the one key and allow
    -- rules use.
    BEGIN
        PERFORM '' ~* p_pattern, '' ~* ('^(?:' || p_pattern || ')$');
    EXCEPTION WHEN invalid_regular_expression THEN
        GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'redaction pattern "%" does not compile: %', p_pattern, v_msg
            USING ERRCODE = '22023';
    END;
    IF p_kind = 'value' AND '' ~* p_pattern THEN
        RAISE EXCEPTION 'redaction pattern "%" matches the empty string', p_pattern
            USING ERRCODE = '22023', HINT = 'A value rule must match something.';
    END IF;
    IF p_kind = 'value' AND ('[REDACTED:' || p_label || ']') ~* p_pattern THEN
        RAISE EXCEPTION 'redaction pattern "%" matches its own replacement', p_pattern
            USING ERRCODE = '22023';
    END IF;
    IF p_hints IS NOT NULL AND (p_kind = 'allow' OR cardinality(p_hints) NOT BETWEEN 1 AND 16
       OR EXISTS (SELECT 1 FROM unnest(p_hints) h
                  WHERE h IS NULL OR h <> lower(h) OR length(h) NOT BETWEEN 3 AND 64)) THEN
        RAISE EXCEPTION 'redaction hints must be 1 to 16 lowercase literals of 3 to 64 characters (none for an allow rule)'
            USING ERRCODE = '22023',
                  HINT = 'Every match of the pattern must contain one of them; leave them out to screen by the pattern itself.';
    END IF;
    INSERT INTO eav.redaction_rules (kind, label, pattern, hints, description, created_by)
    VALUES (p_kind, p_label, p_pattern, p_hints, coalesce(p_description, ''), v_actor)
    RETURNING id INTO v_id;
    PERFORM eav.audit('redaction.rule_added', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('rule_id', v_id, 'kind', p_kind, 'label', p_label,
                           'hints', p_hints));
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION eav.redaction_rule_add(text, text, text, text[], text, text) IS 'Adds a redaction rule (kind key, value or allow; a case-insensitive POSIX pattern; hints: lowercase literals one of which every match contains, or NULL). A pattern that does not compile, a value pattern that matches the empty string or its own replacement, a reused label: 22023, nothing stored. Audited redaction.rule_added (the pattern is in the table, not the audit row); applies to every statement that starts after the commit.';

CREATE FUNCTION eav.redaction_rule_disable(p_label text, p_reason text,
    p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_id bigint;
BEGIN
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'disabling a redaction rule needs a reason' USING ERRCODE = '22023';
    END IF;
    UPDATE eav.redaction_rules SET enabled = false, disabled_by = v_actor,
        disabled_at = now(), disabled_reason = p_reason
    WHERE label = p_label AND enabled
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'no enabled redaction rule labelled "%"', p_label
            USING ERRCODE = 'EA003';
    END IF;
    PERFORM eav.audit('redaction.rule_disabled', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('rule_id', v_id, 'label', p_label, 'reason', p_reason));
END;
$$;
COMMENT ON FUNCTION eav.redaction_rule_disable(text, text, text) IS 'Disables an enabled redaction rule (reason required; EA003 if there is none of that label). Audited redaction.rule_disabled; the row is kept.';
