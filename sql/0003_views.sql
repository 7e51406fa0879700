-- 0003_views: read-only projections for people in psql.

CREATE VIEW eav.proj_active_tasks AS
SELECT t.id AS task_id,
       t.queue,
       t.kind,
       s.ordinal || '/' || t.step_count AS step,
       s.id AS step_id,
       s.tool,
       s.state AS step_state,
       s.attempt || '/' || s.max_attempts AS attempts,
       s.owner_pid AS worker_pid,
       CASE WHEN s.state = 'pending' AND s.run_at > now()
            THEN date_trunc('second', s.run_at - now()) END AS runs_in,
       s.held_reason,
       s.error AS last_error,
       date_trunc('second', now() - t.created_at) AS age,
       t.trace_id
FROM eav.steps s
JOIN eav.tasks t ON t.id = s.task_id
-- Steps run in order: an active task has exactly one step that is
-- pending, running or held (the others are blocked or done), and each of
-- those states has a partial index.
WHERE (s.state = 'pending' OR s.state = 'running' OR s.state = 'held')
  AND t.state = 'active';
COMMENT ON VIEW eav.proj_active_tasks IS 'Active tasks with the step each is at: table eav.proj_active_tasks.';
COMMENT ON COLUMN eav.proj_active_tasks.task_id IS 'Task id.';
COMMENT ON COLUMN eav.proj_active_tasks.queue IS 'Queue.';
COMMENT ON COLUMN eav.proj_active_tasks.kind IS 'Task kind.';
COMMENT ON COLUMN eav.proj_active_tasks.step IS 'Current step / number of steps.';
COMMENT ON COLUMN eav.proj_active_tasks.step_id IS 'Current step id.';
COMMENT ON COLUMN eav.proj_active_tasks.tool IS 'Tool of the current step.';
COMMENT ON COLUMN eav.proj_active_tasks.step_state IS 'pending, running or held.';
COMMENT ON COLUMN eav.proj_active_tasks.attempts IS 'Attempts started / allowed.';
COMMENT ON COLUMN eav.proj_active_tasks.worker_pid IS 'Worker of the current or last claim.';
COMMENT ON COLUMN eav.proj_active_tasks.runs_in IS 'Time left of a retry back-off.';
COMMENT ON COLUMN eav.proj_active_tasks.held_reason IS 'Why the step is held.';
COMMENT ON COLUMN eav.proj_active_tasks.last_error IS 'Last error of the step.';
COMMENT ON COLUMN eav.proj_active_tasks.age IS 'Time since the task was enqueued.';
COMMENT ON COLUMN eav.proj_active_tasks.trace_id IS 'Trace id.';

CREATE VIEW eav.proj_recent_audit AS
SELECT id, at, type, outcome, actor, task_id, step_id, payload
FROM eav.audit_events
ORDER BY id DESC
LIMIT 200;
COMMENT ON VIEW eav.proj_recent_audit IS 'The 200 most recent audit events, newest first.';
COMMENT ON COLUMN eav.proj_recent_audit.id IS 'Event id.';
COMMENT ON COLUMN eav.proj_recent_audit.at IS 'When it was written.';
COMMENT ON COLUMN eav.proj_recent_audit.type IS 'Event type.';
COMMENT ON COLUMN eav.proj_recent_audit.outcome IS 'success, failure, unknown or refused.';
COMMENT ON COLUMN eav.proj_recent_audit.actor IS 'Who made the transition.';
COMMENT ON COLUMN eav.proj_recent_audit.task_id IS 'Task concerned.';
COMMENT ON COLUMN eav.proj_recent_audit.step_id IS 'Step concerned.';
COMMENT ON COLUMN eav.proj_recent_audit.payload IS 'Details.';

CREATE VIEW eav.proj_queues AS
SELECT q.name AS queue,
       count(*) FILTER (WHERE s.state = 'pending' AND s.run_at <= now()) AS ready,
       count(*) FILTER (WHERE s.state = 'pending' AND s.run_at > now()) AS scheduled,
       count(*) FILTER (WHERE s.state = 'running') AS running,
       count(*) FILTER (WHERE s.state = 'held') AS held,
       date_trunc('second', now() - min(s.run_at) FILTER (
           WHERE s.state = 'pending' AND s.run_at <= now())) AS oldest_ready
FROM eav.queues q
LEFT JOIN eav.steps s
       ON s.queue = q.name AND s.state IN ('pending', 'running', 'held')
GROUP BY q.name;
COMMENT ON VIEW eav.proj_queues IS 'Queue depths: steps ready, scheduled (back-off), running and held per queue.';
COMMENT ON COLUMN eav.proj_queues.queue IS 'Queue name.';
COMMENT ON COLUMN eav.proj_queues.ready IS 'Pending steps that may be claimed now.';
COMMENT ON COLUMN eav.proj_queues.scheduled IS 'Pending steps waiting for their run_at.';
COMMENT ON COLUMN eav.proj_queues.running IS 'Steps claimed by a worker.';
COMMENT ON COLUMN eav.proj_queues.held IS 'Steps held for an operator.';
COMMENT ON COLUMN eav.proj_queues.oldest_ready IS 'How long the oldest ready step has waited.';

CREATE VIEW eav.proj_processes AS
SELECT p.node, p.kind, p.slot, p.pid, p.state, p.restarts,
       date_trunc('second', now() - p.started_at) AS uptime,
       p.last_exit, p.incarnation
FROM eav.processes p
JOIN eav.nodes n ON n.name = p.node AND n.incarnation = p.incarnation
ORDER BY p.node, p.kind, p.slot;
COMMENT ON VIEW eav.proj_processes IS 'Children of each node''s current eavd.';
COMMENT ON COLUMN eav.proj_processes.node IS 'Node.';
COMMENT ON COLUMN eav.proj_processes.kind IS 'worker, producer or api.';
COMMENT ON COLUMN eav.proj_processes.slot IS 'Slot within the kind.';
COMMENT ON COLUMN eav.proj_processes.pid IS 'Process id.';
COMMENT ON COLUMN eav.proj_processes.state IS 'starting, up, stopping, backoff, down or failed.';
COMMENT ON COLUMN eav.proj_processes.restarts IS 'Restarts of the slot.';
COMMENT ON COLUMN eav.proj_processes.uptime IS 'Time since the child was spawned.';
COMMENT ON COLUMN eav.proj_processes.last_exit IS 'How the previous child of the slot ended.';
COMMENT ON COLUMN eav.proj_processes.incarnation IS 'Incarnation of its eavd.';
