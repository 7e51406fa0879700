-- 0023_watchers: periodic checks run by eav-producer that put an event in
-- the inbox when their condition holds.
--
-- A watcher is a probe and a period.  kind exec runs a program (argv, no
-- shell; its exit code false_exit, default 1, means "does not hold", 0
-- means "holds" and its stdout, a JSON object or nothing, becomes the
-- event body; anything else is a tick error).  kind http sends a GET
-- (the condition: the response has expect_status, default 200, and, if
-- body_match is set, a body that contains it; a connection error or a
-- time-out is a tick error).  The probe has timeout_ms, less than the
-- interval.
--
-- Ticks are slots: multiples of interval_ms since the Unix epoch, the
-- same for every producer.  The next one is stored in
-- eav.watchers.next_tick_at, never only in a producer's memory.  A tick
-- is three steps, since a probe runs outside any transaction:
--   eav.watcher_claim  takes due watchers FOR UPDATE SKIP LOCKED that no
--                      live lease holds, and leases each (tick_slot, the
--                      newest slot due; lease_by; lease_until = now +
--                      timeout_ms + settings.watcher_lease_grace_ms);
--   the producer runs the probe;
--   eav.watcher_done   records the outcome, only for the holder of the
--                      lease on that slot (anything else is stale, audited
--                      watcher.tick_stale and dropped), and in the same
--                      transaction puts the event in the inbox (source
--                      watcher:<name>, event_key tick:<slot>) and moves
--                      next_tick_at to the next slot after now.
-- So a tick emits at most once: a second producer cannot claim a leased
-- watcher, a producer whose lease ran out cannot complete, and the
-- inbox's dedupe on (source, event_key) would refuse a second event of
-- the slot anyway.  A producer killed mid-probe (eavd kills the probe's
-- process group) leaves a lease that runs out; the next claim audits
-- watcher.lease_expired and ticks again; one that stops gracefully kills
-- its probes and gives its leases back (eav.watcher_release).  Slots
-- missed while no producer ran are not caught up: a watcher checks the
-- present.
--
-- Tick errors (the probe could not start, timed out, crashed, exited
-- with another code, wrote what is not a JSON object, or the HTTP target
-- could not be reached) are counted and audited watcher.tick_error with
-- the reason; error_threshold consecutive ones disable the watcher
-- (audited watcher.disabled, alarm watcher_disabled on watcher:<name>)
-- until an operator enables it again (watcher.enabled, alarm resolved).

INSERT INTO eav.settings VALUES
    ('watcher_lease_grace_ms', 5000, 'How long (ms) past its time-out a watcher tick stays leased to the producer that claimed it; after that another producer may tick it again (the first one died).');

CREATE TABLE eav.watchers (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('exec', 'http')),
    config             jsonb NOT NULL,
    event_type         text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 128),
    interval_ms        integer NOT NULL CHECK (interval_ms BETWEEN 1000 AND 86400000),
    timeout_ms         integer NOT NULL CHECK (timeout_ms BETWEEN 100 AND 3600000),
    error_threshold    integer NOT NULL CHECK (error_threshold BETWEEN 1 AND 1000),
    state              text NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'disabled', 'removed')),
    next_tick_at       timestamptz,
    tick_slot          timestamptz,
    lease_by           text,
    lease_until        timestamptz,
    ticks              bigint NOT NULL DEFAULT 0,
    fires              bigint NOT NULL DEFAULT 0,
    errors             bigint NOT NULL DEFAULT 0,
    consecutive_errors integer NOT NULL DEFAULT 0,
    last_tick_at       timestamptz,
    last_outcome       text CHECK (last_outcome IN ('holds', 'false', 'error')),
    last_error         text,
    last_error_at      timestamptz,
    last_fired_at      timestamptz,
    disabled_reason    text,
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    changed_by         text NOT NULL,
    changed_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (timeout_ms < interval_ms),
    CHECK (state = 'active' OR next_tick_at IS NULL),
    CHECK ((lease_by IS NULL) = (lease_until IS NULL)
           AND (lease_by IS NULL) = (tick_slot IS NULL))
);
CREATE UNIQUE INDEX watchers_name ON eav.watchers (name) WHERE state <> 'removed';
CREATE INDEX watchers_due ON eav.watchers (next_tick_at) WHERE state = 'active';
COMMENT ON TABLE eav.watchers IS 'Watchers: a probe (exec or http) run by eav-producer every interval_ms; an event goes to the inbox when its condition holds. Changed only through eav.watcher_add, _enable, _disable, _remove (audited) and the producer''s eav.watcher_claim / eav.watcher_done.';
COMMENT ON COLUMN eav.watchers.id IS 'Watcher id (never reused).';
COMMENT ON COLUMN eav.watchers.name IS 'Name, unique among watchers not removed; its events have source watcher:<name>.';
COMMENT ON COLUMN eav.watchers.kind IS 'exec (a program) or http (a GET).';
COMMENT ON COLUMN eav.watchers.config IS 'The probe, as eav.watcher_config_check returned it: exec {argv, env, max_output_bytes, false_exit}; http {url, expect_status, body_match, max_output_bytes}.';
COMMENT ON COLUMN eav.watchers.event_type IS 'Type of the events it puts in the inbox.';
COMMENT ON COLUMN eav.watchers.interval_ms IS 'Period (1 s to 1 day); ticks are the multiples of it since the Unix epoch.';
COMMENT ON COLUMN eav.watchers.timeout_ms IS 'Time-out of one probe (100 ms to 1 h, less than the interval); the probe is killed past it.';
COMMENT ON COLUMN eav.watchers.error_threshold IS 'Consecutive tick errors that disable the watcher (with an alarm).';
COMMENT ON COLUMN eav.watchers.state IS 'active, disabled (past the threshold, or by an operator) or removed.';
COMMENT ON COLUMN eav.watchers.next_tick_at IS 'Next slot to tick (NULL unless active).';
COMMENT ON COLUMN eav.watchers.tick_slot IS 'Slot being probed under the lease (NULL when no lease).';
COMMENT ON COLUMN eav.watchers.lease_by IS 'Producer (actor) probing it now.';
COMMENT ON COLUMN eav.watchers.lease_until IS 'When that lease runs out (another producer may then tick again).';
COMMENT ON COLUMN eav.watchers.ticks IS 'Ticks completed.';
COMMENT ON COLUMN eav.watchers.fires IS 'Ticks whose condition held (one event each).';
COMMENT ON COLUMN eav.watchers.errors IS 'Tick errors, all time.';
COMMENT ON COLUMN eav.watchers.consecutive_errors IS 'Tick errors since the last good tick (or enable).';
COMMENT ON COLUMN eav.watchers.last_tick_at IS 'When a tick last completed.';
COMMENT ON COLUMN eav.watchers.last_outcome IS 'Outcome of the last tick: holds, false or error.';
COMMENT ON COLUMN eav.watchers.last_error IS 'Reason of the last tick error.';
COMMENT ON COLUMN eav.watchers.last_error_at IS 'When the last tick error happened.';
COMMENT ON COLUMN eav.watchers.last_fired_at IS 'When its condition last held.';
COMMENT ON COLUMN eav.watchers.disabled_reason IS 'Why it is disabled (the threshold and last error, or "by an operator").';
COMMENT ON COLUMN eav.watchers.created_by IS 'Actor that added it.';
COMMENT ON COLUMN eav.watchers.created_at IS 'When it was added.';
COMMENT ON COLUMN eav.watchers.changed_by IS 'Actor of the last change of state.';
COMMENT ON COLUMN eav.watchers.changed_at IS 'When its state last changed.';

-- Validation ----------------------------------------------------------------

-- An optional integer field of a watcher config, in range, or 22023.
CREATE FUNCTION eav.watcher_config_int(p_config jsonb, p_key text,
    p_min integer, p_max integer, p_default integer)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_config->p_key;
BEGIN
    IF v IS NULL THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v) <> 'number' OR v::text !~ '^[0-9]{1,10}$'
       OR v::text::bigint NOT BETWEEN p_min AND p_max THEN
        RAISE EXCEPTION 'watcher config: "%" must be an integer from % to %',
            p_key, p_min, p_max USING ERRCODE = '22023';
    END IF;
    RETURN v::text::integer;
END;
$$;
COMMENT ON FUNCTION eav.watcher_config_int(jsonb, text, integer, integer, integer) IS 'An optional integer field of a watcher config (p_default when absent); raises 22023 naming the field and its range.';

-- The exec probe: argv like an exec tool's, an env allowlist, the cap.
CREATE FUNCTION eav.watcher_config_exec(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_argv jsonb := p_config->'argv';
    v_env jsonb := coalesce(p_config->'env', '[]');
BEGIN
    IF jsonb_typeof(v_argv) IS DISTINCT FROM 'array'
       OR jsonb_array_length(v_argv) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'watcher config: "argv" must be an array of 1 to 64 strings'
            USING ERRCODE = '22023',
                  HINT = 'The program runs without a shell: {"argv": ["/usr/local/bin/check", "--flag"]}.';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_argv) a
               WHERE jsonb_typeof(a) <> 'string'
                  OR octet_length(a #>> '{}') NOT BETWEEN 1 AND 4096) THEN
        RAISE EXCEPTION 'watcher config: "argv" entries must be non-empty strings of at most 4096 bytes'
            USING ERRCODE = '22023';
    END IF;
    IF left(v_argv->>0, 1) <> '/' THEN
        RAISE EXCEPTION 'watcher config: "argv[0]" must be an absolute path, not "%"',
            left(v_argv->>0, 200) USING ERRCODE = '22023',
            HINT = 'No PATH lookup is done: name the program by its full path.';
    END IF;
    IF jsonb_typeof(v_env) <> 'array' OR jsonb_array_length(v_env) > 64
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(v_env) e
                  WHERE jsonb_typeof(e) <> 'string'
                     OR (e #>> '{}') !~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$'
                     OR upper(e #>> '{}') LIKE 'EAV\_%'
                     OR upper(e #>> '{}') IN ('PGPASSWORD', 'PGPASSFILE')) THEN
        RAISE EXCEPTION 'watcher config: "env" must be an array of at most 64 variable names, none EAV_*, PGPASSWORD or PGPASSFILE'
            USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('argv', v_argv, 'env', v_env,
        'max_output_bytes', eav.watcher_config_int(p_config, 'max_output_bytes',
            1, 1048576, 65536),
        'false_exit', eav.watcher_config_int(p_config, 'false_exit', 1, 255, 1));
END;
$$;
COMMENT ON FUNCTION eav.watcher_config_exec(jsonb) IS 'Checks an exec watcher''s probe: argv (1-64 strings, argv[0] an absolute path), env (variable names, never EAV_* or database passwords), max_output_bytes (1 to 1048576, default 65536), false_exit (the exit code meaning "does not hold", 1-255, default 1). Raises 22023.';

-- The http probe: a plain http URL, the status that means "holds".
CREATE FUNCTION eav.watcher_config_http(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_url text := p_config->>'url';
    v_match jsonb := p_config->'body_match';
BEGIN
    IF jsonb_typeof(p_config->'url') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'watcher config: "url" is missing or not a string'
            USING ERRCODE = '22023', HINT = 'e.g. {"url": "http://127.0.0.1:8080/health"}.';
    END IF;
    IF v_url ~* '^https://' THEN
        RAISE EXCEPTION 'watcher config: "url": https is not supported by watchers, only http'
            USING ERRCODE = '22023';
    END IF;
    IF octet_length(v_url) > 2048
       OR v_url !~* '^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s#]*)?$' THEN
        RAISE EXCEPTION 'watcher config: "url" must be http://host[:port][/path], at most 2048 bytes, without spaces, user info or fragment, not "%"',
            left(v_url, 200) USING ERRCODE = '22023';
    END IF;
    IF substring(v_url from '^http://[^/:]+:([0-9]+)')::integer NOT BETWEEN 1 AND 65535 THEN
        RAISE EXCEPTION 'watcher config: "url" has a port out of range 1-65535'
            USING ERRCODE = '22023';
    END IF;
    IF v_match IS NOT NULL AND (jsonb_typeof(v_match) <> 'string'
       OR octet_length(v_match #>> '{}') NOT BETWEEN 1 AND 1024) THEN
        RAISE EXCEPTION 'watcher config: "body_match" must be a string of 1 to 1024 bytes'
            USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('url', v_url,
        'expect_status', eav.watcher_config_int(p_config, 'expect_status', 100, 599, 200),
        'max_output_bytes', eav.watcher_config_int(p_config, 'max_output_bytes',
            1, 1048576, 65536))
        || CASE WHEN v_match IS NULL THEN '{}'
                ELSE jsonb_build_object('body_match', v_match) END;
END;
$$;
COMMENT ON FUNCTION eav.watcher_config_http(jsonb) IS 'Checks an http watcher''s probe: url (http://host[:port][/path]; https is refused), expect_status (100-599, default 200), body_match (optional substring of the body, 1-1024 bytes), max_output_bytes (body bytes read, default 65536). Raises 22023.';

CREATE FUNCTION eav.watcher_config_check(p_kind text, p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_known text[];
    v_bad text;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('exec', 'http') THEN
        RAISE EXCEPTION 'watcher kind must be exec or http, not "%"', coalesce(p_kind, '')
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'watcher config must be a JSON object' USING ERRCODE = '22023';
    END IF;
    v_known := CASE p_kind WHEN 'exec'
        THEN ARRAY['argv', 'env', 'max_output_bytes', 'false_exit']
        ELSE ARRAY['url', 'expect_status', 'body_match', 'max_output_bytes'] END;
    SELECT k INTO v_bad FROM jsonb_object_keys(p_config) k
    WHERE NOT k = ANY (v_known) ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'watcher config: unknown field "%" for kind %', left(v_bad, 200), p_kind
            USING ERRCODE = '22023', HINT = 'Known: ' || array_to_string(v_known, ', ') || '.';
    END IF;
    RETURN CASE p_kind WHEN 'exec' THEN eav.watcher_config_exec(p_config)
                       ELSE eav.watcher_config_http(p_config) END;
END;
$$;
COMMENT ON FUNCTION eav.watcher_config_check(text, jsonb) IS 'Checks a watcher''s kind and probe config and returns the config with defaults filled in; raises 22023 naming the field and the reason.';

-- The newest slot at or before p_at: a multiple of the interval.
CREATE FUNCTION eav.watcher_slot(p_interval_ms integer, p_at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM p_at) * 1000 / p_interval_ms)
                        * p_interval_ms / 1000.0);
$$;
COMMENT ON FUNCTION eav.watcher_slot(integer, timestamptz) IS 'The newest tick slot at or before p_at: a multiple of p_interval_ms since the Unix epoch (the same for every producer).';

-- Changes -------------------------------------------------------------------

CREATE FUNCTION eav.watcher_add(p_name text, p_kind text, p_config jsonb,
    p_event_type text, p_interval_ms integer, p_timeout_ms integer,
    p_threshold integer DEFAULT 3, p_actor text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_config jsonb;
    v_next timestamptz;
    v_id bigint;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,118}$' THEN
        RAISE EXCEPTION 'watcher name: 1 to 119 letters, digits, ".", "_", ":" or "-", starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM eav.watchers WHERE name = p_name AND state <> 'removed') THEN
        RAISE EXCEPTION 'watcher name: a watcher named "%" exists', p_name
            USING ERRCODE = '22023', HINT = 'Remove it first (eav.watcher_remove).';
    END IF;
    v_config := eav.watcher_config_check(p_kind, p_config);
    IF p_event_type IS NULL OR p_event_type !~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$' THEN
        RAISE EXCEPTION 'watcher event type: 1 to 128 letters, digits, ".", "_", ":", "/" or "-", starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    IF p_interval_ms IS NULL OR p_interval_ms NOT BETWEEN 1000 AND 86400000 THEN
        RAISE EXCEPTION 'watcher interval: must be from 1000 ms (1 s) to 86400000 ms (1 day), not %',
            coalesce(p_interval_ms::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF p_timeout_ms IS NULL OR p_timeout_ms NOT BETWEEN 100 AND 3600000 THEN
        RAISE EXCEPTION 'watcher timeout: must be from 100 ms to 3600000 ms (1 h), not %',
            coalesce(p_timeout_ms::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF p_timeout_ms >= p_interval_ms THEN
        RAISE EXCEPTION 'watcher timeout: % ms must be less than the interval of % ms',
            p_timeout_ms, p_interval_ms USING ERRCODE = '22023',
            HINT = 'A probe must end before the next tick is due.';
    END IF;
    IF p_threshold IS NULL OR p_threshold NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'watcher error threshold: must be from 1 to 1000, not %',
            coalesce(p_threshold::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    v_next := eav.watcher_slot(p_interval_ms, now()) + p_interval_ms * interval '1 millisecond';
    INSERT INTO eav.watchers (name, kind, config, event_type, interval_ms,
        timeout_ms, error_threshold, next_tick_at, created_by, changed_by)
    VALUES (p_name, p_kind, v_config, p_event_type, p_interval_ms, p_timeout_ms,
        p_threshold, v_next, v_actor, v_actor)
    RETURNING id INTO v_id;
    PERFORM eav.audit('watcher.added', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('watcher', p_name, 'watcher_id', v_id, 'kind', p_kind,
            'config', v_config, 'event_type', p_event_type,
            'interval_ms', p_interval_ms, 'timeout_ms', p_timeout_ms,
            'error_threshold', p_threshold, 'next_tick_at', v_next));
    PERFORM pg_notify('eav_watchers', p_name);
    RETURN v_next;
END;
$$;
COMMENT ON FUNCTION eav.watcher_add(text, text, jsonb, text, integer, integer, integer, text) IS 'Adds a watcher (audited watcher.added, NOTIFY eav_watchers) and returns its first tick. Raises 22023 naming the field for a bad name, kind, config, event type, interval (1 s to 1 day), time-out (100 ms to 1 h, less than the interval) or threshold (1-1000); nothing is stored then.';

-- The watcher by name (not removed), locked, or EA004.
CREATE FUNCTION eav.watcher_get(p_name text)
RETURNS eav.watchers
LANGUAGE plpgsql AS $$
DECLARE
    w eav.watchers;
BEGIN
    SELECT * INTO w FROM eav.watchers
    WHERE name = p_name AND state <> 'removed' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no watcher "%"', coalesce(p_name, '')
            USING ERRCODE = 'EA004', HINT = 'eav.proj_watchers lists them.';
    END IF;
    RETURN w;
END;
$$;
COMMENT ON FUNCTION eav.watcher_get(text) IS 'Locks and returns a watcher that is not removed, or raises EA004.';

-- An operator's change of state: audited watcher.<p_event>.  The lease
-- is dropped, so a probe running now cannot complete its tick.
CREATE FUNCTION eav.watcher_set_state(p_name text, p_from text[], p_to text,
    p_event text, p_actor text)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    w eav.watchers := eav.watcher_get(p_name);
    v_next timestamptz;
BEGIN
    IF NOT w.state = ANY (p_from) THEN
        RAISE EXCEPTION 'watcher "%" is %', p_name, w.state USING ERRCODE = 'EA003';
    END IF;
    IF p_to = 'active' THEN
        v_next := now();
    END IF;
    UPDATE eav.watchers SET state = p_to, next_tick_at = v_next,
        tick_slot = NULL, lease_by = NULL, lease_until = NULL,
        consecutive_errors = CASE WHEN p_to = 'active' THEN 0
                                  ELSE consecutive_errors END,
        disabled_reason = CASE p_to WHEN 'disabled' THEN 'by an operator' END,
        changed_by = v_actor, changed_at = now()
    WHERE id = w.id;
    PERFORM eav.audit('watcher.' || p_event, 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('watcher', p_name, 'watcher_id', w.id, 'from', w.state,
            'consecutive_errors', w.consecutive_errors,
            'reason', CASE p_to WHEN 'disabled' THEN 'by an operator' END));
    IF p_to <> 'disabled' THEN
        PERFORM eav.alarm_resolve_subject('watcher_disabled', 'watcher:' || p_name,
            v_actor);
    END IF;
    IF p_to = 'active' THEN
        PERFORM pg_notify('eav_watchers', p_name);
    END IF;
    RETURN v_next;
END;
$$;
COMMENT ON FUNCTION eav.watcher_set_state(text, text[], text, text, text) IS 'Moves a watcher between states (EA003 if not from one of p_from), audited watcher.<p_event>, dropping any lease; enabling resets the consecutive errors, ticks at once and resolves its watcher_disabled alarm (as removing does).';

CREATE FUNCTION eav.watcher_enable(p_name text, p_actor text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE sql AS $$
    SELECT eav.watcher_set_state(p_name, '{disabled}', 'active', 'enabled', p_actor);
$$;
COMMENT ON FUNCTION eav.watcher_enable(text, text) IS 'Enables a disabled watcher (audited watcher.enabled, its watcher_disabled alarm resolved, NOTIFY eav_watchers): its error count restarts from 0 and it ticks at once.';

CREATE FUNCTION eav.watcher_disable(p_name text, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    SELECT FROM eav.watcher_set_state(p_name, '{active}', 'disabled', 'disabled', p_actor);
$$;
COMMENT ON FUNCTION eav.watcher_disable(text, text) IS 'Disables an active watcher (audited watcher.disabled, reason "by an operator"); a probe running now completes nothing.';

CREATE FUNCTION eav.watcher_remove(p_name text, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    SELECT FROM eav.watcher_set_state(p_name, '{active,disabled}', 'removed',
        'removed', p_actor);
$$;
COMMENT ON FUNCTION eav.watcher_remove(text, text) IS 'Removes a watcher (audited watcher.removed, alarm resolved); its row stays for the record and its name is free again.';

-- Ticking -------------------------------------------------------------------

CREATE FUNCTION eav.watcher_claim(p_actor text, p_limit integer DEFAULT 32)
RETURNS TABLE (id bigint, name text, kind text, config jsonb,
    timeout_ms integer, slot timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    w eav.watchers;
    v_grace integer := eav.setting('watcher_lease_grace_ms');
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit must be at least 1' USING ERRCODE = '22023';
    END IF;
    FOR w IN
        SELECT * FROM eav.watchers x
        WHERE x.state = 'active' AND x.next_tick_at <= now()
          AND (x.lease_until IS NULL OR x.lease_until < now())
        ORDER BY x.next_tick_at LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        IF w.lease_by IS NOT NULL THEN
            -- Its producer died mid-probe (or hung): the tick is redone.
            PERFORM eav.audit('watcher.lease_expired', 'failure', p_actor, NULL,
                NULL, NULL, jsonb_build_object('watcher', w.name,
                    'watcher_id', w.id, 'slot', w.tick_slot,
                    'lease_by', w.lease_by, 'lease_until', w.lease_until));
        END IF;
        id := w.id;
        name := w.name;
        kind := w.kind;
        config := w.config;
        timeout_ms := w.timeout_ms;
        slot := eav.watcher_slot(w.interval_ms, now());
        UPDATE eav.watchers x SET tick_slot = slot, lease_by = p_actor,
            lease_until = now() + (w.timeout_ms + v_grace) * interval '1 millisecond'
        WHERE x.id = w.id;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.watcher_claim(text, integer) IS 'Producer step: leases up to p_limit due watchers (FOR UPDATE SKIP LOCKED, not under a live lease) for the newest slot due, and returns what to probe. An expired lease is audited watcher.lease_expired and its tick redone.';

-- A producer that stops (its probes killed) gives its ticks back, so
-- the next producer need not wait for the leases to run out.
CREATE FUNCTION eav.watcher_release(p_actor text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    w eav.watchers;
    v_n integer := 0;
BEGIN
    FOR w IN SELECT * FROM eav.watchers x WHERE x.lease_by = p_actor
             ORDER BY x.id FOR UPDATE LOOP
        UPDATE eav.watchers SET tick_slot = NULL, lease_by = NULL,
            lease_until = NULL
        WHERE id = w.id;
        PERFORM eav.audit('watcher.lease_released', 'success', p_actor, NULL,
            NULL, NULL, jsonb_build_object('watcher', w.name, 'watcher_id', w.id,
                'slot', w.tick_slot, 'reason', 'the producer stopped; its probe was killed'));
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.watcher_release(text) IS 'Producer step at a graceful stop: ends the leases p_actor holds (its probes are killed, their outcomes never recorded), audited watcher.lease_released, so the ticks are claimed again at once.';

-- Volatile: it reads the clock, not only the snapshot.
CREATE FUNCTION eav.watcher_wait_ms()
RETURNS bigint
LANGUAGE sql AS $$
    SELECT greatest(0, ceil(extract(epoch FROM
               min(greatest(next_tick_at, lease_until)) - clock_timestamp()) * 1000))::bigint
    FROM eav.watchers WHERE state = 'active';
$$;
COMMENT ON FUNCTION eav.watcher_wait_ms() IS 'Milliseconds until a watcher is next due to be claimed (a leased one: when its lease runs out), 0 if one is due now, NULL if none is active.';

-- A tick error: counted, audited, and past the threshold the watcher is
-- disabled with an alarm.  Returns the watcher's new state.
CREATE FUNCTION eav.watcher_tick_error(w eav.watchers, p_error text,
    p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := w.consecutive_errors + 1;
    v_reason text;
BEGIN
    UPDATE eav.watchers SET errors = errors + 1, consecutive_errors = v_n,
        last_error = p_error, last_error_at = now()
    WHERE id = w.id;
    PERFORM eav.audit('watcher.tick_error', 'failure', p_actor, NULL, NULL, NULL,
        jsonb_build_object('watcher', w.name, 'watcher_id', w.id,
            'slot', w.tick_slot, 'reason', p_error,
            'consecutive_errors', v_n, 'error_threshold', w.error_threshold));
    IF v_n < w.error_threshold THEN
        RETURN 'active';
    END IF;
    v_reason := format('%s consecutive tick errors (threshold %s); last: %s',
        v_n, w.error_threshold, p_error);
    UPDATE eav.watchers SET state = 'disabled', next_tick_at = NULL,
        disabled_reason = v_reason, changed_by = p_actor, changed_at = now()
    WHERE id = w.id;
    PERFORM eav.audit('watcher.disabled', 'failure', p_actor, NULL, NULL, NULL,
        jsonb_build_object('watcher', w.name, 'watcher_id', w.id, 'from', 'active',
            'consecutive_errors', v_n, 'reason', v_reason));
    PERFORM eav.alarm_raise('watcher_disabled', 'warning', 'watcher:' || w.name,
        format('watcher %s disabled: %s', w.name, v_reason),
        jsonb_build_object('watcher_id', w.id, 'last_error', p_error), p_actor);
    RETURN 'disabled';
END;
$$;
COMMENT ON FUNCTION eav.watcher_tick_error(eav.watchers, text, text) IS 'Counts a tick error (audited watcher.tick_error with the reason); at error_threshold consecutive ones disables the watcher (watcher.disabled) and raises a watcher_disabled alarm on watcher:<name>. Returns the new state.';

-- The condition held: the event goes to the inbox.  Returns its id.
CREATE FUNCTION eav.watcher_emit(w eav.watchers, p_body text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_key text := 'tick:' || to_char(w.tick_slot AT TIME ZONE 'UTC',
        'YYYYMMDD"T"HH24MISS.MS"Z"');
    v_event bigint;
BEGIN
    v_event := eav.event_submit('watcher:' || w.name, v_key, w.event_type,
        p_body, p_actor);
    UPDATE eav.watchers SET fires = fires + 1, last_fired_at = now()
    WHERE id = w.id;
    PERFORM eav.audit('watcher.fired', 'success', p_actor, NULL, NULL, NULL,
        jsonb_build_object('watcher', w.name, 'watcher_id', w.id,
            'slot', w.tick_slot, 'event_id', v_event, 'event_key', v_key));
    RETURN v_event;
END;
$$;
COMMENT ON FUNCTION eav.watcher_emit(eav.watchers, text, text) IS 'Puts the event of a tick whose condition held in the inbox (source watcher:<name>, event_key tick:<slot>, the watcher''s event_type) and audits watcher.fired.';

CREATE FUNCTION eav.watcher_done(p_id bigint, p_slot timestamptz,
    p_actor text, p_outcome text, p_body text DEFAULT NULL,
    p_error text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    w eav.watchers;
    v_outcome text := p_outcome;
    v_error text := left(p_error, 2000);
    v_state text := 'active';
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('holds', 'false', 'error') THEN
        RAISE EXCEPTION 'outcome must be holds, false or error' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO w FROM eav.watchers WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR w.lease_by IS DISTINCT FROM p_actor
       OR w.tick_slot IS DISTINCT FROM p_slot OR w.state <> 'active' THEN
        PERFORM eav.audit('watcher.tick_stale', 'refused', p_actor, NULL, NULL, NULL,
            jsonb_build_object('watcher', w.name, 'watcher_id', p_id, 'slot', p_slot,
                'outcome', p_outcome, 'lease_by', w.lease_by, 'state', w.state,
                'reason', 'the tick is no longer leased to this producer'));
        RETURN 'stale';
    END IF;
    IF v_outcome = 'holds' THEN
        BEGIN
            IF jsonb_typeof(coalesce(p_body, '{}')::jsonb) <> 'object' THEN
                v_error := 'the probe''s output is not a JSON object';
            END IF;
        EXCEPTION WHEN data_exception THEN
            v_error := 'the probe''s output is not valid JSON: ' || SQLERRM;
        END;
        IF v_error IS NOT NULL THEN
            v_outcome := 'error';
        END IF;
    END IF;
    IF v_outcome = 'error' THEN
        v_state := eav.watcher_tick_error(w, coalesce(v_error, 'unknown error'), p_actor);
    ELSE
        IF w.consecutive_errors > 0 THEN
            PERFORM eav.audit('watcher.recovered', 'success', p_actor, NULL, NULL,
                NULL, jsonb_build_object('watcher', w.name, 'watcher_id', w.id,
                    'slot', w.tick_slot, 'after_errors', w.consecutive_errors));
        END IF;
        UPDATE eav.watchers SET consecutive_errors = 0 WHERE id = w.id;
        IF v_outcome = 'holds' THEN
            PERFORM eav.watcher_emit(w, coalesce(p_body, '{}'), p_actor);
        END IF;
    END IF;
    UPDATE eav.watchers SET tick_slot = NULL, lease_by = NULL, lease_until = NULL,
        ticks = ticks + 1, last_tick_at = now(), last_outcome = v_outcome,
        next_tick_at = CASE WHEN v_state = 'active' THEN
            eav.watcher_slot(interval_ms, now()) + interval_ms * interval '1 millisecond'
            END
    WHERE id = w.id;
    RETURN CASE WHEN v_state = 'disabled' THEN 'disabled' ELSE v_outcome END;
END;
$$;
COMMENT ON FUNCTION eav.watcher_done(bigint, timestamptz, text, text, text, text) IS 'Producer step: records a tick''s outcome (holds: the event goes to the inbox; false; error: counted, maybe disabled) for the holder of the lease on that slot, ends the lease and sets the next slot after now; anything else is stale (audited watcher.tick_stale, refused, dropped). Returns holds, false, error, disabled or stale. The caller commits.';

-- Projection ------------------------------------------------------------------

CREATE VIEW eav.proj_watchers AS
SELECT w.name, w.kind,
       CASE w.kind WHEN 'http' THEN w.config->>'url'
            ELSE (SELECT string_agg(a, ' ') FROM jsonb_array_elements_text(w.config->'argv') a)
       END AS target,
       w.event_type, w.interval_ms, w.timeout_ms, w.state, w.next_tick_at,
       w.lease_by, w.last_tick_at, w.last_outcome, w.ticks, w.fires, w.errors,
       w.consecutive_errors, w.error_threshold, w.last_error, w.last_error_at,
       w.last_fired_at, w.disabled_reason
FROM eav.watchers w
WHERE w.state <> 'removed';
COMMENT ON VIEW eav.proj_watchers IS 'Watchers with their target, state, counts and last error: table eav.proj_watchers.';
COMMENT ON COLUMN eav.proj_watchers.name IS 'Watcher name.';
COMMENT ON COLUMN eav.proj_watchers.kind IS 'exec or http.';
COMMENT ON COLUMN eav.proj_watchers.target IS 'The program and its arguments, or the URL.';
COMMENT ON COLUMN eav.proj_watchers.event_type IS 'Type of its events.';
COMMENT ON COLUMN eav.proj_watchers.interval_ms IS 'Period.';
COMMENT ON COLUMN eav.proj_watchers.timeout_ms IS 'Probe time-out.';
COMMENT ON COLUMN eav.proj_watchers.state IS 'active or disabled.';
COMMENT ON COLUMN eav.proj_watchers.next_tick_at IS 'Next slot to tick.';
COMMENT ON COLUMN eav.proj_watchers.lease_by IS 'Producer probing it now, if any.';
COMMENT ON COLUMN eav.proj_watchers.last_tick_at IS 'When a tick last completed.';
COMMENT ON COLUMN eav.proj_watchers.last_outcome IS 'holds, false or error.';
COMMENT ON COLUMN eav.proj_watchers.ticks IS 'Ticks completed.';
COMMENT ON COLUMN eav.proj_watchers.fires IS 'Ticks whose condition held.';
COMMENT ON COLUMN eav.proj_watchers.errors IS 'Tick errors, all time.';
COMMENT ON COLUMN eav.proj_watchers.consecutive_errors IS 'Tick errors since the last good tick.';
COMMENT ON COLUMN eav.proj_watchers.error_threshold IS 'Consecutive errors that disable it.';
COMMENT ON COLUMN eav.proj_watchers.last_error IS 'Reason of the last tick error.';
COMMENT ON COLUMN eav.proj_watchers.last_error_at IS 'When it happened.';
COMMENT ON COLUMN eav.proj_watchers.last_fired_at IS 'When its condition last held.';
COMMENT ON COLUMN eav.proj_watchers.disabled_reason IS 'Why it is disabled.';

INSERT INTO eav.role_functions (role, function)
SELECT 'eav_producer', f FROM unnest(ARRAY['watcher_claim', 'watcher_done',
    'watcher_wait_ms', 'watcher_release']) f
UNION ALL
SELECT 'eav_operator', f FROM unnest(ARRAY['watcher_add', 'watcher_enable',
    'watcher_disable', 'watcher_remove', 'watcher_get']) f;
