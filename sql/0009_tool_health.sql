-- 0009_tool_health: the http and mcp tool kinds, tool health (degraded,
-- unavailable, probes), rate limits that defer a step without spending an
-- attempt, and idempotency keys given by clients: a key reused with
-- another input is refused before any call, and a key whose outcome is
-- recorded gets that outcome instead of a second call.
--
-- What a worker learns at its claim is a "gate" per step: nothing (call
-- the tool), defer (rate limited, or unavailable until the next probe),
-- fail (unavailable, config says fail fast), replay (the key's outcome is
-- recorded) or collision (the key belongs to another input).  The worker
-- then calls nothing and reports the gate back as the step's outcome; SQL
-- applies it.  So the hot path (builtin tools, keys eav derived) pays one
-- join condition, and every decision is made and audited in SQL.

-- Schema ------------------------------------------------------------------------

ALTER TABLE eav.tools ADD COLUMN probe_after timestamptz;
COMMENT ON COLUMN eav.tools.probe_after IS 'While unavailable: when the next call may go through as a probe (one per probe interval); a success brings the tool back.';
COMMENT ON COLUMN eav.tools.health IS 'available, degraded or unavailable, from consecutive_errors and the thresholds of config.health (eav.health_config_check); changed only by eav.tool_health_apply and eav.tool_health_reset, audited tool.health_changed.';
COMMENT ON COLUMN eav.tools.consecutive_errors IS 'Calls in a row that failed through the tool (transport errors, 5xx, time-outs, unknown outcomes) since the last call it answered.';
CREATE INDEX tools_unhealthy_idx ON eav.tools (name)
    WHERE health = 'unavailable' OR rate_limit_resets_at IS NOT NULL;

ALTER TABLE eav.unknown_outcomes
    DROP CONSTRAINT unknown_outcomes_detected_by_check;
ALTER TABLE eav.unknown_outcomes
    ADD CONSTRAINT unknown_outcomes_detected_by_check
    CHECK (detected_by IN ('worker_exit', 'incarnation', 'sweep',
                           'tool_timeout', 'tool_signal', 'tool_lost'));
COMMENT ON COLUMN eav.unknown_outcomes.detected_by IS 'worker_exit (eavd reaped the worker), incarnation (a new eavd found it at start), sweep (periodic check of live workers), tool_timeout (the worker gave up on a call past the tool''s timeout_ms), tool_signal (the called program was killed by a signal) or tool_lost (the connection or server went away after the request was sent).';

CREATE TABLE eav.idempotency_keys (
    tool            text NOT NULL,
    idempotency_key text NOT NULL,
    fingerprint     bytea NOT NULL,
    step_id         bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tool, idempotency_key)
);
COMMENT ON TABLE eav.idempotency_keys IS 'Idempotency keys given by clients at enqueue (keys eav derives, eav:<task>:<ordinal>, are unique by construction and not listed): the first step to use a key owns it with the fingerprint of its input; a later step with the same key and another input is refused at its claim (idempotency.collision).';
COMMENT ON COLUMN eav.idempotency_keys.tool IS 'Tool the key is used with.';
COMMENT ON COLUMN eav.idempotency_keys.idempotency_key IS 'The key.';
COMMENT ON COLUMN eav.idempotency_keys.fingerprint IS 'sha256 of the tool and the canonical input (eav.input_fingerprint).';
COMMENT ON COLUMN eav.idempotency_keys.step_id IS 'First step that used the key.';
COMMENT ON COLUMN eav.idempotency_keys.created_at IS 'When it was first used.';
CREATE FUNCTION eav.idempotency_keys_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'eav.idempotency_keys rows are never changed or deleted: the first use of a key owns it'
        USING ERRCODE = 'EA003';
END;
$$;
COMMENT ON FUNCTION eav.idempotency_keys_refuse() IS 'Trigger that refuses UPDATE and DELETE on eav.idempotency_keys.';
CREATE TRIGGER idempotency_keys_no_change BEFORE UPDATE OR DELETE ON eav.idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION eav.idempotency_keys_refuse();

CREATE FUNCTION eav.input_fingerprint(p_tool text, p_input jsonb)
RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    -- jsonb text is canonical: keys sorted, one spelling per value.
    SELECT sha256(convert_to(jsonb_build_array(p_tool, p_input)::text, 'UTF8'));
$$;
COMMENT ON FUNCTION eav.input_fingerprint(text, jsonb) IS 'Fingerprint of a call: sha256 of the tool name and the canonical text of its input.';

CREATE FUNCTION eav.key_is_derived(p_key text, p_step_id bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_key = 'eav:' || (p_step_id / 128) || ':' || (p_step_id % 128);
$$;
COMMENT ON FUNCTION eav.key_is_derived(text, bigint) IS 'True if a step''s key is the one eav derives (eav:<task>:<ordinal>), which no other step can have.';

CREATE FUNCTION eav.idempotency_key_note()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eav.idempotency_keys (tool, idempotency_key, fingerprint, step_id)
    VALUES (NEW.tool, NEW.idempotency_key,
            eav.input_fingerprint(NEW.tool, NEW.input), NEW.id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.idempotency_key_note() IS 'Trigger: lists a client-given idempotency key in eav.idempotency_keys (first use wins).';
-- A row trigger with a WHEN clause: for derived keys no event is queued.
CREATE TRIGGER steps_idempotency_key AFTER INSERT ON eav.steps
    FOR EACH ROW WHEN (NOT eav.key_is_derived(NEW.idempotency_key, NEW.id))
    EXECUTE FUNCTION eav.idempotency_key_note();
INSERT INTO eav.idempotency_keys (tool, idempotency_key, fingerprint, step_id)
SELECT DISTINCT ON (tool, idempotency_key) tool, idempotency_key,
       eav.input_fingerprint(tool, input), id
FROM eav.steps WHERE NOT eav.key_is_derived(idempotency_key, id)
ORDER BY tool, idempotency_key, id;

-- Configs ---------------------------------------------------------------------

-- Health thresholds, for every kind but builtin.
CREATE FUNCTION eav.health_config_check(p_health jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := coalesce(p_health, '{}');
    v_deg bigint;
    v_unav bigint;
    v_when text;
BEGIN
    IF jsonb_typeof(v) <> 'object' THEN
        RAISE EXCEPTION 'tool config: "health" must be an object' USING ERRCODE = '22023';
    END IF;
    PERFORM eav.exec_config_keys(v, ARRAY['degraded_after', 'unavailable_after',
        'when_unavailable', 'probe_ms'], 'health.');
    v_deg := coalesce(eav.exec_config_int(v, 'degraded_after',
        'health.degraded_after', 1, 1000000), 3);
    v_unav := coalesce(eav.exec_config_int(v, 'unavailable_after',
        'health.unavailable_after', 1, 1000000), 10);
    IF v_unav < v_deg THEN
        RAISE EXCEPTION 'tool config: "health.unavailable_after" (%) must not be less than "health.degraded_after" (%)',
            v_unav, v_deg USING ERRCODE = '22023';
    END IF;
    IF v ? 'when_unavailable' AND (jsonb_typeof(v->'when_unavailable') <> 'string'
       OR v->>'when_unavailable' NOT IN ('wait', 'fail')) THEN
        RAISE EXCEPTION 'tool config: "health.when_unavailable" must be "wait" or "fail"'
            USING ERRCODE = '22023';
    END IF;
    v_when := coalesce(v->>'when_unavailable', 'wait');
    RETURN jsonb_build_object('degraded_after', v_deg, 'unavailable_after', v_unav,
        'when_unavailable', v_when,
        'probe_ms', coalesce(eav.exec_config_int(v, 'probe_ms', 'health.probe_ms',
            100, 86400000), 30000));
END;
$$;
COMMENT ON FUNCTION eav.health_config_check(jsonb) IS 'Validates config.health: degraded_after (default 3) and unavailable_after (default 10) consecutive errors, when_unavailable wait (steps deferred until a probe succeeds; default) or fail (steps fail at once without a call), probe_ms (100 to 86400000, default 30000).';

-- A string-to-string object of at most 32 entries (HTTP headers).
CREATE FUNCTION eav.http_config_headers(p_obj jsonb, p_field text, p_values text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_bad text;
BEGIN
    IF p_obj IS NULL THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(p_obj) <> 'object' OR (SELECT count(*) FROM jsonb_object_keys(p_obj)) > 32 THEN
        RAISE EXCEPTION 'http tool config: "%" must be an object of at most 32 headers', p_field
            USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_bad FROM jsonb_each(p_obj) AS e(k, v)
    WHERE k !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]{1,64}$' OR jsonb_typeof(v) <> 'string'
       OR v->>0 !~ p_values OR octet_length(v->>0) > 1024
       OR lower(k) IN ('host', 'content-length', 'transfer-encoding', 'connection',
                       'idempotency-key')
    ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'http tool config: "%" entry "%" is not allowed', p_field, left(v_bad, 64)
            USING ERRCODE = '22023',
                  HINT = 'Header names are HTTP tokens (not Host, Content-Length, Transfer-Encoding, Connection or Idempotency-Key, which the worker sets); values are strings without control characters'
                         || CASE WHEN p_field = 'secret_headers'
                                 THEN ', naming a secret: letters, digits and _.' ELSE '.' END;
    END IF;
    RETURN p_obj;
END;
$$;
COMMENT ON FUNCTION eav.http_config_headers(jsonb, text, text) IS 'Validates the headers or secret_headers object of an http tool config (22023 naming the entry).';

CREATE FUNCTION eav.http_config_check(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_url text;
    v_method text := coalesce(p_config->>'method', 'POST');
    v_body text := coalesce(p_config->>'body', 'input');
BEGIN
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'http tool config must be a JSON object' USING ERRCODE = '22023';
    END IF;
    PERFORM eav.exec_config_keys(p_config, ARRAY['url', 'method', 'headers',
        'secret_headers', 'body', 'max_output_bytes'], '');
    IF jsonb_typeof(p_config->'url') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'http tool config: "url" is missing or not a string'
            USING ERRCODE = '22023',
                  HINT = 'e.g. {"url": "http://127.0.0.1:8080/charge/{order}"}; {name} is replaced by input.name.';
    END IF;
    v_url := p_config->>'url';
    IF v_url !~* '^[a-z][a-z0-9+.-]*://' THEN
        RAISE EXCEPTION 'http tool config: "url" must be an absolute URL, not "%"', left(v_url, 200)
            USING ERRCODE = '22023';
    END IF;
    IF v_url !~* '^https?://' THEN
        RAISE EXCEPTION 'http tool config: "url" must use http or https, not "%"',
            substring(v_url from '^[^:]*') USING ERRCODE = '22023';
    END IF;
    IF octet_length(v_url) > 2048 OR v_url !~* '^https?://[^/?#\s@]+(/[^\s]*)?$' THEN
        RAISE EXCEPTION 'http tool config: "url" must be http(s)://host[:port][/path], at most 2048 bytes, without spaces or user info'
            USING ERRCODE = '22023';
    END IF;
    IF v_method NOT IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')
       OR jsonb_typeof(coalesce(p_config->'method', '"POST"')) <> 'string' THEN
        RAISE EXCEPTION 'http tool config: "method" must be GET, POST, PUT, PATCH or DELETE'
            USING ERRCODE = '22023';
    END IF;
    IF v_body NOT IN ('input', 'none')
       OR jsonb_typeof(coalesce(p_config->'body', '"input"')) <> 'string' THEN
        RAISE EXCEPTION 'http tool config: "body" must be "input" (the step input as JSON) or "none"'
            USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('url', v_url, 'method', v_method, 'body', v_body,
        'headers', eav.http_config_headers(p_config->'headers', 'headers',
            '^[^\x01-\x1f\x7f]*$'),
        'secret_headers', eav.http_config_headers(p_config->'secret_headers',
            'secret_headers', '^[A-Za-z_][A-Za-z0-9_]{0,127}$'),
        'max_output_bytes', coalesce(eav.exec_config_int(p_config,
            'max_output_bytes', 'max_output_bytes', 1, 1048576), 65536));
END;
$$;
COMMENT ON FUNCTION eav.http_config_check(jsonb) IS 'Validates an http tool config and returns it with defaults: url (http or https; {name} placeholders take input fields), method (GET POST PUT PATCH DELETE, default POST), headers (static), secret_headers (header -> secret name, read by the worker from the file <secrets_dir>/<name> or the environment variable of that name; never stored here), body (input, default, or none), max_output_bytes (1 to 1048576, default 65536). Raises 22023 naming the field.';

CREATE FUNCTION eav.mcp_config_check(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb;
    v_msg text;
    v_hint text;
BEGIN
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'mcp tool config must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF p_config ? 'tool' AND (jsonb_typeof(p_config->'tool') <> 'string'
       OR octet_length(p_config->>'tool') NOT BETWEEN 1 AND 128) THEN
        RAISE EXCEPTION 'mcp tool config: "tool" must be a string of 1 to 128 bytes'
            USING ERRCODE = '22023';
    END IF;
    BEGIN
        v := eav.exec_config_check(p_config - 'tool' - 'init_timeout_ms');
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
        v_msg := replace(v_msg, 'exec tool config', 'mcp tool config');
        IF v_hint = '' THEN
            RAISE EXCEPTION '%', v_msg USING ERRCODE = '22023';
        END IF;
        RAISE EXCEPTION '%', v_msg USING ERRCODE = '22023', HINT = v_hint;
    END;
    RETURN v || jsonb_strip_nulls(jsonb_build_object('tool', p_config->'tool',
        'init_timeout_ms', coalesce(eav.exec_config_int(p_config, 'init_timeout_ms',
            'init_timeout_ms', 1, 600000), 10000)));
END;
$$;
COMMENT ON FUNCTION eav.mcp_config_check(jsonb) IS 'Validates an mcp tool config: the server program as for exec (argv, env, max_output_bytes, rlimits), tool (name on the server; default the eav tool''s name), init_timeout_ms (1 to 600000, default 10000). Raises 22023 naming the field.';

CREATE OR REPLACE FUNCTION eav.tool_register(p_name text, p_kind text, p_config jsonb,
    p_idempotent boolean, p_timeout_ms integer DEFAULT 30000,
    p_description text DEFAULT '', p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_existed boolean;
    v_config jsonb;
    v_max_output integer := 65536;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid tool name "%"', p_name
            USING ERRCODE = '22023',
                  HINT = 'Use lowercase letters, digits, _ . -; start with a letter; at most 63 characters.';
    END IF;
    IF p_kind IS NULL OR p_kind NOT IN ('builtin', 'exec', 'http', 'mcp') THEN
        RAISE EXCEPTION 'tool kind "%" is not supported', p_kind
            USING ERRCODE = '22023', HINT = 'Supported kinds: builtin, exec, http, mcp.';
    END IF;
    IF p_kind = 'builtin' THEN
        IF p_config IS NULL OR jsonb_typeof(p_config) <> 'object'
           OR (p_config->>'builtin') IS NULL
           OR (p_config->>'builtin') NOT IN ('noop', 'sleep', 'fail', 'ledger.transfer') THEN
            RAISE EXCEPTION 'builtin tool config must be {"builtin": "noop"|"sleep"|"fail"|"ledger.transfer"}'
                USING ERRCODE = '22023';
        ELSIF (SELECT count(*) FROM jsonb_object_keys(p_config)) <> 1 THEN
            RAISE EXCEPTION 'builtin tool config has unknown fields'
                USING ERRCODE = '22023';
        END IF;
        v_config := p_config;
    ELSE
        IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION '% tool config must be a JSON object', p_kind
                USING ERRCODE = '22023';
        END IF;
        v_config := CASE p_kind
            WHEN 'exec' THEN eav.exec_config_check(p_config - 'health')
            WHEN 'http' THEN eav.http_config_check(p_config - 'health')
            ELSE eav.mcp_config_check(p_config - 'health') END
            || jsonb_build_object('health', eav.health_config_check(p_config->'health'));
        v_max_output := (v_config->>'max_output_bytes')::integer;
    END IF;
    IF p_idempotent IS NULL THEN
        RAISE EXCEPTION 'idempotent must be true or false' USING ERRCODE = '22023';
    END IF;
    IF p_timeout_ms IS NULL OR p_timeout_ms NOT BETWEEN 1 AND 86400000 THEN
        RAISE EXCEPTION 'timeout_ms must be between 1 and 86400000'
            USING ERRCODE = '22023';
    END IF;
    v_existed := EXISTS (SELECT 1 FROM eav.tools WHERE name = p_name);
    INSERT INTO eav.tools (name, kind, config, idempotent, timeout_ms,
                           max_output_bytes, description)
    VALUES (p_name, p_kind, v_config, p_idempotent, p_timeout_ms, v_max_output,
            coalesce(p_description, ''))
    ON CONFLICT (name) DO UPDATE
        SET kind = EXCLUDED.kind, config = EXCLUDED.config,
            idempotent = EXCLUDED.idempotent, timeout_ms = EXCLUDED.timeout_ms,
            max_output_bytes = EXCLUDED.max_output_bytes,
            description = EXCLUDED.description, updated_at = now();
    -- The config never holds a secret (secret_headers names them), so it
    -- may be audited whole.
    PERFORM eav.audit(CASE WHEN v_existed THEN 'tool.updated' ELSE 'tool.registered' END,
        'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('tool', p_name, 'kind', p_kind, 'config', v_config,
                           'idempotent', p_idempotent, 'timeout_ms', p_timeout_ms));
END;
$$;
COMMENT ON FUNCTION eav.tool_register(text, text, jsonb, boolean, integer, text, text) IS 'Registers or changes a tool: builtin, exec (eav.exec_config_check), http (eav.http_config_check) or mcp (eav.mcp_config_check); every kind but builtin takes config.health (eav.health_config_check). Audited tool.registered / tool.updated; a refused registration stores nothing.';

-- Health ------------------------------------------------------------------------

-- Moves one tool to a health (the row is locked by the caller): audited,
-- with the alarm raised on unavailable and resolved on available.
CREATE FUNCTION eav.tool_health_set(t eav.tools, p_health text, p_errors integer,
    p_last_error text, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE eav.tools SET health = p_health, consecutive_errors = p_errors,
        last_error = coalesce(p_last_error, last_error),
        probe_after = CASE WHEN p_health = 'unavailable'
            THEN now() + make_interval(secs => (config->'health'->>'probe_ms')::numeric / 1000) END,
        updated_at = now()
    WHERE name = t.name;
    IF p_health = t.health THEN
        RETURN;
    END IF;
    PERFORM eav.audit('tool.health_changed',
        CASE WHEN p_health = 'available' THEN 'success' ELSE 'failure' END, p_actor,
        NULL, NULL, NULL, jsonb_strip_nulls(jsonb_build_object('tool', t.name,
            'from', t.health, 'to', p_health, 'consecutive_errors', p_errors,
            'last_error', p_last_error)));
    IF p_health = 'unavailable' THEN
        PERFORM eav.alarm_raise('tool_unavailable', 'critical', 'tool:' || t.name,
            format('tool %s is unavailable after %s errors in a row (last: %s); its steps %s',
                   t.name, p_errors, coalesce(p_last_error, 'none'),
                   CASE WHEN t.config->'health'->>'when_unavailable' = 'fail'
                        THEN 'fail without a call' ELSE 'wait for a probe to succeed' END),
            jsonb_build_object('tool', t.name, 'consecutive_errors', p_errors), p_actor);
    ELSIF p_health = 'available' THEN
        PERFORM eav.alarm_resolve_subject('tool_unavailable', 'tool:' || t.name, p_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.tool_health_set(eav.tools, text, integer, text, text) IS 'Sets a tool''s health and error count; a change is audited tool.health_changed, unavailable raises the tool_unavailable alarm, available resolves it.';

-- What the calls of one completion batch say about their tools.  Elements
-- carry "tool" only for tools that were called (not builtin), and
-- "tool_error" when the call failed through the tool; a rate-limited
-- answer ("deferred") says nothing.  Errors after the batch's last answer
-- add to the count; an answer resets it.  Tools are locked in name order.
CREATE FUNCTION eav.tool_health_apply(p_actor text, p_batch jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    t eav.tools;
    v_errors integer;
    v_health text;
BEGIN
    FOR r IN
        WITH e AS (
            SELECT x->>'tool' AS tool, n, x->>'error' AS error,
                   coalesce((x->>'tool_error')::boolean, false) AS err,
                   x->>'outcome' AS outcome
            FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS a(x, n)
            WHERE x ? 'tool'
        ), l AS (
            SELECT e.*, max(n) FILTER (WHERE NOT err AND outcome <> 'deferred')
                OVER (PARTITION BY tool) AS last_ok
            FROM e
        )
        SELECT tool, last_ok IS NOT NULL AS answered,
               count(*) FILTER (WHERE err AND n > coalesce(last_ok, 0)) AS errs,
               (array_agg(error ORDER BY n DESC) FILTER (WHERE err))[1] AS last_error
        FROM l GROUP BY tool, last_ok ORDER BY tool
    LOOP
        SELECT * INTO t FROM eav.tools WHERE name = r.tool;
        IF NOT FOUND OR t.kind = 'builtin'
           OR (r.errs = 0 AND t.consecutive_errors = 0 AND t.health = 'available') THEN
            CONTINUE;
        END IF;
        SELECT * INTO t FROM eav.tools WHERE name = r.tool FOR UPDATE;
        v_errors := CASE WHEN r.answered THEN r.errs ELSE t.consecutive_errors + r.errs END;
        v_health := CASE
            WHEN v_errors >= (t.config->'health'->>'unavailable_after')::integer THEN 'unavailable'
            WHEN v_errors >= (t.config->'health'->>'degraded_after')::integer THEN 'degraded'
            ELSE 'available' END;
        IF v_health = t.health AND v_health <> 'unavailable' THEN
            UPDATE eav.tools SET consecutive_errors = v_errors,
                last_error = coalesce(r.last_error, last_error)
            WHERE name = t.name;
        ELSE
            PERFORM eav.tool_health_set(t, v_health, v_errors, r.last_error, p_actor);
        END IF;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.tool_health_apply(text, jsonb) IS 'Updates consecutive_errors and health of the tools called in a completion batch (eav.tool_health_set on a change; a failed probe pushes probe_after).';

CREATE FUNCTION eav.tool_health_reset(p_name text, p_actor text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    t eav.tools;
    v_actor text := coalesce(p_actor, eav.default_actor());
BEGIN
    SELECT * INTO t FROM eav.tools WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tool "%" does not exist', p_name USING ERRCODE = 'EA003';
    END IF;
    UPDATE eav.tools SET rate_limit_resets_at = NULL WHERE name = p_name;
    PERFORM eav.tool_health_set(t, 'available', 0, NULL, v_actor);
    IF t.health = 'available' THEN
        PERFORM eav.audit('tool.health_changed', 'success', v_actor, NULL, NULL, NULL,
            jsonb_build_object('tool', p_name, 'from', t.health, 'to', 'available',
                               'consecutive_errors', 0, 'reset', true));
    END IF;
    PERFORM pg_notify('eav_steps', '');
    RETURN t.health;
END;
$$;
COMMENT ON FUNCTION eav.tool_health_reset(text, text) IS 'An operator declares a tool available again (error count and rate limit cleared, alarm resolved; audited tool.health_changed). Returns the health it had.';

-- Gated outcomes ----------------------------------------------------------------

-- A completion that found its attempt closed: a repeat of this one
-- (already_applied) or a stale epoch (fenced, audited).
CREATE FUNCTION eav.complete_missed(p_actor text, p_step_id bigint, p_epoch bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
BEGIN
    SELECT * INTO s FROM eav.steps WHERE id = p_step_id;
    IF FOUND AND s.claim_epoch = p_epoch AND s.state <> 'running' THEN
        RETURN 'already_applied';
    END IF;
    PERFORM eav.audit('fence.rejected', 'refused', p_actor, s.trace_id, s.task_id,
        p_step_id, jsonb_build_object('epoch', p_epoch,
            'current_epoch', s.claim_epoch, 'state', s.state));
    RETURN 'fenced';
END;
$$;
COMMENT ON FUNCTION eav.complete_missed(text, bigint, bigint) IS 'For a completion whose attempt is no longer running: already_applied if it is this epoch''s, else fenced (audited fence.rejected).';

-- Gives a claimed step back without spending its attempt, to run again
-- at the tool's rate-limit reset or next probe (or after p_after_ms).  A
-- rate-limited answer (p_rate_limited) first moves the tool's reset time.
-- Audited as a release (step.released), which the invariants count as an
-- attempt not spent.
CREATE FUNCTION eav.step_defer(p_actor text, p_step_id bigint, p_epoch bigint,
    p_after_ms bigint, p_rate_limited boolean, p_reason text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    t eav.tools;
    v_until timestamptz;
    v_task_state text;
BEGIN
    SELECT * INTO s FROM eav.steps
    WHERE id = p_step_id AND claim_epoch = p_epoch AND state = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN eav.complete_missed(p_actor, p_step_id, p_epoch);
    END IF;
    IF p_rate_limited THEN
        UPDATE eav.tools SET rate_limit_resets_at = greatest(rate_limit_resets_at,
                now() + make_interval(secs => greatest(p_after_ms, 0) / 1000.0)),
            updated_at = now()
        WHERE name = s.tool RETURNING * INTO t;
        PERFORM eav.audit('tool.rate_limited', 'failure', p_actor, s.trace_id,
            s.task_id, s.id, jsonb_build_object('tool', s.tool,
                'resets_at', t.rate_limit_resets_at, 'reason', p_reason));
    ELSE
        SELECT * INTO t FROM eav.tools WHERE name = s.tool;
    END IF;
    SELECT state INTO v_task_state FROM eav.tasks WHERE id = s.task_id FOR SHARE;
    IF v_task_state <> 'active' THEN
        RETURN (SELECT c.status FROM eav.complete(p_actor, ARRAY[s.id], ARRAY[p_epoch],
            ARRAY['release'], ARRAY[NULL::jsonb], ARRAY[p_reason]) c);
    END IF;
    v_until := greatest(now(),
        CASE WHEN p_after_ms IS NOT NULL
             THEN now() + make_interval(secs => p_after_ms / 1000.0) END,
        CASE WHEN t.rate_limit_resets_at > now() THEN t.rate_limit_resets_at END,
        CASE WHEN t.health = 'unavailable' THEN t.probe_after END);
    UPDATE eav.steps SET state = 'pending', attempt = attempt - 1, run_at = v_until,
        error = p_reason, updated_at = now()
    WHERE id = s.id;
    PERFORM eav.audit('step.released', 'success', p_actor, s.trace_id, s.task_id, s.id,
        jsonb_build_object('epoch', p_epoch, 'attempt', s.attempt - 1,
            'reason', p_reason, 'run_at', v_until, 'deferred', true));
    RETURN 'pending';
END;
$$;
COMMENT ON FUNCTION eav.step_defer(text, bigint, bigint, bigint, boolean, text) IS 'Sends a running step back to pending without spending its attempt, to run at the latest of now + p_after_ms, the tool''s rate-limit reset and (unavailable tool) its next probe; p_rate_limited moves the tool''s reset first (audited tool.rate_limited). Audited step.released with "deferred": true.';

-- The outcome recorded for the step's key, instead of a second call.
CREATE FUNCTION eav.step_replay(p_actor text, p_step_id bigint, p_epoch bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    o eav.idempotency_outcomes;
BEGIN
    SELECT * INTO s FROM eav.steps
    WHERE id = p_step_id AND claim_epoch = p_epoch AND state = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN eav.complete_missed(p_actor, p_step_id, p_epoch);
    END IF;
    SELECT * INTO o FROM eav.idempotency_outcomes
    WHERE tool = s.tool AND idempotency_key = s.idempotency_key;
    IF NOT FOUND THEN
        RETURN (SELECT c.status FROM eav.complete(p_actor, ARRAY[s.id], ARRAY[p_epoch],
            ARRAY['release'], ARRAY[NULL::jsonb], ARRAY['no recorded outcome']) c);
    END IF;
    PERFORM eav.audit('tool_call.deduplicated', 'success', p_actor, s.trace_id,
        s.task_id, s.id, jsonb_build_object('epoch', p_epoch,
            'outcome', o.outcome, 'recorded_by_step', o.step_id));
    RETURN (SELECT c.status FROM eav.complete(p_actor, ARRAY[s.id], ARRAY[p_epoch],
        ARRAY[o.outcome], ARRAY[o.result], ARRAY[o.error]) c);
END;
$$;
COMMENT ON FUNCTION eav.step_replay(text, bigint, bigint) IS 'Completes a running step with the outcome recorded for its (tool, idempotency key), without a call (audited tool_call.deduplicated).';

-- The step's key belongs to another input: refused before any call.
CREATE FUNCTION eav.step_collision(p_actor text, p_step_id bigint, p_epoch bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    k eav.idempotency_keys;
    v_error text;
BEGIN
    SELECT * INTO s FROM eav.steps
    WHERE id = p_step_id AND claim_epoch = p_epoch AND state = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN eav.complete_missed(p_actor, p_step_id, p_epoch);
    END IF;
    SELECT * INTO k FROM eav.idempotency_keys
    WHERE tool = s.tool AND idempotency_key = s.idempotency_key;
    v_error := format('idempotency key collision: key "%s" of tool %s was first used by step %s with another input; refused before any call',
                      left(s.idempotency_key, 64), s.tool, k.step_id);
    PERFORM eav.audit('idempotency.collision', 'refused', p_actor, s.trace_id,
        s.task_id, s.id, jsonb_build_object('epoch', p_epoch, 'tool', s.tool,
            'idempotency_key', s.idempotency_key, 'first_step', k.step_id,
            'fingerprint', encode(eav.input_fingerprint(s.tool, s.input), 'hex'),
            'first_fingerprint', encode(k.fingerprint, 'hex')));
    PERFORM eav.alarm_raise('idempotency_collision', 'warning', 'step:' || s.id,
        v_error, jsonb_build_object('step_id', s.id, 'task_id', s.task_id,
            'tool', s.tool, 'first_step', k.step_id), p_actor);
    RETURN (SELECT c.status FROM eav.complete(p_actor, ARRAY[s.id], ARRAY[p_epoch],
        ARRAY['failed'], ARRAY[NULL::jsonb], ARRAY[v_error]) c);
END;
$$;
COMMENT ON FUNCTION eav.step_collision(text, bigint, bigint) IS 'Fails a running step whose client-given idempotency key was first used with another input: audited idempotency.collision, alarm idempotency_collision, no call made.';

-- Completion --------------------------------------------------------------------

-- As in 0007, with tool_lost.
CREATE OR REPLACE FUNCTION eav.complete_unknown(p_actor text, p_step_id bigint,
    p_epoch bigint, p_detected_by text, p_reason text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    IF p_detected_by IS NULL
       OR p_detected_by NOT IN ('tool_timeout', 'tool_signal', 'tool_lost') THEN
        RAISE EXCEPTION 'an unknown outcome needs detected_by tool_timeout, tool_signal or tool_lost, not %',
            coalesce(p_detected_by, 'null') USING ERRCODE = '22023';
    END IF;
    v_status := eav.step_unknown(p_step_id, p_epoch, p_detected_by, p_actor, p_reason);
    IF v_status <> 'skipped' THEN
        RETURN v_status;
    END IF;
    IF EXISTS (SELECT 1 FROM eav.unknown_outcomes u
               WHERE u.step_id = p_step_id AND u.claim_epoch = p_epoch
                 AND u.detected_by = p_detected_by) THEN
        RETURN 'already_applied';
    END IF;
    RETURN eav.complete_missed(p_actor, p_step_id, p_epoch);
END;
$$;
COMMENT ON FUNCTION eav.complete_unknown(text, bigint, bigint, text, text) IS 'A worker reports that its call''s outcome is unknown (tool_timeout, tool_signal, tool_lost): eav.step_unknown for that epoch. Returns its decision, already_applied for a repeat, or fenced (audited fence.rejected) if the attempt was closed otherwise.';

CREATE OR REPLACE FUNCTION eav.complete_batch(p_actor text, p_batch jsonb)
RETURNS TABLE (step_id bigint, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
    v_epochs bigint[];
    v_outcomes text[];
    v_results jsonb[];
    v_errors text[];
    v_special boolean;
    v_rec boolean;
    v_tools boolean;
    e jsonb;
BEGIN
    SELECT coalesce(bool_or(x->>'outcome' NOT IN ('succeeded', 'failed', 'retry', 'release')), false),
           coalesce(bool_or(x ? 'rec'), false), coalesce(bool_or(x ? 'tool'), false)
    INTO v_special, v_rec, v_tools
    FROM jsonb_array_elements(p_batch) AS a(x);
    -- Outcomes other than plain completions: each its own guarded call.
    IF v_special THEN
        FOR e IN SELECT x FROM jsonb_array_elements(p_batch) AS a(x)
                 WHERE x->>'outcome' NOT IN ('succeeded', 'failed', 'retry', 'release')
        LOOP
            step_id := (e->>'id')::bigint;
            status := CASE e->>'outcome'
                WHEN 'unknown' THEN eav.complete_unknown(p_actor, step_id,
                    (e->>'epoch')::bigint, e->>'detected_by', e->>'error')
                WHEN 'deferred' THEN eav.step_defer(p_actor, step_id,
                    (e->>'epoch')::bigint, (e->>'retry_after_ms')::bigint,
                    coalesce((e->>'rate_limited')::boolean, false), e->>'error')
                WHEN 'replay' THEN eav.step_replay(p_actor, step_id, (e->>'epoch')::bigint)
                WHEN 'collision' THEN eav.step_collision(p_actor, step_id,
                    (e->>'epoch')::bigint)
                END;
            IF status IS NULL THEN
                RAISE EXCEPTION 'unknown outcome "%" for step %', e->>'outcome', step_id
                    USING ERRCODE = '22023';
            END IF;
            RETURN NEXT;
        END LOOP;
    END IF;
    SELECT array_agg((e->>'id')::bigint ORDER BY n),
           array_agg((e->>'epoch')::bigint ORDER BY n),
           array_agg(e->>'outcome' ORDER BY n),
           array_agg(CASE WHEN jsonb_typeof(e->'result') <> 'null'
                          THEN e->'result' END ORDER BY n),
           array_agg(e->>'error' ORDER BY n)
    INTO v_ids, v_epochs, v_outcomes, v_results, v_errors
    FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS a(e, n)
    WHERE e->>'outcome' IN ('succeeded', 'failed', 'retry', 'release');
    IF v_ids IS NOT NULL THEN
        RETURN QUERY SELECT c.step_id, c.status FROM eav.complete(p_actor, v_ids,
            v_epochs, v_outcomes, v_results, v_errors) c;
    END IF;
    -- A client-given key's final outcome is kept, so a later step with
    -- the same key and input gets it without a call (eav.step_replay).
    IF v_rec THEN
        INSERT INTO eav.idempotency_outcomes (tool, idempotency_key, step_id,
            claim_epoch, outcome, result, error)
        SELECT s.tool, s.idempotency_key, s.id, s.claim_epoch, s.state, s.result, s.error
        FROM jsonb_array_elements(p_batch) AS a(x)
        JOIN eav.steps s ON s.id = (x->>'id')::bigint
        WHERE x ? 'rec' AND x->>'outcome' IN ('succeeded', 'failed')
          AND s.claim_epoch = (x->>'epoch')::bigint AND s.state = x->>'outcome'
        ON CONFLICT DO NOTHING;
    END IF;
    IF v_tools THEN
        PERFORM eav.tool_health_apply(p_actor, p_batch);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.complete_batch(text, jsonb) IS 'A worker''s completion batch: a JSON array of {"id", "epoch", "outcome", "result", "error"}. Outcomes succeeded, failed, retry, release go to eav.complete; unknown (with "detected_by") to eav.complete_unknown; deferred ("retry_after_ms", "rate_limited") to eav.step_defer; replay to eav.step_replay; collision to eav.step_collision. "rec": the step''s client-given key gets its final outcome recorded; "tool" and "tool_error": the call counts for the tool''s health (eav.tool_health_apply).';

-- Claim -------------------------------------------------------------------------

DROP FUNCTION eav.complete_and_claim(text, jsonb, text, bigint, integer, integer, text[]);
DROP FUNCTION eav.claim(text, bigint, integer, integer, text[]);

CREATE FUNCTION eav.claim(p_node text, p_incarnation bigint, p_pid integer,
    p_limit integer, p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer,
    kind text, config text, gate text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_actor text := format('worker:%s/%s/%s', p_node, p_incarnation, p_pid);
BEGIN
    PERFORM 1 FROM eav.nodes n WHERE n.name = p_node AND n.incarnation = p_incarnation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'incarnation % is not the current incarnation of node "%"',
            p_incarnation, p_node USING ERRCODE = 'EA002';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'claim limit must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT s.id FROM eav.steps s
        WHERE s.state = 'pending' AND s.run_at <= now()
          AND (p_queues IS NULL OR s.queue = ANY (p_queues))
        ORDER BY s.run_at, s.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), c AS (
        UPDATE eav.steps s
        SET state = 'running', claim_epoch = s.claim_epoch + 1,
            attempt = s.attempt + 1, owner_node = p_node,
            owner_incarnation = p_incarnation, owner_pid = p_pid,
            claimed_at = now(), updated_at = now()
        FROM picked WHERE s.id = picked.id
        RETURNING s.id, s.task_id, s.claim_epoch, s.attempt, s.tool, s.input,
                  s.idempotency_key, s.trace_id
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'step.claimed', 'success', v_actor, c.trace_id, c.task_id, c.id,
               jsonb_build_object('epoch', c.claim_epoch, 'attempt', c.attempt)
        FROM c
    ), probe AS (
        -- An unavailable tool whose probe is due lets one call through;
        -- the row lock makes that one call per probe interval across
        -- workers (a concurrent claim re-checks probe_after and skips).
        UPDATE eav.tools t
        SET probe_after = now() + make_interval(
                secs => (t.config->'health'->>'probe_ms')::numeric / 1000)
        WHERE t.health = 'unavailable' AND t.probe_after <= now()
          AND t.name IN (SELECT c.tool FROM c)
        RETURNING t.name
    ), g AS (
        SELECT c.*, t.config->>'builtin' AS builtin, t.timeout_ms, t.kind,
               CASE WHEN t.kind <> 'builtin' THEN t.config::text END AS config,
               CASE
                   WHEN eav.key_is_derived(c.idempotency_key, c.id) THEN NULL
                   WHEN k.step_id <> c.id
                        AND k.fingerprint <> eav.input_fingerprint(c.tool, c.input)
                       THEN 'collision'
                   WHEN EXISTS (SELECT 1 FROM eav.idempotency_outcomes o
                                WHERE o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key)
                       THEN 'replay'
               END AS key_gate,
               CASE
                   WHEN t.rate_limit_resets_at > now() THEN 'defer'
                   WHEN t.health IS DISTINCT FROM 'unavailable' THEN NULL
                   WHEN c.tool IN (SELECT name FROM probe)
                        AND row_number() OVER (PARTITION BY c.tool ORDER BY c.id) = 1
                       THEN NULL
                   WHEN t.config->'health'->>'when_unavailable' = 'fail' THEN 'fail'
                   ELSE 'defer'
               END AS tool_gate
        FROM c LEFT JOIN eav.tools t ON t.name = c.tool
        LEFT JOIN eav.idempotency_keys k
               ON NOT eav.key_is_derived(c.idempotency_key, c.id)
              AND k.tool = c.tool AND k.idempotency_key = c.idempotency_key
    )
    SELECT g.id, g.task_id, g.claim_epoch, g.attempt, g.tool, g.builtin,
           g.input::text, g.idempotency_key, g.trace_id, g.timeout_ms, g.kind,
           g.config, coalesce(g.key_gate, g.tool_gate)
    FROM g ORDER BY g.id;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Each row carries what the worker needs to call the tool (builtin name, or kind and config) and its gate: NULL (call), defer (rate limited or unavailable: eav.step_defer), fail (unavailable, fail fast), replay (recorded outcome: eav.step_replay) or collision (eav.step_collision). Refused (EA002) for a superseded incarnation.';

CREATE FUNCTION eav.complete_and_claim(p_actor text, p_batch jsonb,
    p_node text, p_incarnation bigint, p_pid integer, p_limit integer,
    p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer, status text,
    kind text, config text, gate text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.step_id, NULL::bigint, NULL::bigint, NULL::integer, NULL::text,
           NULL::text, NULL::text, NULL::text, NULL::uuid, NULL::integer,
           c.status, NULL::text, NULL::text, NULL::text
    FROM eav.complete_batch(p_actor, p_batch) c
    WHERE c.status IN ('fenced', 'already_applied');
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_id, c.task_id, c.claim_epoch, c.attempt, c.tool,
               c.builtin, c.input, c.idempotency_key, c.trace_id,
               c.timeout_ms, 'claimed'::text, c.kind, c.config, c.gate
        FROM eav.claim(p_node, p_incarnation, p_pid, p_limit, p_queues) c;
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.complete_and_claim(text, jsonb, text, bigint, integer, integer, text[]) IS 'A worker''s cycle in one transaction: completes a batch (eav.complete_batch; rows with status fenced or already_applied report completions that did not apply) and, if p_limit > 0, claims up to p_limit steps (rows with status claimed, with the tool''s kind, config and the step''s gate).';
