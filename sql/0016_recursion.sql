-- 0016_recursion: tasks that create tasks, and the limits that stop a
-- chain that would trigger itself forever (a webhook calling back the
-- service that called it).
--
-- A step whose successful result has "enqueue": [spec, ...] creates one
-- child task per spec, in the completing transaction (a row trigger on
-- steps whose WHEN clause is false for every other update, so the hot
-- path queues no trigger event).  A child inherits its parent's trace,
-- with depth + 1.  Before it is created, its queue's limits are checked:
-- max_depth, a fan-out budget of tasks per trace (max_trace_tasks), and
-- a cycle check: a spec's "dedupe_key" may be used once per (trace,
-- kind).  A child refused by any of them is not created: audited
-- loop.blocked, alarmed loop_blocked (one alarm per trace, counted up),
-- and the parent's success stands.  A malformed spec is refused the same
-- way (task.spawn_refused), never by failing the completion, which would
-- wedge the worker that sent it.

ALTER TABLE eav.queues
    ADD COLUMN max_depth integer NOT NULL DEFAULT 20
        CHECK (max_depth BETWEEN 1 AND 1000),
    ADD COLUMN max_trace_tasks integer NOT NULL DEFAULT 1000
        CHECK (max_trace_tasks BETWEEN 1 AND 10000000);
COMMENT ON COLUMN eav.queues.max_depth IS 'Deepest a task created by another task may be on this queue (depth = ancestors).';
COMMENT ON COLUMN eav.queues.max_trace_tasks IS 'Fan-out budget: tasks one trace may hold before a child task on this queue is refused.';

CREATE TABLE eav.trace_keys (
    trace_id   uuid NOT NULL,
    kind       text NOT NULL,
    dedupe_key text NOT NULL CHECK (octet_length(dedupe_key) BETWEEN 1 AND 255),
    task_id    bigint NOT NULL,
    PRIMARY KEY (trace_id, kind, dedupe_key)
);
COMMENT ON TABLE eav.trace_keys IS 'The (kind, dedupe_key) of each child task of a trace: a second one is a cycle (loop.blocked).';
COMMENT ON COLUMN eav.trace_keys.trace_id IS 'The trace.';
COMMENT ON COLUMN eav.trace_keys.kind IS 'Kind of the child task.';
COMMENT ON COLUMN eav.trace_keys.dedupe_key IS 'The spec''s dedupe_key.';
COMMENT ON COLUMN eav.trace_keys.task_id IS 'The child task that used it.';

CREATE FUNCTION eav.queue_set_recursion(p_name text, p_max_depth integer,
    p_max_trace_tasks integer, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    q eav.queues;
BEGIN
    SELECT * INTO q FROM eav.queues WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no queue "%"', p_name USING ERRCODE = '22023';
    END IF;
    q.max_depth := coalesce(p_max_depth, q.max_depth);
    q.max_trace_tasks := coalesce(p_max_trace_tasks, q.max_trace_tasks);
    IF q.max_depth NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'max_depth must be between 1 and 1000, not %', q.max_depth
            USING ERRCODE = '22023';
    END IF;
    IF q.max_trace_tasks NOT BETWEEN 1 AND 10000000 THEN
        RAISE EXCEPTION 'max_trace_tasks must be between 1 and 10000000, not %',
            q.max_trace_tasks USING ERRCODE = '22023';
    END IF;
    UPDATE eav.queues SET max_depth = q.max_depth,
        max_trace_tasks = q.max_trace_tasks WHERE name = p_name;
    PERFORM eav.audit('queue.updated', 'success', coalesce(p_actor,
        eav.default_actor()), NULL, NULL, NULL,
        jsonb_build_object('queue', p_name, 'max_depth', q.max_depth,
                           'max_trace_tasks', q.max_trace_tasks));
END;
$$;
COMMENT ON FUNCTION eav.queue_set_recursion(text, integer, integer, text) IS 'Sets a queue''s max_depth (1 to 1000) and max_trace_tasks (1 to 10000000); NULL keeps one. Audited queue.updated.';

-- Refuses a child: audit and alarm, in the completing transaction.
CREATE FUNCTION eav.loop_block(p_parent eav.tasks, p_kind text, p_reason text,
    p_detail jsonb, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eav.audit('loop.blocked', 'refused', p_actor, p_parent.trace_id,
        p_parent.id, NULL, jsonb_build_object('reason', p_reason, 'kind', p_kind,
            'depth', p_parent.depth + 1) || coalesce(p_detail, '{}'));
    PERFORM eav.alarm_raise('loop_blocked', 'warning', 'trace:' || p_parent.trace_id,
        format('a task of kind %s under task %s was not created: %s',
               p_kind, p_parent.id, p_reason),
        jsonb_build_object('parent_task_id', p_parent.id, 'reason', p_reason),
        p_actor);
END;
$$;
COMMENT ON FUNCTION eav.loop_block(eav.tasks, text, text, jsonb, text) IS 'Records a refused child task: loop.blocked audited on the parent, loop_blocked alarm about the trace.';

CREATE FUNCTION eav.task_spawn(p_parent_task_id bigint, p_spec jsonb,
    p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    p eav.tasks;
    q eav.queues;
    v_kind text := p_spec->>'kind';
    v_key text := p_spec->>'dedupe_key';
    v_n bigint;
    v_task bigint;
BEGIN
    SELECT * INTO p FROM eav.tasks WHERE id = p_parent_task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'parent task % does not exist', p_parent_task_id
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_spec) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'an enqueue spec must be an object' USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(p_spec) k
    WHERE k NOT IN ('queue', 'kind', 'steps', 'dedupe_key') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown field "%" in an enqueue spec', v_key
            USING ERRCODE = '22023', HINT = 'Known: queue, kind, steps, dedupe_key.';
    END IF;
    v_key := p_spec->>'dedupe_key';
    SELECT * INTO q FROM eav.queues WHERE name = coalesce(p_spec->>'queue', p.queue);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', p_spec->>'queue' USING ERRCODE = '22023';
    END IF;
    IF p.depth + 1 > q.max_depth THEN
        PERFORM eav.loop_block(p, v_kind, 'depth', jsonb_build_object(
            'max_depth', q.max_depth), p_actor);
        RETURN NULL;
    END IF;
    -- One spawn per trace at a time, so the count below is exact.
    PERFORM pg_advisory_xact_lock(hashtextextended('trace:' || p.trace_id, 0));
    SELECT count(*) INTO v_n FROM eav.tasks WHERE trace_id = p.trace_id;
    IF v_n >= q.max_trace_tasks THEN
        PERFORM eav.loop_block(p, v_kind, 'fan_out', jsonb_build_object(
            'max_trace_tasks', q.max_trace_tasks, 'trace_tasks', v_n), p_actor);
        RETURN NULL;
    END IF;
    IF v_key IS NOT NULL AND EXISTS (SELECT 1 FROM eav.trace_keys k
            WHERE k.trace_id = p.trace_id AND k.kind = v_kind
              AND k.dedupe_key = v_key) THEN
        PERFORM eav.loop_block(p, v_kind, 'cycle', jsonb_build_object(
            'dedupe_key', v_key), p_actor);
        RETURN NULL;
    END IF;
    v_task := eav.task_enqueue(q.name, v_kind, p_spec->'steps', p_actor,
        p_parent_task_id => p.id);
    IF v_key IS NOT NULL THEN
        INSERT INTO eav.trace_keys VALUES (p.trace_id, v_kind, v_key, v_task);
    END IF;
    RETURN v_task;
END;
$$;
COMMENT ON FUNCTION eav.task_spawn(bigint, jsonb, text) IS 'Creates a child task of p_parent_task_id from a spec {"queue" (default the parent''s), "kind", "steps", "dedupe_key"}: same trace, depth + 1, unless the queue''s max_depth, its max_trace_tasks for the trace, or a repeated (kind, dedupe_key) in the trace refuses it (eav.loop_block; returns NULL). Raises 22023 for a malformed spec.';

CREATE FUNCTION eav.step_spawn_children() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('worker:%s/%s/%s', NEW.owner_node,
        NEW.owner_incarnation, NEW.owner_pid);
    v_specs jsonb := NEW.result->'enqueue';
    v_spec jsonb;
    v_task bigint;
BEGIN
    -- A result replayed from another step's recorded outcome (same
    -- client key) already made its children: making them again would
    -- repeat exactly what the key is there to prevent.
    IF EXISTS (SELECT 1 FROM eav.idempotency_outcomes o
               WHERE o.tool = NEW.tool AND o.idempotency_key = NEW.idempotency_key
                 AND o.step_id <> NEW.id) THEN
        RETURN NULL;
    END IF;
    IF jsonb_array_length(v_specs) > 100 THEN
        PERFORM eav.audit('task.spawn_refused', 'refused', v_actor, NEW.trace_id,
            NEW.task_id, NEW.id, jsonb_build_object('error',
                format('a result may enqueue at most 100 tasks, not %s',
                       jsonb_array_length(v_specs))));
        RETURN NULL;
    END IF;
    FOR v_spec IN SELECT e FROM jsonb_array_elements(v_specs) e LOOP
        BEGIN
            v_task := eav.task_spawn(NEW.task_id, v_spec, v_actor);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation
                       OR program_limit_exceeded OR invalid_parameter_value THEN
            PERFORM eav.audit('task.spawn_refused', 'refused', v_actor,
                NEW.trace_id, NEW.task_id, NEW.id,
                jsonb_build_object('error', SQLERRM));
        END;
    END LOOP;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.step_spawn_children() IS 'Trigger: a step that succeeded with "enqueue": [spec, ...] in its result creates its child tasks (eav.task_spawn), unless the result is another step''s recorded outcome replayed; a malformed spec is audited task.spawn_refused and skipped.';

CREATE TRIGGER steps_spawn_children AFTER UPDATE OF state ON eav.steps
    FOR EACH ROW
    WHEN (NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
          AND jsonb_typeof(NEW.result->'enqueue') = 'array')
    EXECUTE FUNCTION eav.step_spawn_children();
