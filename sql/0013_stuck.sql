-- 0013_stuck: the stuck-task alarm.  eavd's periodic sweep calls
-- eav.stuck_sweep: a step running longer than its queue's stuck_after_ms
-- raises task_stuck about that step; runnable steps of a queue waiting
-- longer than that raise queue_stalled about the queue (one alarm, not
-- one per task: a stalled backlog can hold a million).  Each clears as
-- soon as what it names moves.

ALTER TABLE eav.queues ADD COLUMN stuck_after_ms integer NOT NULL DEFAULT 600000
    CHECK (stuck_after_ms BETWEEN 1000 AND 604800000);
COMMENT ON COLUMN eav.queues.stuck_after_ms IS 'A step running, or runnable and not claimed, longer than this raises an alarm (task_stuck, queue_stalled); eav.queue_set_stuck_after.';

CREATE FUNCTION eav.queue_set_stuck_after(p_name text, p_ms integer,
    p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_old integer;
BEGIN
    IF p_ms IS NULL OR p_ms NOT BETWEEN 1000 AND 604800000 THEN
        RAISE EXCEPTION 'stuck_after_ms must be between 1000 and 604800000, not %',
            coalesce(p_ms::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    SELECT stuck_after_ms INTO v_old FROM eav.queues WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no queue "%"', p_name USING ERRCODE = '22023';
    END IF;
    UPDATE eav.queues SET stuck_after_ms = p_ms WHERE name = p_name;
    PERFORM eav.audit('queue.updated', 'success',
        coalesce(p_actor, eav.default_actor()), NULL, NULL, NULL,
        jsonb_build_object('queue', p_name, 'stuck_after_ms', p_ms,
                           'was', v_old));
END;
$$;
COMMENT ON FUNCTION eav.queue_set_stuck_after(text, integer, text) IS 'Sets a queue''s stuck_after_ms (1000 to 604800000; audited queue.updated).';

-- Raises the alarms of what is stuck now and resolves those of what has
-- moved.  Cheap on purpose, since it runs every sweep: running steps come
-- from steps_running_idx, and each queue is asked for its one oldest
-- runnable step through steps_claim_idx.
CREATE FUNCTION eav.stuck_sweep(p_actor text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_raised integer := 0;
BEGIN
    FOR r IN
        SELECT s.id, s.task_id, s.trace_id, s.queue, s.tool, s.claim_epoch,
               s.claimed_at, q.stuck_after_ms
        FROM eav.steps s JOIN eav.queues q ON q.name = s.queue
        WHERE s.state = 'running' AND s.owner_pid IS NOT NULL
          AND s.claimed_at < now() - make_interval(secs => q.stuck_after_ms / 1000.0)
          AND NOT EXISTS (SELECT 1 FROM eav.alarms a WHERE a.type = 'task_stuck'
                          AND a.subject = 'step:' || s.id AND a.state <> 'resolved'
                          AND a.details->>'epoch' = s.claim_epoch::text)
        ORDER BY s.claimed_at LIMIT 100
    LOOP
        PERFORM eav.audit('task.stuck', 'failure', p_actor, r.trace_id, r.task_id,
            r.id, jsonb_build_object('epoch', r.claim_epoch, 'queue', r.queue,
                'tool', r.tool, 'running_since', r.claimed_at,
                'stuck_after_ms', r.stuck_after_ms));
        PERFORM eav.alarm_raise('task_stuck', 'warning', 'step:' || r.id,
            format('step %s (task %s, tool %s) has been running since %s',
                   r.id, r.task_id, r.tool, r.claimed_at),
            jsonb_build_object('task_id', r.task_id, 'epoch', r.claim_epoch),
            p_actor);
        v_raised := v_raised + 1;
    END LOOP;
    FOR r IN
        SELECT q.name, o.id, o.task_id, o.trace_id, o.run_at, q.stuck_after_ms
        FROM eav.queues q
        CROSS JOIN LATERAL (
            SELECT s.id, s.task_id, s.trace_id, s.run_at FROM eav.steps s
            WHERE s.state = 'pending' AND s.queue = q.name
              AND s.run_at < now() - make_interval(secs => q.stuck_after_ms / 1000.0)
              AND NOT EXISTS (SELECT 1 FROM eav.kill_switches k WHERE k.engaged
                              AND k.scope = 'tool' AND k.target = s.tool)
            ORDER BY s.run_at, s.id LIMIT 1) o
        WHERE NOT EXISTS (SELECT 1 FROM eav.alarms a WHERE a.type = 'queue_stalled'
                          AND a.subject = 'queue:' || q.name
                          AND a.state <> 'resolved')
          -- Stopped on purpose: the kill switch has its own alarm.
          AND NOT EXISTS (SELECT 1 FROM eav.kill_switches k WHERE k.engaged
                          AND (k.scope = 'global'
                               OR k.scope = 'queue' AND k.target = q.name))
    LOOP
        PERFORM eav.audit('task.stuck', 'failure', p_actor, r.trace_id, r.task_id,
            r.id, jsonb_build_object('queue', r.name, 'runnable_since', r.run_at,
                'stuck_after_ms', r.stuck_after_ms));
        PERFORM eav.alarm_raise('queue_stalled', 'warning', 'queue:' || r.name,
            format('queue %s has steps runnable since %s and not claimed '
                   '(oldest: step %s of task %s)', r.name, r.run_at, r.id, r.task_id),
            jsonb_build_object('step_id', r.id, 'task_id', r.task_id), p_actor);
        v_raised := v_raised + 1;
    END LOOP;
    -- What moved: the step is no longer running that epoch; the queue has
    -- no runnable step older than its threshold.
    FOR r IN
        SELECT a.type, a.subject FROM eav.alarms a
        WHERE a.state <> 'resolved' AND (
            -- Compared as text: alarm_raise takes any subject and details,
            -- and one malformed alarm must not stop the sweep.
            (a.type = 'task_stuck' AND NOT EXISTS (
                SELECT 1 FROM eav.steps s
                WHERE 'step:' || s.id = a.subject AND s.state = 'running'
                  AND s.claim_epoch::text = a.details->>'epoch'
                  AND s.id = CASE WHEN a.subject ~ '^step:[0-9]{1,18}$'
                                  THEN substr(a.subject, 6)::bigint END))
         OR (a.type = 'queue_stalled' AND NOT EXISTS (
                SELECT 1 FROM eav.queues q JOIN eav.steps s
                  ON s.state = 'pending' AND s.queue = q.name
                 AND s.run_at < now() - make_interval(secs => q.stuck_after_ms / 1000.0)
                WHERE 'queue:' || q.name = a.subject)))
    LOOP
        PERFORM eav.alarm_resolve_subject(r.type, r.subject, p_actor);
    END LOOP;
    RETURN v_raised;
END;
$$;
COMMENT ON FUNCTION eav.stuck_sweep(text) IS 'Called by eavd''s sweep: raises task_stuck (step running longer than its queue''s stuck_after_ms; audited task.stuck) and queue_stalled (a runnable step of the queue waited longer than that), and resolves each such alarm once what it names has moved. Returns how many it raised.';
