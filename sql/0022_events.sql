-- 0022_events: the producer's event pipeline.  An inbox event is
-- normalized against its type, deduped within a window, and routed by
-- rules (or a classifier) to a task; a rule that fires too often is
-- stopped by its storm gate; a task may emit events of its own.
--
-- Normalize.  Every event type is a row of eav.event_types with a JSON
-- schema subset (type, required, properties, additionalProperties,
-- minLength, maxLength, enum, minimum, maximum, items, maxItems), a size
-- limit and optionally the sources allowed to send it.  The schema is
-- checked when the type is set (eav.json_schema_check), the body at ingest
-- (eav.json_check).  A body that is too big, not JSON, of an unknown type,
-- from a source not allowed or not what the schema says is rejected: the
-- reason in inbox.error, event.ingested failure audited, nothing else
-- stored (not even its key).  Type "task" (a body that is itself a task,
-- {"queue", "kind", "steps"}) is registered here with task_body set: it
-- is routed as before, without rules.
--
-- Dedupe.  The key (source, event_key) is claimed in eav.event_keys with
-- INSERT ... ON CONFLICT DO UPDATE ... WHERE the claim is older than the
-- type's dedupe window: a producer holding the row lock makes a second
-- one wait and then see the fresh claim, so two producers never both
-- claim a key (exactly once), and past the window the key is claimed
-- anew.  A window of 0 dedupes forever.
--
-- Route.  eav.rules: (type, source or any, predicates on body fields) →
-- a task template {"queue", "kind", "steps"} whose kind and step inputs
-- may take values of the body ("$.a.b", rendered with jsonb #>).  The
-- first enabled rule by (priority, id) whose predicates all hold fires.
-- Predicates are {"field": "$.a", "op": eq|ne|in|exists|gt|gte|lt|lte,
-- "value": ...}, checked when the rule is added, as is its template (by
-- eav.task_enqueue in a rolled-back subtransaction, as schedules do).
-- No rule matches: a "clarification needed" task in queue "review" whose
-- one step (tool event.clarify, approval required) waits for an operator:
-- event.unrouted, never a lost event.  With p_classify (a classifier is
-- configured) the event goes to state classifying instead: the producer
-- leases it (eav.event_classify_take), runs the classifier and reports
-- (eav.event_classified); output that is not {"route": "<rule name>"} of
-- the event's type, an error, a time-out, huge output, or too many
-- attempts make the clarification task (classifier.fallback).
--
-- Storm gate.  A rule firing less than debounce_ms after its last firing,
-- or past max_per_minute in its current minute, does not fire: the event
-- is held (gate.storm_block, a rule_storm alarm), for an operator to
-- release (the task is created) or drop.
--
-- Recursion.  A step that succeeds with "emit": [{"source", "type",
-- "event_key", "body"}] puts those events in the inbox with the task's
-- trace, the task as parent and depth + 1; the task they route to is a
-- child of it, refused by its queue's max_depth or max_trace_tasks as
-- eav.task_spawn refuses (loop.blocked, the event refused).  A result
-- replayed from another step's recorded outcome emits nothing.
--
-- Kill switch: an event whose task would fall in an engaged switch's
-- scope stays new, as before; release and classification refuse (EA003)
-- or wait while a switch covers the task.

INSERT INTO eav.settings VALUES
    ('event_dedupe_window_s', 604800, 'Default dedupe window of an event type, in seconds: the same (source, event_key) within it is deduped. 0: forever.'),
    ('classifier_max_output_bytes', 65536, 'Largest classifier output eav.event_classified reads; more falls back to a clarification task.'),
    ('classifier_max_attempts', 3, 'Leases of one event to a classifier (eav.event_classify_take) before it falls back to a clarification task.');

-- Inbox -------------------------------------------------------------------

ALTER TABLE eav.inbox DROP CONSTRAINT inbox_state_check;
ALTER TABLE eav.inbox ADD CONSTRAINT inbox_state_check
    CHECK (state IN ('new', 'accepted', 'rejected', 'deduped', 'unrouted',
                     'classifying', 'held', 'dropped', 'refused'));
ALTER TABLE eav.inbox
    ADD COLUMN trace_id uuid,
    ADD COLUMN parent_task_id bigint,
    ADD COLUMN depth integer NOT NULL DEFAULT 0 CHECK (depth BETWEEN 0 AND 100000),
    ADD COLUMN rule_id bigint,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN lease_owner text,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN eav.inbox.state IS 'new; accepted (task created); rejected (malformed; see error); deduped; unrouted (no rule: a clarification task was created); classifying (waiting for the classifier); held (stopped by its rule''s storm gate: release or drop); dropped (a held event an operator dropped); refused (its task was refused by the recursion limits: loop.blocked).';
COMMENT ON COLUMN eav.inbox.task_id IS 'Task created from it (accepted: routed; unrouted: the clarification task) or the earlier task it duplicates (deduped).';
COMMENT ON COLUMN eav.inbox.error IS 'Why it was rejected, held, refused or sent for clarification.';
COMMENT ON COLUMN eav.inbox.event_key IS 'Key per source; a second event with the same (source, event_key) within its type''s dedupe window is deduped.';
COMMENT ON COLUMN eav.inbox.type IS 'Event type (eav.event_types); "task" carries a task, others are routed by eav.rules.';
COMMENT ON COLUMN eav.inbox.trace_id IS 'Trace of the task that emitted it (NULL from outside): its task joins the trace.';
COMMENT ON COLUMN eav.inbox.parent_task_id IS 'Task that emitted it (a step result''s "emit"); its task is a child of that task.';
COMMENT ON COLUMN eav.inbox.depth IS 'Depth of the task it would create: 0 from outside, the emitting task''s depth + 1.';
COMMENT ON COLUMN eav.inbox.rule_id IS 'Rule that routed it, or whose storm gate holds it (eav.rules.id).';
COMMENT ON COLUMN eav.inbox.lease_until IS 'classifying: a producer runs the classifier on it until then; past it another may.';
COMMENT ON COLUMN eav.inbox.lease_owner IS 'classifying: the producer (actor) holding the lease.';
COMMENT ON COLUMN eav.inbox.attempts IS 'Leases taken for the classifier.';

CREATE INDEX inbox_classifying_idx ON eav.inbox (id) WHERE state = 'classifying';
CREATE INDEX inbox_held_idx ON eav.inbox (id) WHERE state = 'held';

COMMENT ON TABLE eav.event_keys IS 'Event keys claimed per source: the dedupe set of the producer (a claim older than its type''s dedupe window may be claimed again).';
COMMENT ON COLUMN eav.event_keys.event_id IS 'Event (eav.inbox.id) holding the current claim.';
COMMENT ON COLUMN eav.event_keys.first_seen IS 'When the current claim was made; the dedupe window runs from here.';

-- Review queue and its tool -------------------------------------------------

INSERT INTO eav.queues (name, description) VALUES
    ('review', 'Clarification tasks: events no rule routed, waiting for an operator (approve the step to close it).')
ON CONFLICT (name) DO NOTHING;
INSERT INTO eav.tools (name, kind, config, idempotent, description, approval)
VALUES ('event.clarify', 'builtin', '{"builtin": "noop"}', true,
        'Clarification needed: an event no rule routed. Its step waits for an operator''s approval (the answer), then does nothing.',
        '{"ttl_ms": 2592000000, "on_expiry": "reissue", "four_eyes": false}')
ON CONFLICT (name) DO NOTHING;
SELECT eav.approval_tools_refresh();

-- JSON schema subset ---------------------------------------------------------

-- "event body" or field "a.b", for messages.
CREATE FUNCTION eav.json_where(p_path text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_path = '' THEN 'event body' ELSE format('field "%s"', p_path) END
$$;
COMMENT ON FUNCTION eav.json_where(text) IS 'Names a place in an event body for a message: "event body" or field "a.b".';

CREATE FUNCTION eav.json_schema_check(p_schema jsonb, p_path text DEFAULT '',
    p_depth integer DEFAULT 0)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_where text := CASE WHEN p_path = '' THEN 'schema' ELSE format('schema of field "%s"', p_path) END;
    v_type text := p_schema->>'type';
    k text;
BEGIN
    IF p_depth > 8 THEN
        RAISE EXCEPTION '%: nested deeper than 8 levels', v_where USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_schema) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION '%: must be a JSON object', v_where USING ERRCODE = '22023';
    END IF;
    SELECT x INTO k FROM jsonb_object_keys(p_schema) x
    WHERE x NOT IN ('type', 'required', 'properties', 'additionalProperties',
        'minLength', 'maxLength', 'enum', 'minimum', 'maximum', 'items',
        'maxItems', 'description') ORDER BY x LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: unknown keyword "%"', v_where, k USING ERRCODE = '22023',
            HINT = 'Known: type, required, properties, additionalProperties, minLength, maxLength, enum, minimum, maximum, items, maxItems, description.';
    END IF;
    IF v_type IS NULL OR v_type NOT IN ('string', 'number', 'integer', 'boolean', 'object', 'array') THEN
        RAISE EXCEPTION '%: "type" must be string, number, integer, boolean, object or array', v_where
            USING ERRCODE = '22023';
    END IF;
    IF p_path = '' AND v_type <> 'object' THEN
        RAISE EXCEPTION 'schema: an event body is an object ("type": "object")' USING ERRCODE = '22023';
    END IF;
    FOREACH k IN ARRAY ARRAY['minLength', 'maxLength', 'maxItems'] LOOP
        IF p_schema ? k AND (jsonb_typeof(p_schema->k) <> 'number'
                OR (p_schema->>k)::numeric <> trunc((p_schema->>k)::numeric)
                OR (p_schema->>k)::numeric NOT BETWEEN 0 AND 1073741824) THEN
            RAISE EXCEPTION '%: "%" must be an integer from 0 to 1073741824', v_where, k
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF (p_schema ? 'minLength' OR p_schema ? 'maxLength') AND v_type <> 'string' THEN
        RAISE EXCEPTION '%: minLength and maxLength apply to strings', v_where USING ERRCODE = '22023';
    END IF;
    IF (p_schema ? 'minimum' OR p_schema ? 'maximum') AND v_type NOT IN ('number', 'integer') THEN
        RAISE EXCEPTION '%: minimum and maximum apply to numbers', v_where USING ERRCODE = '22023';
    END IF;
    IF p_schema ? 'minimum' AND jsonb_typeof(p_schema->'minimum') <> 'number'
       OR p_schema ? 'maximum' AND jsonb_typeof(p_schema->'maximum') <> 'number' THEN
        RAISE EXCEPTION '%: minimum and maximum must be numbers', v_where USING ERRCODE = '22023';
    END IF;
    IF p_schema ? 'enum' AND (jsonb_typeof(p_schema->'enum') <> 'array'
            OR jsonb_array_length(p_schema->'enum') NOT BETWEEN 1 AND 100) THEN
        RAISE EXCEPTION '%: "enum" must be an array of 1 to 100 values', v_where USING ERRCODE = '22023';
    END IF;
    PERFORM eav.json_schema_check_object(p_schema, p_path, p_depth, v_where);
END;
$$;

-- The keywords of an object or array schema (split from the above to keep
-- each function short).
CREATE FUNCTION eav.json_schema_check_object(p_schema jsonb, p_path text,
    p_depth integer, p_where text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_type text := p_schema->>'type';
    k text;
BEGIN
    IF (p_schema ? 'items' OR p_schema ? 'maxItems') AND v_type <> 'array' THEN
        RAISE EXCEPTION '%: items and maxItems apply to arrays', p_where USING ERRCODE = '22023';
    END IF;
    IF (p_schema ? 'required' OR p_schema ? 'properties' OR p_schema ? 'additionalProperties')
       AND v_type <> 'object' THEN
        RAISE EXCEPTION '%: required, properties and additionalProperties apply to objects', p_where
            USING ERRCODE = '22023';
    END IF;
    IF p_schema ? 'additionalProperties' AND jsonb_typeof(p_schema->'additionalProperties') <> 'boolean' THEN
        RAISE EXCEPTION '%: "additionalProperties" must be true or false', p_where USING ERRCODE = '22023';
    END IF;
    IF p_schema ? 'properties' AND jsonb_typeof(p_schema->'properties') <> 'object' THEN
        RAISE EXCEPTION '%: "properties" must be an object', p_where USING ERRCODE = '22023';
    END IF;
    IF p_schema ? 'required' AND (jsonb_typeof(p_schema->'required') <> 'array'
            OR EXISTS (SELECT 1 FROM jsonb_array_elements(p_schema->'required') r
                       WHERE jsonb_typeof(r) <> 'string')) THEN
        RAISE EXCEPTION '%: "required" must be an array of field names', p_where USING ERRCODE = '22023';
    END IF;
    SELECT r INTO k FROM jsonb_array_elements_text(p_schema->'required') r
    WHERE p_schema->'additionalProperties' = 'false'
      AND NOT coalesce(p_schema->'properties', '{}') ? r LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: required field "%" is not among the properties', p_where, k
            USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT x FROM jsonb_object_keys(coalesce(p_schema->'properties', '{}')) x ORDER BY x LOOP
        IF k !~ '^[A-Za-z_][A-Za-z0-9_-]{0,63}$' THEN
            RAISE EXCEPTION '%: property name "%" is not 1 to 64 letters, digits, "_" or "-"', p_where, k
                USING ERRCODE = '22023';
        END IF;
        PERFORM eav.json_schema_check(p_schema->'properties'->k,
            CASE WHEN p_path = '' THEN k ELSE p_path || '.' || k END, p_depth + 1);
    END LOOP;
    IF p_schema ? 'items' THEN
        PERFORM eav.json_schema_check(p_schema->'items', p_path || '[]', p_depth + 1);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.json_schema_check(jsonb, text, integer) IS 'Raises 22023 naming the place and keyword unless p_schema is in eav''s JSON schema subset: type (string, number, integer, boolean, object, array), required, properties, additionalProperties (boolean), minLength, maxLength, enum, minimum, maximum, items, maxItems, description; at most 8 levels; an event body''s schema is an object.';
COMMENT ON FUNCTION eav.json_schema_check_object(jsonb, text, integer, text) IS 'Part of eav.json_schema_check: the object and array keywords, and the nested schemas.';

CREATE FUNCTION eav.json_check(p_schema jsonb, p_value jsonb, p_path text DEFAULT '')
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_type text := p_schema->>'type';
    v_got text := jsonb_typeof(p_value);
    v_len bigint;
BEGIN
    IF v_type = 'object' AND v_got <> 'object' AND p_path = '' THEN
        RAISE EXCEPTION 'event body must be a JSON object, not %', v_got USING ERRCODE = '22023';
    END IF;
    IF NOT (v_got = v_type OR v_type = 'integer' AND v_got = 'number'
            AND p_value::numeric = trunc(p_value::numeric)) THEN
        RAISE EXCEPTION '% must be %, not %', eav.json_where(p_path),
            CASE v_type WHEN 'integer' THEN 'an integer' WHEN 'array' THEN 'an array'
                        WHEN 'object' THEN 'an object' ELSE 'a ' || v_type END,
            CASE WHEN v_got = 'number' AND v_type = 'integer' THEN 'a fraction' ELSE v_got END
            USING ERRCODE = '22023';
    END IF;
    IF p_schema ? 'enum' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_schema->'enum') x WHERE x = p_value) THEN
        RAISE EXCEPTION '% is %, not one of %', eav.json_where(p_path),
            left(p_value::text, 64), p_schema->'enum' USING ERRCODE = '22023';
    END IF;
    IF v_got = 'string' THEN
        v_len := length(p_value #>> '{}');
        IF v_len < (p_schema->>'minLength')::bigint OR v_len > (p_schema->>'maxLength')::bigint THEN
            RAISE EXCEPTION '% is % characters long, outside minLength % and maxLength %',
                eav.json_where(p_path), v_len, coalesce(p_schema->>'minLength', '0'),
                coalesce(p_schema->>'maxLength', '-') USING ERRCODE = '22023';
        END IF;
    ELSIF v_got = 'number' THEN
        IF p_value::numeric < (p_schema->>'minimum')::numeric
           OR p_value::numeric > (p_schema->>'maximum')::numeric THEN
            RAISE EXCEPTION '% is %, outside minimum % and maximum %', eav.json_where(p_path),
                p_value, coalesce(p_schema->>'minimum', '-'), coalesce(p_schema->>'maximum', '-')
                USING ERRCODE = '22023';
        END IF;
    ELSIF v_got = 'object' THEN
        PERFORM eav.json_check_object(p_schema, p_value, p_path);
    ELSIF v_got = 'array' THEN
        IF jsonb_array_length(p_value) > (p_schema->>'maxItems')::bigint THEN
            RAISE EXCEPTION '% has % items, more than maxItems %', eav.json_where(p_path),
                jsonb_array_length(p_value), p_schema->>'maxItems' USING ERRCODE = '22023';
        END IF;
        IF p_schema ? 'items' THEN
            PERFORM eav.json_check(p_schema->'items', x, p_path || '[' || (n - 1) || ']')
            FROM jsonb_array_elements(p_value) WITH ORDINALITY AS a(x, n);
        END IF;
    END IF;
END;
$$;

CREATE FUNCTION eav.json_check_object(p_schema jsonb, p_value jsonb, p_path text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
BEGIN
    SELECT r INTO k FROM jsonb_array_elements_text(p_schema->'required') r
    WHERE NOT p_value ? r ORDER BY r LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: required field "%" is missing', eav.json_where(p_path), k
            USING ERRCODE = '22023';
    END IF;
    IF p_schema->'additionalProperties' = 'false' THEN
        SELECT x INTO k FROM jsonb_object_keys(p_value) x
        WHERE NOT coalesce(p_schema->'properties', '{}') ? x ORDER BY x LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'unknown field "%" in %', k, eav.json_where(p_path)
                USING ERRCODE = '22023',
                HINT = 'Known fields: ' || coalesce((SELECT string_agg(x, ', ' ORDER BY x)
                    FROM jsonb_object_keys(p_schema->'properties') x), 'none') || '.';
        END IF;
    END IF;
    FOR k IN SELECT x FROM jsonb_object_keys(coalesce(p_schema->'properties', '{}')) x ORDER BY x LOOP
        IF p_value ? k THEN
            PERFORM eav.json_check(p_schema->'properties'->k, p_value->k,
                CASE WHEN p_path = '' THEN k ELSE p_path || '.' || k END);
        END IF;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.json_check(jsonb, jsonb, text) IS 'Raises 22023 naming the field and the reason unless p_value satisfies p_schema (eav.json_schema_check''s subset).';
COMMENT ON FUNCTION eav.json_check_object(jsonb, jsonb, text) IS 'Part of eav.json_check: required, additionalProperties and each property of an object.';

-- Event types -------------------------------------------------------------

CREATE TABLE eav.event_types (
    name            text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    schema          jsonb NOT NULL,
    sources         text[],
    max_bytes       integer CHECK (max_bytes BETWEEN 2 AND 1073741824),
    dedupe_window_s integer CHECK (dedupe_window_s BETWEEN 0 AND 315360000),
    task_body       boolean NOT NULL DEFAULT false,
    description     text NOT NULL DEFAULT '',
    changed_by      text NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE eav.event_types IS 'Event types the inbox accepts, each with its schema; an event of another type is rejected. Changed through eav.event_type_set (audited).';
COMMENT ON COLUMN eav.event_types.name IS 'Type name (eav.inbox.type).';
COMMENT ON COLUMN eav.event_types.schema IS 'JSON schema subset the body must satisfy (eav.json_schema_check).';
COMMENT ON COLUMN eav.event_types.sources IS 'Sources allowed to send it; NULL: any.';
COMMENT ON COLUMN eav.event_types.max_bytes IS 'Largest body, in bytes; NULL: settings.max_event_bytes (which also caps this).';
COMMENT ON COLUMN eav.event_types.dedupe_window_s IS 'Dedupe window in seconds; NULL: settings.event_dedupe_window_s; 0: forever.';
COMMENT ON COLUMN eav.event_types.task_body IS 'The body is itself a task {"queue", "kind", "steps"} (type "task"), created without rules.';
COMMENT ON COLUMN eav.event_types.description IS 'What the events are.';
COMMENT ON COLUMN eav.event_types.changed_by IS 'Actor of the last change.';
COMMENT ON COLUMN eav.event_types.changed_at IS 'When it last changed.';

INSERT INTO eav.event_types (name, schema, task_body, description, changed_by)
VALUES ('task', '{"type": "object", "required": ["kind"], "additionalProperties": false,
    "properties": {"queue": {"type": "string"}, "kind": {"type": "string"},
                   "steps": {"type": "array"}}}', true,
    'A task to create as it is: {"queue" (default "default"), "kind", "steps"} (eav.task_enqueue).',
    'migration:0022');

CREATE FUNCTION eav.event_type_set(p_name text, p_schema jsonb,
    p_sources text[] DEFAULT NULL, p_max_bytes integer DEFAULT NULL,
    p_dedupe_window_s integer DEFAULT NULL, p_description text DEFAULT '',
    p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_old eav.event_types;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'an event type name is 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_old FROM eav.event_types WHERE name = p_name FOR UPDATE;
    IF v_old.task_body THEN
        RAISE EXCEPTION 'event type "%" is built in', p_name USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_schema::text) > 65536 THEN
        RAISE EXCEPTION 'schema is % bytes, more than 65536', octet_length(p_schema::text)
            USING ERRCODE = '54000';
    END IF;
    PERFORM eav.json_schema_check(p_schema);
    IF p_sources IS NOT NULL AND (cardinality(p_sources) NOT BETWEEN 1 AND 100
            OR EXISTS (SELECT 1 FROM unnest(p_sources) s
                       WHERE s IS NULL OR length(s) NOT BETWEEN 1 AND 128)) THEN
        RAISE EXCEPTION 'sources must be 1 to 100 names of 1 to 128 characters, or NULL for any'
            USING ERRCODE = '22023';
    END IF;
    IF p_max_bytes IS NOT NULL AND p_max_bytes NOT BETWEEN 2 AND eav.setting('max_event_bytes') THEN
        RAISE EXCEPTION 'max_bytes must be between 2 and max_event_bytes (%), not %',
            eav.setting('max_event_bytes'), p_max_bytes USING ERRCODE = '22023';
    END IF;
    IF p_dedupe_window_s IS NOT NULL AND p_dedupe_window_s NOT BETWEEN 0 AND 315360000 THEN
        RAISE EXCEPTION 'dedupe_window_s must be between 0 (forever) and 315360000 (10 years), not %',
            p_dedupe_window_s USING ERRCODE = '22023';
    END IF;
    INSERT INTO eav.event_types (name, schema, sources, max_bytes, dedupe_window_s,
        description, changed_by)
    VALUES (p_name, p_schema, p_sources, p_max_bytes, p_dedupe_window_s,
        coalesce(p_description, ''), v_actor)
    ON CONFLICT (name) DO UPDATE SET schema = EXCLUDED.schema, sources = EXCLUDED.sources,
        max_bytes = EXCLUDED.max_bytes, dedupe_window_s = EXCLUDED.dedupe_window_s,
        description = EXCLUDED.description, changed_by = v_actor, changed_at = now();
    PERFORM eav.audit(CASE WHEN v_old.name IS NULL THEN 'event_type.added'
                           ELSE 'event_type.changed' END, 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('type', p_name, 'schema', p_schema, 'sources', p_sources,
            'max_bytes', p_max_bytes, 'dedupe_window_s', p_dedupe_window_s));
END;
$$;
COMMENT ON FUNCTION eav.event_type_set(text, jsonb, text[], integer, integer, text, text) IS 'Adds or changes an event type (audited event_type.added / event_type.changed). Raises 22023 for a bad name, schema (eav.json_schema_check), sources, max_bytes or window, 54000 for a schema over 64 KiB; nothing is stored then. Type "task" is built in.';

-- Rules -------------------------------------------------------------------

CREATE TABLE eav.rules (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL,
    type           text NOT NULL REFERENCES eav.event_types (name),
    source         text,
    predicates     jsonb NOT NULL DEFAULT '[]',
    template       jsonb NOT NULL,
    priority       integer NOT NULL DEFAULT 100 CHECK (priority BETWEEN 0 AND 1000000),
    state          text NOT NULL DEFAULT 'enabled'
                   CHECK (state IN ('enabled', 'disabled', 'removed')),
    debounce_ms    integer NOT NULL DEFAULT 0 CHECK (debounce_ms BETWEEN 0 AND 86400000),
    max_per_minute integer NOT NULL DEFAULT 60 CHECK (max_per_minute BETWEEN 1 AND 1000000),
    window_start   timestamptz,
    window_fires   integer NOT NULL DEFAULT 0,
    last_fired_at  timestamptz,
    fires          bigint NOT NULL DEFAULT 0,
    blocks         bigint NOT NULL DEFAULT 0,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    changed_by     text NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rules_name ON eav.rules (name) WHERE state <> 'removed';
CREATE INDEX rules_match ON eav.rules (type, priority, id) WHERE state = 'enabled';
COMMENT ON TABLE eav.rules IS 'Routing rules: events of a type (and source) whose predicates hold create a task from the template; the first enabled rule by (priority, id) fires, through its storm gate. Changed only through eav.rule_add, _enable, _disable, _remove (audited).';
COMMENT ON COLUMN eav.rules.id IS 'Rule id (never reused).';
COMMENT ON COLUMN eav.rules.name IS 'Name, unique among rules not removed; the route a classifier names.';
COMMENT ON COLUMN eav.rules.type IS 'Event type it routes.';
COMMENT ON COLUMN eav.rules.source IS 'Source it routes; NULL: any.';
COMMENT ON COLUMN eav.rules.predicates IS 'All must hold: [{"field": "$.a.b", "op": "eq|ne|in|exists|gt|gte|lt|lte", "value": ...}].';
COMMENT ON COLUMN eav.rules.template IS 'Task template {"queue", "kind", "steps"}; kind and step inputs may hold "$.a.b", replaced by that body value (JSON null if absent).';
COMMENT ON COLUMN eav.rules.priority IS 'Lower is tried first (then by id).';
COMMENT ON COLUMN eav.rules.state IS 'enabled, disabled (not tried) or removed.';
COMMENT ON COLUMN eav.rules.debounce_ms IS 'Storm gate: a firing less than this after the last one is held.';
COMMENT ON COLUMN eav.rules.max_per_minute IS 'Storm gate: firings allowed per minute (window from the first firing of the minute); past it events are held.';
COMMENT ON COLUMN eav.rules.window_start IS 'Start of the current one-minute rate window.';
COMMENT ON COLUMN eav.rules.window_fires IS 'Firings in the current window.';
COMMENT ON COLUMN eav.rules.last_fired_at IS 'When it last created a task.';
COMMENT ON COLUMN eav.rules.fires IS 'Tasks it created.';
COMMENT ON COLUMN eav.rules.blocks IS 'Events its storm gate held (gate.storm_block).';
COMMENT ON COLUMN eav.rules.created_by IS 'Actor that added it.';
COMMENT ON COLUMN eav.rules.created_at IS 'When it was added.';
COMMENT ON COLUMN eav.rules.changed_by IS 'Actor of the last change of state.';
COMMENT ON COLUMN eav.rules.changed_at IS 'When its state last changed.';

-- A "$.a.b" reference as the text[] path jsonb #> takes, or NULL.
CREATE FUNCTION eav.ref_path(p_ref text) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_ref ~ '^\$(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){1,8}$'
                THEN string_to_array(substr(p_ref, 3), '.') END
$$;
COMMENT ON FUNCTION eav.ref_path(text) IS 'The path of a "$.a.b" body reference (1 to 8 names) for jsonb #>, or NULL if p_ref is not one.';

CREATE FUNCTION eav.predicate_holds(p jsonb, p_body jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_body #> eav.ref_path(p->>'field');
    w jsonb := p->'value';
BEGIN
    CASE p->>'op'
    WHEN 'eq' THEN RETURN v IS NOT NULL AND v = w;
    WHEN 'ne' THEN RETURN v IS NULL OR v <> w;
    WHEN 'in' THEN
        RETURN v IS NOT NULL AND EXISTS (SELECT 1 FROM jsonb_array_elements(w) x WHERE x = v);
    WHEN 'exists' THEN RETURN (v IS NOT NULL) = coalesce(w = 'true', true);
    ELSE
        IF jsonb_typeof(v) IS DISTINCT FROM 'number' THEN
            RETURN false;
        END IF;
        RETURN CASE p->>'op'
            WHEN 'gt' THEN v::numeric > w::numeric WHEN 'gte' THEN v::numeric >= w::numeric
            WHEN 'lt' THEN v::numeric < w::numeric WHEN 'lte' THEN v::numeric <= w::numeric
            ELSE false END;
    END CASE;
END;
$$;
COMMENT ON FUNCTION eav.predicate_holds(jsonb, jsonb) IS 'True if one rule predicate holds for an event body (a numeric compare of a value that is not a number is false).';

CREATE FUNCTION eav.predicate_check(p jsonb, p_n integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v_op text := p->>'op';
BEGIN
    IF jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'predicate %: must be an object {"field", "op", "value"}', p_n USING ERRCODE = '22023';
    END IF;
    SELECT x INTO k FROM jsonb_object_keys(p) x WHERE x NOT IN ('field', 'op', 'value') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'predicate %: unknown field "%"', p_n, k USING ERRCODE = '22023',
            HINT = 'Known: field, op, value.';
    END IF;
    IF eav.ref_path(p->>'field') IS NULL THEN
        RAISE EXCEPTION 'predicate %: field must be a reference like "$.a.b", not %', p_n,
            coalesce(p->>'field', 'null') USING ERRCODE = '22023';
    END IF;
    IF v_op IS NULL OR v_op NOT IN ('eq', 'ne', 'in', 'exists', 'gt', 'gte', 'lt', 'lte') THEN
        RAISE EXCEPTION 'predicate %: op must be eq, ne, in, exists, gt, gte, lt or lte, not %', p_n,
            coalesce(v_op, 'null') USING ERRCODE = '22023';
    END IF;
    IF v_op IN ('eq', 'ne') AND NOT p ? 'value'
       OR v_op = 'in' AND (jsonb_typeof(p->'value') IS DISTINCT FROM 'array'
                           OR jsonb_array_length(p->'value') NOT BETWEEN 1 AND 100)
       OR v_op = 'exists' AND p ? 'value' AND jsonb_typeof(p->'value') <> 'boolean'
       OR v_op IN ('gt', 'gte', 'lt', 'lte') AND jsonb_typeof(p->'value') IS DISTINCT FROM 'number' THEN
        RAISE EXCEPTION 'predicate %: op % needs %', p_n, v_op,
            CASE v_op WHEN 'in' THEN 'a value that is an array of 1 to 100 values'
                      WHEN 'exists' THEN 'no value, or true or false'
                      WHEN 'eq' THEN 'a value' WHEN 'ne' THEN 'a value'
                      ELSE 'a value that is a number' END USING ERRCODE = '22023';
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.predicate_check(jsonb, integer) IS 'Raises 22023 naming predicate p_n and the reason unless it is {"field": "$.a.b", "op": ..., "value": ...} with a value its op can use.';

CREATE FUNCTION eav.rule_matches(p_predicates jsonb, p_body jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(bool_and(eav.predicate_holds(p, p_body)), true)
    FROM jsonb_array_elements(p_predicates) p
$$;
COMMENT ON FUNCTION eav.rule_matches(jsonb, jsonb) IS 'True if every predicate holds for the body (an empty list matches).';

-- The template with every "$.a.b" string replaced by that body value.
CREATE FUNCTION eav.rule_render(p_t jsonb, p_body jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE jsonb_typeof(p_t)
    WHEN 'object' THEN
        RETURN (SELECT coalesce(jsonb_object_agg(k, eav.rule_render(v, p_body)), '{}')
                FROM jsonb_each(p_t) AS e(k, v));
    WHEN 'array' THEN
        RETURN (SELECT coalesce(jsonb_agg(eav.rule_render(v, p_body) ORDER BY n), '[]')
                FROM jsonb_array_elements(p_t) WITH ORDINALITY AS a(v, n));
    WHEN 'string' THEN
        IF eav.ref_path(p_t #>> '{}') IS NOT NULL THEN
            RETURN coalesce(p_body #> eav.ref_path(p_t #>> '{}'), 'null');
        END IF;
        RETURN p_t;
    ELSE
        RETURN p_t;
    END CASE;
END;
$$;
COMMENT ON FUNCTION eav.rule_render(jsonb, jsonb) IS 'Renders a rule template for an event body: each string that is a "$.a.b" reference becomes that body value (JSON null if absent).';

-- Refs: only in kind and in step inputs (queue and tools must be fixed, so
-- the kill switch and the template check can read them).
CREATE FUNCTION eav.rule_template_check(p_t jsonb, p_type eav.event_types,
    p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    v_probe jsonb;
BEGIN
    IF jsonb_typeof(p_t) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'task template must be an object {"queue", "kind", "steps"}' USING ERRCODE = '22023';
    END IF;
    SELECT x INTO k FROM jsonb_object_keys(p_t) x WHERE x NOT IN ('queue', 'kind', 'steps') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task template: unknown field "%"', k USING ERRCODE = '22023',
            HINT = 'Known: queue, kind, steps.';
    END IF;
    IF jsonb_path_exists(p_t - 'kind' - 'steps', 'strict $.** ? (@.type() == "string" && @ starts with "$.")')
       OR jsonb_typeof(p_t->'steps') = 'array' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_t->'steps') s
            WHERE jsonb_typeof(s) = 'object' AND jsonb_path_exists(s - 'input',
                'strict $.** ? (@.type() == "string" && @ starts with "$.")')) THEN
        RAISE EXCEPTION 'task template: a "$." reference may stand only in kind or a step''s input'
            USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT DISTINCT (eav.ref_path(s))[1]
             FROM jsonb_path_query(p_t, 'strict $.** ? (@.type() == "string")') AS j(v),
                  LATERAL (SELECT j.v #>> '{}' AS s) x
             WHERE eav.ref_path(s) IS NOT NULL LOOP
        IF p_type.schema->'additionalProperties' = 'false'
           AND NOT coalesce(p_type.schema->'properties', '{}') ? k THEN
            RAISE EXCEPTION 'task template: "$.%" is not a field of event type "%"', k, p_type.name
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    -- A probe: references as a plain string in kind and null in inputs.
    v_probe := eav.rule_render(p_t - 'kind', '{}') || jsonb_build_object('kind',
        CASE WHEN eav.ref_path(p_t->>'kind') IS NOT NULL THEN '"rule-check"'::jsonb
             ELSE p_t->'kind' END);
    IF jsonb_typeof(v_probe->'steps') = 'array' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(v_probe->'steps') s
            WHERE jsonb_typeof(s) = 'object' AND s ? 'idempotency_key') THEN
        RAISE EXCEPTION 'task template: a rule''s steps carry no idempotency_key'
            USING ERRCODE = '22023',
                  HINT = 'Every firing would replay the first one''s outcome.';
    END IF;
    -- Exactly eav.task_enqueue's checks, today's and later ones: the task
    -- is created in a subtransaction that is then rolled back.
    BEGIN
        PERFORM eav.task_enqueue(coalesce(v_probe->>'queue', 'default'),
            v_probe->>'kind', v_probe->'steps', p_actor);
        RAISE EXCEPTION 'template ok' USING ERRCODE = 'EAS01';
    EXCEPTION
        WHEN SQLSTATE 'EAS01' THEN
            NULL;
        WHEN data_exception OR program_limit_exceeded
             OR integrity_constraint_violation THEN
            RAISE EXCEPTION 'task template: %', SQLERRM USING ERRCODE = SQLSTATE;
    END;
END;
$$;
COMMENT ON FUNCTION eav.rule_template_check(jsonb, eav.event_types, text) IS 'Raises 22023 unless a rule template is {"queue", "kind", "steps"} that eav.task_enqueue accepts (checked in a rolled-back subtransaction), with "$." references only in kind and step inputs and naming fields the type knows.';

CREATE FUNCTION eav.rule_add(p_name text, p_type text, p_source text,
    p_predicates jsonb, p_template jsonb, p_priority integer DEFAULT 100,
    p_debounce_ms integer DEFAULT 0, p_max_per_minute integer DEFAULT 60,
    p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    t eav.event_types;
    v_id bigint;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'a rule name is 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM eav.rules WHERE name = p_name AND state <> 'removed') THEN
        RAISE EXCEPTION 'a rule named "%" exists', p_name USING ERRCODE = '22023',
            HINT = 'Remove it first (eav.rule_remove).';
    END IF;
    SELECT * INTO t FROM eav.event_types WHERE name = p_type;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown event type "%"', coalesce(p_type, '') USING ERRCODE = '22023',
            HINT = 'Add it first (eav.event_type_set).';
    END IF;
    IF t.task_body THEN
        RAISE EXCEPTION 'events of type "%" carry their task; no rule routes them', p_type
            USING ERRCODE = '22023';
    END IF;
    IF p_source IS NOT NULL AND length(p_source) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'source must be 1 to 128 characters, or NULL for any' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_predicates) IS DISTINCT FROM 'array' OR jsonb_array_length(p_predicates) > 20 THEN
        RAISE EXCEPTION 'predicates must be an array of at most 20 predicates' USING ERRCODE = '22023';
    END IF;
    PERFORM eav.predicate_check(p, n::integer)
    FROM jsonb_array_elements(p_predicates) WITH ORDINALITY AS a(p, n);
    IF p_priority IS NULL OR p_priority NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'priority must be between 0 and 1000000' USING ERRCODE = '22023';
    END IF;
    IF p_debounce_ms IS NULL OR p_debounce_ms NOT BETWEEN 0 AND 86400000 THEN
        RAISE EXCEPTION 'debounce_ms must be between 0 and 86400000' USING ERRCODE = '22023';
    END IF;
    IF p_max_per_minute IS NULL OR p_max_per_minute NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'max_per_minute must be between 1 and 1000000' USING ERRCODE = '22023';
    END IF;
    PERFORM eav.rule_template_check(p_template, t, v_actor);
    INSERT INTO eav.rules (name, type, source, predicates, template, priority,
        debounce_ms, max_per_minute, created_by, changed_by)
    VALUES (p_name, p_type, p_source, p_predicates, p_template, p_priority,
        p_debounce_ms, p_max_per_minute, v_actor, v_actor)
    RETURNING id INTO v_id;
    PERFORM eav.audit('rule.added', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('rule', p_name, 'rule_id', v_id, 'type', p_type,
            'source', p_source, 'predicates', p_predicates, 'template', p_template,
            'priority', p_priority, 'debounce_ms', p_debounce_ms,
            'max_per_minute', p_max_per_minute));
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION eav.rule_add(text, text, text, jsonb, jsonb, integer, integer, integer, text) IS 'Adds a routing rule (audited rule.added) and returns its id. Raises 22023 for a bad name, unknown or built-in type, bad predicate (eav.predicate_check) or template (eav.rule_template_check), priority, debounce or rate; nothing is stored then.';

CREATE FUNCTION eav.rule_set_state(p_name text, p_to text, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    r eav.rules;
BEGIN
    SELECT * INTO r FROM eav.rules WHERE name = p_name AND state <> 'removed' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rule "%"', coalesce(p_name, '') USING ERRCODE = 'EA004';
    END IF;
    IF r.state = p_to THEN
        RAISE EXCEPTION 'rule "%" is %', p_name, r.state USING ERRCODE = 'EA003';
    END IF;
    UPDATE eav.rules SET state = p_to, changed_by = v_actor, changed_at = now()
    WHERE id = r.id;
    PERFORM eav.audit('rule.' || p_to, 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('rule', p_name, 'rule_id', r.id, 'from', r.state));
END;
$$;
COMMENT ON FUNCTION eav.rule_set_state(text, text, text) IS 'Moves a rule to enabled, disabled or removed (audited rule.<state>); EA004 if there is no such rule, EA003 if it is already there.';

CREATE FUNCTION eav.rule_enable(p_name text, p_actor text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT eav.rule_set_state(p_name, 'enabled', p_actor) $$;
COMMENT ON FUNCTION eav.rule_enable(text, text) IS 'Enables a rule (audited rule.enabled).';
CREATE FUNCTION eav.rule_disable(p_name text, p_actor text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT eav.rule_set_state(p_name, 'disabled', p_actor) $$;
COMMENT ON FUNCTION eav.rule_disable(text, text) IS 'Disables a rule (audited rule.disabled): events no longer try it.';
CREATE FUNCTION eav.rule_remove(p_name text, p_actor text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT eav.rule_set_state(p_name, 'removed', p_actor) $$;
COMMENT ON FUNCTION eav.rule_remove(text, text) IS 'Removes a rule (audited rule.removed); the row stays, the name is free.';

CREATE FUNCTION eav.rule_match(p_type text, p_source text, p_body jsonb)
RETURNS eav.rules
LANGUAGE sql STABLE AS $$
    SELECT * FROM eav.rules r
    WHERE r.state = 'enabled' AND r.type = p_type
      AND (r.source IS NULL OR r.source = p_source)
      AND eav.rule_matches(r.predicates, p_body)
    ORDER BY r.priority, r.id LIMIT 1
$$;
COMMENT ON FUNCTION eav.rule_match(text, text, jsonb) IS 'The first enabled rule by (priority, id) of this type and source whose predicates hold for the body; a row of NULLs if none.';

-- Ingest ------------------------------------------------------------------

-- Parses and validates an event: its type, source, size and schema.
CREATE FUNCTION eav.event_normalize(e eav.inbox, OUT body jsonb, OUT t eav.event_types)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_cap bigint;
BEGIN
    SELECT * INTO t FROM eav.event_types WHERE name = e.type;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no route for event type "%": it is not in eav.event_types', e.type
            USING ERRCODE = '22023', HINT = 'Add the type (eav.event_type_set).';
    END IF;
    IF t.sources IS NOT NULL AND NOT e.source = ANY (t.sources) THEN
        RAISE EXCEPTION 'source "%" may not send events of type "%"', e.source, e.type
            USING ERRCODE = '22023';
    END IF;
    v_cap := eav.setting('max_event_bytes');
    v_cap := least(coalesce(t.max_bytes, v_cap), v_cap);
    IF octet_length(e.body) > v_cap THEN
        RAISE EXCEPTION 'event body is % bytes, more than the limit of % bytes',
            octet_length(e.body), v_cap USING ERRCODE = '54000';
    END IF;
    BEGIN
        body := e.body::jsonb;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'event body is not valid JSON: %', SQLERRM USING ERRCODE = '22023';
    END;
    PERFORM eav.json_check(t.schema, body);
END;
$$;
COMMENT ON FUNCTION eav.event_normalize(eav.inbox) IS 'Parses an inbox event and checks it against its type (known type, allowed source, size, schema); raises 22023 or 54000 with the reason.';

-- Claims (source, event_key) unless a claim within the window holds it.
CREATE FUNCTION eav.event_key_claim(e eav.inbox, t eav.event_types,
    OUT claimed boolean, OUT dup_task bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_window bigint := coalesce(t.dedupe_window_s, eav.setting('event_dedupe_window_s'));
BEGIN
    -- ON CONFLICT locks the existing row: a concurrent producer with the
    -- same key waits here and then re-reads the committed claim, so the
    -- WHERE sees a fresh first_seen and only one of them claims.
    INSERT INTO eav.event_keys AS k (source, event_key, event_id)
    VALUES (e.source, e.event_key, e.id)
    ON CONFLICT (source, event_key) DO UPDATE
        SET event_id = EXCLUDED.event_id, task_id = NULL, first_seen = now()
        WHERE v_window > 0 AND k.first_seen < now() - make_interval(secs => v_window);
    claimed := FOUND;
    IF NOT claimed THEN
        SELECT k.task_id INTO dup_task FROM eav.event_keys k
        WHERE k.source = e.source AND k.event_key = e.event_key;
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.event_key_claim(eav.inbox, eav.event_types) IS 'Claims the event''s (source, event_key) if free or claimed longer ago than the type''s dedupe window (0: never again); else returns the task of the claim that holds it. Exactly once under concurrent producers (ON CONFLICT row lock).';

-- Creates an event's task, as a child of its emitting task if any: that
-- child is refused by the queue's recursion limits as eav.task_spawn
-- refuses one (loop.blocked); then task_id is NULL and refused says why.
CREATE FUNCTION eav.event_task_create(e eav.inbox, p_queue text, p_kind text,
    p_steps jsonb, p_actor text, OUT task_id bigint, OUT refused text)
LANGUAGE plpgsql AS $$
DECLARE
    p eav.tasks;
    q eav.queues;
    v_n bigint;
BEGIN
    IF e.parent_task_id IS NOT NULL THEN
        SELECT * INTO p FROM eav.tasks WHERE id = e.parent_task_id;
        SELECT * INTO q FROM eav.queues WHERE name = p_queue;
        IF p.id IS NOT NULL AND q.name IS NOT NULL THEN
            IF p.depth + 1 > q.max_depth THEN
                refused := format('depth %s is more than max_depth %s of queue %s',
                                  p.depth + 1, q.max_depth, q.name);
                PERFORM eav.loop_block(p, p_kind, 'depth', jsonb_build_object(
                    'max_depth', q.max_depth, 'event_id', e.id), p_actor);
                RETURN;
            END IF;
            PERFORM pg_advisory_xact_lock(hashtextextended('trace:' || p.trace_id, 0));
            SELECT count(*) INTO v_n FROM eav.tasks t WHERE t.trace_id = p.trace_id;
            IF v_n >= q.max_trace_tasks THEN
                refused := format('trace holds %s tasks, max_trace_tasks of queue %s is %s',
                                  v_n, q.name, q.max_trace_tasks);
                PERFORM eav.loop_block(p, p_kind, 'fan_out', jsonb_build_object(
                    'max_trace_tasks', q.max_trace_tasks, 'trace_tasks', v_n,
                    'event_id', e.id), p_actor);
                RETURN;
            END IF;
        END IF;
    END IF;
    task_id := eav.task_enqueue(p_queue, p_kind, p_steps, p_actor,
        p_trace_id => e.trace_id,
        p_parent_task_id => CASE WHEN p.id IS NOT NULL THEN p.id END,
        p_event_id => e.id);
END;
$$;
COMMENT ON FUNCTION eav.event_task_create(eav.inbox, text, text, jsonb, text) IS 'Creates the task of an inbox event (trace, parent and depth from the emitting task, if any); a child past its queue''s max_depth or max_trace_tasks is refused (eav.loop_block): task_id NULL, refused the reason.';

-- The "clarification needed" task for an event no rule routed.
CREATE FUNCTION eav.event_clarify(e eav.inbox, p_reason text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_body jsonb;
BEGIN
    IF octet_length(e.body) <= 65536 THEN
        BEGIN
            v_body := e.body::jsonb;
        EXCEPTION WHEN data_exception THEN
            v_body := to_jsonb(e.body);
        END;
    END IF;
    RETURN eav.task_enqueue('review', 'event.clarify', jsonb_build_array(
        jsonb_build_object('tool', 'event.clarify', 'input', jsonb_build_object(
            'event_id', e.id, 'source', e.source, 'type', e.type,
            'event_key', e.event_key, 'reason', left(p_reason, 1000),
            'body', v_body, 'body_bytes', octet_length(e.body)))),
        p_actor, p_trace_id => e.trace_id, p_event_id => e.id);
END;
$$;
COMMENT ON FUNCTION eav.event_clarify(eav.inbox, text, text) IS 'Creates the clarification task of an event (queue review, kind event.clarify, one event.clarify step that waits for an operator''s approval) with the event, the reason and its body (up to 64 KiB) as input.';

-- Records where an event ended.  (plpgsql, not sql: its plans are kept.)
CREATE FUNCTION eav.event_settle(e eav.inbox, p_state text, p_task bigint,
    p_rule bigint, p_error text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE eav.inbox SET state = p_state, processed_at = now(), task_id = p_task,
        rule_id = coalesce(p_rule, rule_id), error = p_error,
        lease_until = NULL, lease_owner = NULL
    WHERE id = e.id;
    IF p_task IS NOT NULL AND p_state <> 'deduped' THEN
        UPDATE eav.event_keys SET task_id = p_task
        WHERE source = e.source AND event_key = e.event_key AND event_id = e.id;
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.event_settle(eav.inbox, text, bigint, bigint, text) IS 'Sets an inbox event''s final (or waiting) state, task, rule and reason; the key''s claim gets the task.';

CREATE FUNCTION eav.event_payload(e eav.inbox) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('event_id', e.id, 'source', e.source,
        'event_key', e.event_key, 'type', e.type)
$$;
COMMENT ON FUNCTION eav.event_payload(eav.inbox) IS 'The audit payload naming an inbox event.';

-- Unrouted: the clarification task, audited p_audit with the reason.
CREATE FUNCTION eav.event_unrouted(e eav.inbox, p_audit text, p_reason text,
    p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_task bigint := eav.event_clarify(e, p_reason, p_actor);
BEGIN
    PERFORM eav.event_settle(e, 'unrouted', v_task, NULL, p_reason);
    PERFORM eav.audit(p_audit, 'failure', p_actor, e.trace_id, v_task, NULL,
        eav.event_payload(e) || jsonb_build_object('reason', p_reason));
    RETURN v_task;
END;
$$;
COMMENT ON FUNCTION eav.event_unrouted(eav.inbox, text, text, text) IS 'Sends an event for clarification: its clarification task, state unrouted, audited p_audit (event.unrouted or classifier.fallback) with the reason. Returns the task.';

-- The storm gate of a locked rule: NULL to fire, else why it is blocked.
CREATE FUNCTION eav.rule_gate(r eav.rules) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN r.debounce_ms > 0 AND r.last_fired_at IS NOT NULL
             AND now() - r.last_fired_at < make_interval(secs => r.debounce_ms / 1000.0)
            THEN format('debounce: fired %s ms ago, debounce_ms is %s',
                 round(extract(epoch FROM now() - r.last_fired_at) * 1000), r.debounce_ms)
        WHEN r.window_start IS NOT NULL AND now() - r.window_start < interval '1 minute'
             AND r.window_fires >= r.max_per_minute
            THEN format('rate: %s firings this minute, max_per_minute is %s',
                 r.window_fires, r.max_per_minute)
    END
$$;
COMMENT ON FUNCTION eav.rule_gate(eav.rules) IS 'Storm gate of a rule: NULL if it may fire now, else the reason (debounce or rate).';

-- Fires rule p_rule for an event (gate first unless p_gate is false).
CREATE FUNCTION eav.event_fire(e eav.inbox, p_body jsonb, p_rule bigint,
    p_actor text, p_gate boolean, OUT state text, OUT task_id bigint, OUT error text)
LANGUAGE plpgsql AS $$
DECLARE
    r eav.rules;
    v_t jsonb;
    v_c record;
BEGIN
    -- One firing of a rule at a time, so its gate counts exactly.
    SELECT * INTO r FROM eav.rules WHERE id = p_rule FOR UPDATE;
    error := CASE WHEN p_gate THEN eav.rule_gate(r) END;
    IF error IS NOT NULL THEN
        UPDATE eav.rules SET blocks = blocks + 1 WHERE id = r.id;
        PERFORM eav.audit('gate.storm_block', 'refused', p_actor, e.trace_id, NULL, NULL,
            eav.event_payload(e) || jsonb_build_object('rule', r.name, 'rule_id', r.id,
                'reason', error));
        PERFORM eav.alarm_raise('rule_storm', 'warning', 'rule:' || r.name,
            format('rule %s fires too often (%s); its events are held: eavctl events release|drop',
                   r.name, error),
            jsonb_build_object('rule_id', r.id, 'event_id', e.id), p_actor);
        state := 'held';
        error := 'storm gate: ' || error;
        RETURN;
    END IF;
    v_t := eav.rule_render(r.template, p_body);
    SELECT * INTO v_c FROM eav.event_task_create(e, coalesce(v_t->>'queue', 'default'),
        v_t->>'kind', v_t->'steps', p_actor);
    IF v_c.task_id IS NULL THEN
        state := 'refused';
        error := 'recursion limit: ' || v_c.refused;
        RETURN;
    END IF;
    UPDATE eav.rules SET fires = fires + 1, last_fired_at = now(),
        window_start = CASE WHEN window_start IS NULL
            OR now() - window_start >= interval '1 minute' THEN now() ELSE window_start END,
        window_fires = CASE WHEN window_start IS NULL
            OR now() - window_start >= interval '1 minute' THEN 1 ELSE window_fires + 1 END
    WHERE id = r.id;
    state := 'accepted';
    task_id := v_c.task_id;
END;
$$;
COMMENT ON FUNCTION eav.event_fire(eav.inbox, jsonb, bigint, text, boolean) IS 'Fires a rule for an event: through the storm gate (blocked: gate.storm_block, rule_storm alarm, state held), then its rendered template as the event''s task (eav.event_task_create: accepted, or refused by the recursion limits). The caller settles the event.';

-- Settles an event after eav.event_fire and audits it.
CREATE FUNCTION eav.event_fired(e eav.inbox, p_rule bigint, p_state text,
    p_task bigint, p_error text, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eav.event_settle(e, p_state, p_task, p_rule, p_error);
    IF p_state <> 'held' THEN
        PERFORM eav.audit('event.ingested', CASE p_state WHEN 'accepted' THEN 'success'
                                                          ELSE 'refused' END,
            p_actor, e.trace_id, p_task, NULL, eav.event_payload(e) || jsonb_build_object(
                'rule', (SELECT name FROM eav.rules WHERE id = p_rule), 'error', p_error));
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.event_fired(eav.inbox, bigint, text, bigint, text, text) IS 'Settles an event a rule fired for: accepted (event.ingested success), refused (event.ingested refused, after loop.blocked) or held (gate.storm_block already audited).';

-- Routes one normalized event whose key is claimed.
CREATE FUNCTION eav.event_dispatch(e eav.inbox, p_body jsonb, t eav.event_types,
    p_actor text, p_classify boolean, OUT state text, OUT task_id bigint, OUT error text)
LANGUAGE plpgsql AS $$
DECLARE
    r eav.rules;
    v_c record;
BEGIN
    IF t.task_body THEN
        SELECT * INTO v_c FROM eav.event_task_create(e, coalesce(p_body->>'queue', 'default'),
            p_body->>'kind', p_body->'steps', p_actor);
        state := CASE WHEN v_c.task_id IS NULL THEN 'refused' ELSE 'accepted' END;
        task_id := v_c.task_id;
        error := 'recursion limit: ' || v_c.refused;
        PERFORM eav.event_fired(e, NULL, state, task_id, error, p_actor);
        RETURN;
    END IF;
    r := eav.rule_match(e.type, e.source, p_body);
    IF r.id IS NOT NULL THEN
        SELECT * INTO v_c FROM eav.event_fire(e, p_body, r.id, p_actor, true);
        state := v_c.state;
        task_id := v_c.task_id;
        error := v_c.error;
        PERFORM eav.event_fired(e, r.id, state, task_id, error, p_actor);
    ELSIF p_classify THEN
        state := 'classifying';
        PERFORM eav.event_settle(e, state, NULL, NULL, NULL);
        PERFORM eav.audit('event.classifying', 'success', p_actor, e.trace_id, NULL, NULL,
            eav.event_payload(e));
    ELSE
        state := 'unrouted';
        error := format('no rule routes events of type %s from %s', e.type, e.source);
        task_id := eav.event_unrouted(e, 'event.unrouted', error, p_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.event_dispatch(eav.inbox, jsonb, eav.event_types, text, boolean) IS 'Routes a normalized event whose key is claimed: type task creates its body; else the first matching rule fires (eav.event_fire); no rule: classifying if p_classify, else a clarification task (event.unrouted).';

CREATE FUNCTION eav.template_is_killed(p_t jsonb, p_queues text[], p_tools text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(p_t->>'queue', 'default') = ANY (p_queues)
        OR jsonb_typeof(p_t->'steps') = 'array' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_t->'steps') st
            WHERE jsonb_typeof(st) = 'object' AND st->>'tool' = ANY (p_tools))
$$;
COMMENT ON FUNCTION eav.template_is_killed(jsonb, text[], text[]) IS 'True if a task {"queue", "steps"} falls in one of these queues or calls one of these tools.';

CREATE OR REPLACE FUNCTION eav.event_is_killed(e eav.inbox, p_queues text[], p_tools text[])
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_body jsonb;
    t eav.event_types;
    r eav.rules;
BEGIN
    SELECT * INTO t FROM eav.event_types WHERE name = e.type;
    IF NOT FOUND THEN
        RETURN false;           -- rejected
    END IF;
    BEGIN
        v_body := e.body::jsonb;
    EXCEPTION WHEN data_exception THEN
        RETURN false;           -- rejected
    END;
    IF jsonb_typeof(v_body) <> 'object' THEN
        RETURN false;
    END IF;
    IF t.task_body THEN
        RETURN eav.template_is_killed(v_body, p_queues, p_tools);
    END IF;
    r := eav.rule_match(e.type, e.source, v_body);
    IF r.id IS NULL THEN
        RETURN eav.template_is_killed('{"queue": "review", "steps": [{"tool": "event.clarify"}]}',
            p_queues, p_tools);
    END IF;
    RETURN eav.template_is_killed(r.template, p_queues, p_tools);
END;
$$;
COMMENT ON FUNCTION eav.event_is_killed(eav.inbox, text[], text[]) IS 'True if an inbox event would create a task on one of these queues or calling one of these tools (its body for type task, else its rule''s template, else the clarification task).';

CREATE FUNCTION eav.inbox_ingest(p_limit integer, p_actor text, p_classify boolean)
RETURNS TABLE (event_id bigint, state text, task_id bigint, error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e eav.inbox;
    v_n record;
    v_k record;
    v_d record;
    v_all boolean;
    v_kq text[];
    v_kt text[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(eav.kill_switch_lock_id());
    SELECT * INTO v_all, v_kq, v_kt FROM eav.kill_switch_scopes();
    IF v_all THEN
        RETURN;
    END IF;
    -- Events of an engaged switch's scope stay new: filtered before the
    -- row lock, so a held backlog is read but neither locked nor counted.
    FOR e IN
        SELECT * FROM eav.inbox i WHERE i.state = 'new'
          AND (v_kq IS NULL AND v_kt IS NULL
               OR NOT eav.event_is_killed(i, v_kq, v_kt))
        ORDER BY i.id LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        event_id := e.id;
        task_id := NULL;
        error := NULL;
        BEGIN
            SELECT * INTO v_n FROM eav.event_normalize(e);
            SELECT * INTO v_k FROM eav.event_key_claim(e, v_n.t);
            IF NOT v_k.claimed THEN
                PERFORM eav.event_settle(e, 'deduped', v_k.dup_task, NULL, NULL);
                PERFORM eav.audit('event.deduped', 'success', p_actor, e.trace_id,
                    v_k.dup_task, NULL, eav.event_payload(e) - 'type');
                state := 'deduped';
                task_id := v_k.dup_task;
            ELSE
                SELECT * INTO v_d FROM eav.event_dispatch(e, v_n.body, v_n.t, p_actor,
                    p_classify);
                state := v_d.state;
                task_id := v_d.task_id;
                error := v_d.error;
            END IF;
        EXCEPTION
            WHEN data_exception OR integrity_constraint_violation
                 OR program_limit_exceeded OR invalid_parameter_value THEN
                error := SQLERRM;
                PERFORM eav.event_settle(e, 'rejected', NULL, NULL, SQLERRM);
                PERFORM eav.audit('event.ingested', 'failure', p_actor, e.trace_id, NULL,
                    NULL, eav.event_payload(e) || jsonb_build_object('error', SQLERRM));
                state := 'rejected';
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.inbox_ingest(integer, text, boolean) IS 'Producer step: takes up to p_limit new inbox events (SKIP LOCKED); each is normalized against its type (rejected with the reason, event.ingested failure), deduped within its type''s window (event.deduped) and routed: type task creates its body; else the first matching rule fires through its storm gate (accepted, held, or refused by the recursion limits); no rule: classifying if p_classify (eav.event_classify_take, eav.event_classified), else a clarification task (unrouted, event.unrouted). Events in the scope of an engaged kill switch stay new. The caller commits; a crash before COMMIT loses nothing and duplicates nothing.';

CREATE OR REPLACE FUNCTION eav.inbox_ingest(p_limit integer, p_actor text)
RETURNS TABLE (event_id bigint, state text, task_id bigint, error text)
LANGUAGE sql AS $$
    SELECT * FROM eav.inbox_ingest(p_limit, p_actor, false)
$$;
COMMENT ON FUNCTION eav.inbox_ingest(integer, text) IS 'eav.inbox_ingest(p_limit, p_actor, false): no classifier, an event no rule routes gets a clarification task.';

-- Classifier --------------------------------------------------------------

-- Locks an inbox event by id in one of p_states, or raises.
CREATE FUNCTION eav.event_get(p_id bigint, p_states text[]) RETURNS eav.inbox
LANGUAGE plpgsql AS $$
DECLARE
    e eav.inbox;
BEGIN
    SELECT * INTO e FROM eav.inbox WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no event %', coalesce(p_id::text, 'NULL') USING ERRCODE = 'EA004';
    END IF;
    IF NOT e.state = ANY (p_states) THEN
        RAISE EXCEPTION 'event % is %, not %', p_id, e.state, array_to_string(p_states, ' or ')
            USING ERRCODE = 'EA003';
    END IF;
    RETURN e;
END;
$$;
COMMENT ON FUNCTION eav.event_get(bigint, text[]) IS 'Locks and returns an inbox event in one of p_states; EA004 if there is none, EA003 if it is in another state.';

-- True, with the reason in p_why, if a kill switch covers the task.
CREATE FUNCTION eav.event_task_killed(p_t jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_all boolean;
    v_kq text[];
    v_kt text[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(eav.kill_switch_lock_id());
    SELECT * INTO v_all, v_kq, v_kt FROM eav.kill_switch_scopes();
    IF v_all OR eav.template_is_killed(p_t, v_kq, v_kt) THEN
        RETURN 'a kill switch covers its task';
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.event_task_killed(jsonb) IS 'Under the kill switch lock (shared): the reason if an engaged switch covers a task {"queue", "steps"}, else NULL.';

CREATE FUNCTION eav.event_classify_take(p_limit integer, p_lease_ms integer,
    p_actor text)
RETURNS TABLE (event_id bigint, source text, type text, event_key text,
               body text, attempt integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e eav.inbox;
    v_max integer := eav.setting('classifier_max_attempts');
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_lease_ms IS NULL
       OR p_lease_ms NOT BETWEEN 100 AND 3600000 THEN
        RAISE EXCEPTION 'limit must be at least 1 and lease_ms between 100 and 3600000'
            USING ERRCODE = '22023';
    END IF;
    FOR e IN
        SELECT * FROM eav.inbox i WHERE i.state = 'classifying'
          AND (i.lease_until IS NULL OR i.lease_until < now())
        ORDER BY i.id LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        IF e.attempts >= v_max THEN
            -- The classifier had its chances (a lease that lapsed means the
            -- producer died with it, perhaps because of this event).
            PERFORM eav.event_unrouted(e, 'classifier.fallback',
                format('the classifier did not answer in %s attempts', e.attempts), p_actor);
            CONTINUE;
        END IF;
        UPDATE eav.inbox SET lease_until = now() + make_interval(secs => p_lease_ms / 1000.0),
            lease_owner = p_actor, attempts = attempts + 1 WHERE id = e.id;
        PERFORM eav.audit('classifier.started', 'success', p_actor, e.trace_id, NULL, NULL,
            eav.event_payload(e) || jsonb_build_object('attempt', e.attempts + 1,
                'lease_ms', p_lease_ms));
        event_id := e.id;
        source := e.source;
        type := e.type;
        event_key := e.event_key;
        body := e.body;
        attempt := e.attempts + 1;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.event_classify_take(integer, integer, text) IS 'Producer: leases up to p_limit events in state classifying whose lease is free or lapsed (SKIP LOCKED) for p_lease_ms (audited classifier.started) and returns them for the classifier; one leased classifier_max_attempts times already falls back to its clarification task (classifier.fallback) instead. A restarted producer takes its lapsed leases again.';

-- Why a classifier's answer cannot route the event, or NULL (p_rule set).
CREATE FUNCTION eav.classifier_verdict(e eav.inbox, p_output text, p_error text,
    OUT reason text, OUT rule_id bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_cap bigint := eav.setting('classifier_max_output_bytes');
    v jsonb;
BEGIN
    IF p_error IS NOT NULL THEN
        reason := 'classifier failed: ' || left(p_error, 1000);
        RETURN;
    END IF;
    IF p_output IS NULL OR octet_length(p_output) > v_cap THEN
        reason := format('classifier output is %s bytes, more than the limit of %s bytes',
            coalesce(octet_length(p_output), 0), v_cap);
        IF p_output IS NULL THEN
            reason := 'classifier gave no output';
        END IF;
        RETURN;
    END IF;
    BEGIN
        v := p_output::jsonb;
    EXCEPTION WHEN data_exception THEN
        reason := 'classifier output is not JSON: ' || SQLERRM;
        RETURN;
    END;
    IF jsonb_typeof(v) <> 'object' OR jsonb_typeof(v->'route') IS DISTINCT FROM 'string' THEN
        reason := 'classifier output must be {"route": "<rule name>"}, not ' || left(v::text, 200);
        RETURN;
    END IF;
    SELECT r.id INTO rule_id FROM eav.rules r
    WHERE r.name = v->>'route' AND r.state = 'enabled' AND r.type = e.type
      AND (r.source IS NULL OR r.source = e.source);
    IF NOT FOUND THEN
        reason := format('classifier named an unknown route "%s" (no enabled rule of that name for type %s from %s)',
            left(v->>'route', 200), e.type, e.source);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.classifier_verdict(eav.inbox, text, text) IS 'Reads a classifier''s answer for an event: the enabled rule of the event''s type (and source) it names, or why it cannot be used (an error or time-out, no or huge output, not JSON, not {"route": ...}, unknown route).';

CREATE FUNCTION eav.event_classified(p_event_id bigint, p_output text,
    p_error text, p_actor text)
RETURNS TABLE (state text, task_id bigint, error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e eav.inbox := eav.event_get(p_event_id, '{classifying}');
    v_reason text;
    v_rule bigint;
    v_f record;
    v_killed text;
BEGIN
    SELECT * INTO v_reason, v_rule FROM eav.classifier_verdict(e, p_output, p_error);
    v_killed := eav.event_task_killed(CASE WHEN v_rule IS NULL
        THEN '{"queue": "review", "steps": [{"tool": "event.clarify"}]}'
        ELSE (SELECT template FROM eav.rules WHERE id = v_rule) END);
    IF v_killed IS NOT NULL THEN
        -- Nothing changes: the lease is given back, and it is classified
        -- again once the switch is released.
        UPDATE eav.inbox SET lease_until = NULL, lease_owner = NULL,
            attempts = greatest(attempts - 1, 0) WHERE id = e.id;
        state := 'classifying';
        error := v_killed;
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_rule IS NOT NULL THEN
        BEGIN
            SELECT * INTO v_f FROM eav.event_fire(e, e.body::jsonb, v_rule, p_actor, true);
            PERFORM eav.audit('classifier.routed', 'success', p_actor, e.trace_id, v_f.task_id,
                NULL, eav.event_payload(e) || jsonb_build_object('rule_id', v_rule,
                    'rule', (SELECT name FROM eav.rules WHERE id = v_rule)));
            PERFORM eav.event_fired(e, v_rule, v_f.state, v_f.task_id, v_f.error, p_actor);
            state := v_f.state;
            task_id := v_f.task_id;
            error := v_f.error;
            RETURN NEXT;
            RETURN;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation
                       OR program_limit_exceeded OR invalid_parameter_value THEN
            v_reason := format('route "%s" could not create its task: %s',
                (SELECT name FROM eav.rules WHERE id = v_rule), SQLERRM);
        END;
    END IF;
    state := 'unrouted';
    error := v_reason;
    task_id := eav.event_unrouted(e, 'classifier.fallback', v_reason, p_actor);
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION eav.event_classified(bigint, text, text, text) IS 'Producer: the classifier''s answer for an event in state classifying: p_output its stdout, expected {"route": "<rule name>"}, or p_error (failed, timed out). A known route fires that rule (storm gate and recursion limits apply; classifier.routed); anything else (error, time-out, no or huge output, not JSON, unknown route, a task the rule cannot create) makes the clarification task (classifier.fallback with the reason). While a kill switch covers the task nothing changes (state classifying, lease given back). EA004 for no such event, EA003 if it is not classifying (another producer answered first).';

-- Held events -----------------------------------------------------------

CREATE FUNCTION eav.event_release(p_event_id bigint, p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    e eav.inbox := eav.event_get(p_event_id, '{held}');
    r eav.rules;
    v_f record;
    v_killed text;
BEGIN
    SELECT * INTO r FROM eav.rules WHERE id = e.rule_id;
    IF r.state = 'removed' THEN
        RAISE EXCEPTION 'rule "%" of event % was removed; drop the event', r.name, e.id
            USING ERRCODE = 'EA003';
    END IF;
    v_killed := eav.event_task_killed(r.template);
    IF v_killed IS NOT NULL THEN
        RAISE EXCEPTION 'event % cannot be released: %', e.id, v_killed USING ERRCODE = 'EA003';
    END IF;
    -- The operator's decision opens the gate for this event only.
    SELECT * INTO v_f FROM eav.event_fire(e, e.body::jsonb, r.id, v_actor, false);
    PERFORM eav.event_settle(e, v_f.state, v_f.task_id, r.id, v_f.error);
    PERFORM eav.audit('event.released', CASE WHEN v_f.task_id IS NULL THEN 'refused'
                                             ELSE 'success' END,
        v_actor, e.trace_id, v_f.task_id, NULL,
        eav.event_payload(e) || jsonb_build_object('rule', r.name, 'error', v_f.error));
    RETURN v_f.task_id;
END;
$$;
COMMENT ON FUNCTION eav.event_release(bigint, text) IS 'Operator: creates the task of an event held by its rule''s storm gate, past the gate (the recursion limits still apply: then it is refused and NULL returned). Audited event.released. EA004 no such event, EA003 not held, rule removed, or a kill switch covers the task.';

CREATE FUNCTION eav.event_drop(p_event_id bigint, p_reason text,
    p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    e eav.inbox;
BEGIN
    IF p_reason IS NULL OR length(btrim(p_reason)) NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'a reason (1 to 1000 characters) is required to drop an event'
            USING ERRCODE = '22023';
    END IF;
    e := eav.event_get(p_event_id, '{held}');
    PERFORM eav.event_settle(e, 'dropped', NULL, NULL, 'dropped: ' || p_reason);
    PERFORM eav.audit('event.dropped', 'success', v_actor, e.trace_id, NULL, NULL,
        eav.event_payload(e) || jsonb_build_object('reason', p_reason,
            'rule_id', e.rule_id));
END;
$$;
COMMENT ON FUNCTION eav.event_drop(bigint, text, text) IS 'Operator: drops an event held by a storm gate, with a reason (audited event.dropped); no task is created. EA004 no such event, EA003 not held, 22023 no reason.';

-- Tasks emitting events ---------------------------------------------------

-- One emit spec of a step result into the inbox; raises 22023 if bad.
CREATE FUNCTION eav.event_emit(s eav.steps, p_spec jsonb, p_n integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    v_depth integer := (SELECT depth FROM eav.tasks WHERE id = s.task_id);
    v_id bigint;
BEGIN
    IF jsonb_typeof(p_spec) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'emit %: must be an object {"source", "type", "event_key", "body"}', p_n
            USING ERRCODE = '22023';
    END IF;
    SELECT x INTO k FROM jsonb_object_keys(p_spec) x
    WHERE x NOT IN ('source', 'type', 'event_key', 'body') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'emit %: unknown field "%"', p_n, k USING ERRCODE = '22023',
            HINT = 'Known: source, type, event_key, body.';
    END IF;
    IF jsonb_typeof(p_spec->'source') IS DISTINCT FROM 'string'
       OR jsonb_typeof(p_spec->'type') IS DISTINCT FROM 'string'
       OR p_spec ? 'event_key' AND jsonb_typeof(p_spec->'event_key') <> 'string' THEN
        RAISE EXCEPTION 'emit %: source and type (and event_key, if given) must be strings', p_n
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO eav.inbox (source, event_key, type, body, trace_id, parent_task_id, depth)
    VALUES (p_spec->>'source',
        coalesce(p_spec->>'event_key', format('step:%s:%s', s.id, p_n)),
        p_spec->>'type',
        CASE WHEN jsonb_typeof(p_spec->'body') = 'string' THEN p_spec->>'body'
             ELSE coalesce(p_spec->'body', '{}')::text END,
        s.trace_id, s.task_id, v_depth + 1)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION eav.event_emit(eav.steps, jsonb, integer) IS 'Puts event p_n of a step result''s "emit" in the inbox with the step''s trace, its task as parent and depth + 1 (default event_key step:<step id>:<n>); raises 22023 for a malformed spec.';

CREATE FUNCTION eav.step_emit_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('worker:%s/%s/%s', NEW.owner_node,
        NEW.owner_incarnation, NEW.owner_pid);
    v_specs jsonb := NEW.result->'emit';
    v_spec jsonb;
    v_n integer := 0;
BEGIN
    -- A result replayed from another step's recorded outcome (same
    -- client key) already emitted its events (as eav.step_spawn_children).
    IF EXISTS (SELECT 1 FROM eav.idempotency_outcomes o
               WHERE o.tool = NEW.tool AND o.idempotency_key = NEW.idempotency_key
                 AND o.step_id <> NEW.id) THEN
        RETURN NULL;
    END IF;
    IF jsonb_array_length(v_specs) > 100 THEN
        PERFORM eav.audit('event.emit_refused', 'refused', v_actor, NEW.trace_id,
            NEW.task_id, NEW.id, jsonb_build_object('error',
                format('a result may emit at most 100 events, not %s',
                       jsonb_array_length(v_specs))));
        RETURN NULL;
    END IF;
    -- The inbox trigger audits each arrival (event.received) with this actor.
    PERFORM set_config('eav.actor', v_actor, true);
    FOR v_spec IN SELECT x FROM jsonb_array_elements(v_specs) x LOOP
        v_n := v_n + 1;
        BEGIN
            PERFORM eav.event_emit(NEW, v_spec, v_n);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation
                       OR program_limit_exceeded OR invalid_parameter_value THEN
            PERFORM eav.audit('event.emit_refused', 'refused', v_actor, NEW.trace_id,
                NEW.task_id, NEW.id, jsonb_build_object('emit', v_n, 'error', SQLERRM));
        END;
    END LOOP;
    PERFORM set_config('eav.actor', '', true);
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.step_emit_events() IS 'Trigger: a step that succeeded with "emit": [{"source", "type", "event_key", "body"}, ...] in its result puts those events in the inbox (eav.event_emit: trace, parent task, depth + 1), unless the result is another step''s recorded outcome replayed; a malformed spec, or more than 100, is audited event.emit_refused and skipped.';

CREATE TRIGGER steps_emit_events AFTER UPDATE OF state ON eav.steps
    FOR EACH ROW
    WHEN (NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
          AND jsonb_typeof(NEW.result->'emit') = 'array')
    EXECUTE FUNCTION eav.step_emit_events();

-- Views -------------------------------------------------------------------

CREATE VIEW eav.proj_rules AS
SELECT r.name, r.type, r.source, r.priority, r.state, r.debounce_ms,
       r.max_per_minute, r.fires, r.blocks,
       (SELECT count(*) FROM eav.inbox i WHERE i.state = 'held' AND i.rule_id = r.id) AS held,
       r.last_fired_at, r.predicates, r.template
FROM eav.rules r WHERE r.state <> 'removed';
COMMENT ON VIEW eav.proj_rules IS 'Rules not removed, with their firings, storm-gate blocks and events held now.';
COMMENT ON COLUMN eav.proj_rules.name IS 'Rule name.';
COMMENT ON COLUMN eav.proj_rules.type IS 'Event type it routes.';
COMMENT ON COLUMN eav.proj_rules.source IS 'Source it routes; NULL: any.';
COMMENT ON COLUMN eav.proj_rules.priority IS 'Lower is tried first.';
COMMENT ON COLUMN eav.proj_rules.state IS 'enabled or disabled.';
COMMENT ON COLUMN eav.proj_rules.debounce_ms IS 'Storm gate: least time between firings.';
COMMENT ON COLUMN eav.proj_rules.max_per_minute IS 'Storm gate: firings allowed per minute.';
COMMENT ON COLUMN eav.proj_rules.fires IS 'Tasks it created.';
COMMENT ON COLUMN eav.proj_rules.blocks IS 'Events its storm gate held (gate.storm_block).';
COMMENT ON COLUMN eav.proj_rules.held IS 'Events held by its gate now, waiting for eavctl events release|drop.';
COMMENT ON COLUMN eav.proj_rules.last_fired_at IS 'When it last created a task.';
COMMENT ON COLUMN eav.proj_rules.predicates IS 'Its predicates.';
COMMENT ON COLUMN eav.proj_rules.template IS 'Its task template.';

-- Diagnose ----------------------------------------------------------------

-- As in 0019, now that eav.rules exists: only rules that can fire count.
CREATE OR REPLACE FUNCTION eav.diag_rule_debounce() RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_n bigint;
BEGIN
    SELECT count(*) INTO v_n FROM eav.rules
    WHERE state = 'enabled' AND debounce_ms <= 0;
    RETURN eav.diag('loop control', 'rule_debounce',
        CASE WHEN v_n = 0 THEN 'ok' ELSE 'warning' END,
        format('%s rule(s) without debounce', v_n),
        jsonb_build_object('count', v_n),
        'give each rule a debounce_ms (eavctl rules add -d); max_per_minute still bounds it');
END;
$$;
COMMENT ON FUNCTION eav.diag_rule_debounce() IS 'loop control / rule_debounce: enabled rules of eav.rules without a debounce (warning).';

-- Privileges --------------------------------------------------------------

INSERT INTO eav.role_functions (role, function)
SELECT 'eav_producer', f FROM unnest(ARRAY['event_classify_take',
    'event_classified']) f
UNION ALL
SELECT 'eav_operator', f FROM unnest(ARRAY['event_type_set', 'rule_add',
    'rule_enable', 'rule_disable', 'rule_remove', 'event_release',
    'event_drop']) f;
