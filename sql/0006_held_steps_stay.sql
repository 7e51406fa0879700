-- 0006_held_steps_stay: a held step records an effect nobody knows
-- happened; only an operator's decision may end that.  Cancelling its
-- task no longer cancels it (and resolves its alarm), and a held step of a
-- task that is not active can be resolved as succeeded or failed, not
-- retried.  Before, cancel then task_retry re-ran a non-idempotent call
-- after an unknown outcome by itself (INV-4, found by check_invariants).

CREATE OR REPLACE FUNCTION eav.task_cancel(p_task_id bigint, p_actor text DEFAULT NULL,
    p_reason text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    t eav.tasks;
    v_n integer;
    v_running bigint;
BEGIN
    SELECT * INTO t FROM eav.tasks WHERE id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'task % does not exist', p_task_id USING ERRCODE = 'EA004';
    END IF;
    IF t.state <> 'active' THEN
        RAISE EXCEPTION 'task % is already %', p_task_id, t.state USING ERRCODE = 'EA003';
    END IF;
    UPDATE eav.tasks SET state = 'cancelled', finished_at = now() WHERE id = t.id;
    WITH c AS (
        UPDATE eav.steps SET state = 'cancelled', finished_at = now(),
            updated_at = now()
        WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
          AND state IN ('blocked', 'pending')
        RETURNING id
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'step.cancelled', 'success', v_actor, t.trace_id, t.id, c.id,
               jsonb_build_object('reason', p_reason)
        FROM c
    )
    SELECT count(*) INTO v_n FROM c;
    SELECT id INTO v_running FROM eav.steps
    WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
      AND state = 'running';
    PERFORM eav.audit('task.cancelled', 'success', v_actor, t.trace_id, t.id, NULL,
        jsonb_build_object('reason', p_reason, 'steps_cancelled', v_n,
                           'running_step', v_running));
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.task_cancel(bigint, text, text) IS 'Cancels an active task: its blocked and pending steps are cancelled at once; a running step finishes its attempt but nothing runs after it; a held step stays held, with its alarm, until an operator resolves it. Audited task.cancelled and step.cancelled.';

CREATE OR REPLACE FUNCTION eav.step_resolve(p_step_id bigint, p_action text,
    p_actor text DEFAULT NULL, p_note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    s eav.steps;
    v_task_state text;
BEGIN
    IF p_action IS NULL OR p_action NOT IN ('retry', 'succeeded', 'failed') THEN
        RAISE EXCEPTION 'unknown action "%"', p_action
            USING ERRCODE = '22023', HINT = 'Use retry, succeeded or failed.';
    END IF;
    -- Task before step, the order task_cancel locks in.
    SELECT t.state INTO v_task_state FROM eav.tasks t
    WHERE t.id = (SELECT task_id FROM eav.steps WHERE id = p_step_id)
    FOR SHARE;
    SELECT * INTO s FROM eav.steps WHERE id = p_step_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step % does not exist', p_step_id USING ERRCODE = 'EA004';
    END IF;
    IF s.state <> 'held' THEN
        RAISE EXCEPTION 'step % is %, not held', p_step_id, s.state
            USING ERRCODE = 'EA003', HINT = 'Only a held step can be resolved.';
    END IF;

    IF p_action = 'retry' AND v_task_state <> 'active' THEN
        RAISE EXCEPTION 'step % belongs to a % task: it cannot run again', p_step_id,
            v_task_state USING ERRCODE = 'EA003',
            HINT = 'Resolve it as succeeded or failed (did its effect happen?).';
    END IF;
    IF p_action = 'retry' THEN
        UPDATE eav.steps SET state = 'pending', run_at = now(), held_reason = NULL,
            max_attempts = greatest(max_attempts, attempt + 1), updated_at = now()
        WHERE id = s.id;
        PERFORM pg_notify('eav_steps', '');
    ELSIF p_action = 'succeeded' THEN
        UPDATE eav.steps SET state = 'succeeded', held_reason = NULL,
            result = jsonb_build_object('resolved_by', v_actor, 'note', p_note),
            finished_at = now(), updated_at = now()
        WHERE id = s.id;
    ELSE
        UPDATE eav.steps SET state = 'failed', held_reason = NULL,
            error = coalesce(p_note, 'resolved as failed by ' || v_actor),
            finished_at = now(), updated_at = now()
        WHERE id = s.id;
    END IF;
    PERFORM eav.audit('step.resolved', 'success', v_actor, s.trace_id, s.task_id,
        s.id, jsonb_build_object('action', p_action, 'note', p_note,
                                 'held_reason', s.held_reason, 'epoch', s.claim_epoch));
    IF p_action <> 'retry' THEN
        PERFORM eav.advance_tasks(ARRAY[s.id], v_actor);
    END IF;
    PERFORM eav.alarm_resolve_subject('unknown_outcome_held', 'step:' || s.id, v_actor);
    RETURN p_action;
END;
$$;
COMMENT ON FUNCTION eav.step_resolve(bigint, text, text, text) IS 'An operator''s decision about a held step: retry (run it again; only while its task is active), succeeded or failed. Audited step.resolved; resolves the step''s alarm.';
