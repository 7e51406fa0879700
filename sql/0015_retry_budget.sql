-- 0015_retry_budget: a cap on retries per minute, per queue or per tool,
-- beyond the per-step max_attempts: one failing integration must not turn
-- into a retry storm against it.
--
-- Enforced at the claim, where every kind of retry (a retryable failure,
-- an unknown outcome sent back to pending) becomes a call: a claimed step
-- whose attempt is not its first counts against each budget that covers
-- it, in a one-minute window.  Past the budget, the claim's gate
-- "budget:<ms>" makes the worker give the step back unspent (attempt
-- refunded, as a rate limit does), to run ms later: in the first window
-- where its place in line fits, so a storm is spread, not re-claimed
-- all at once every minute.  A budget's first overflow in a window raises
-- retry_storm (audited retry.storm); eavd's sweep resolves it once a
-- whole window has passed within budget.

CREATE TABLE eav.retry_budgets (
    scope         text NOT NULL CHECK (scope IN ('queue', 'tool')),
    target        text NOT NULL,
    per_min       integer NOT NULL CHECK (per_min BETWEEN 1 AND 1000000),
    window_start  timestamptz NOT NULL DEFAULT '-infinity',
    used          integer NOT NULL DEFAULT 0,
    storm_window  timestamptz,
    set_by        text NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, target)
);
COMMENT ON TABLE eav.retry_budgets IS 'Retries allowed per minute for a queue or a tool (eav.retry_budget_set). Counted at the claim; past it, retries are deferred, not spent, and retry_storm is raised.';
COMMENT ON COLUMN eav.retry_budgets.scope IS 'queue or tool.';
COMMENT ON COLUMN eav.retry_budgets.target IS 'The queue or tool.';
COMMENT ON COLUMN eav.retry_budgets.per_min IS 'Retries (claims of a step past its first attempt) allowed per one-minute window.';
COMMENT ON COLUMN eav.retry_budgets.window_start IS 'Start of the current window.';
COMMENT ON COLUMN eav.retry_budgets.used IS 'Retries claimed in the current window, deferred ones included.';
COMMENT ON COLUMN eav.retry_budgets.storm_window IS 'Window in which retry_storm was last raised.';
COMMENT ON COLUMN eav.retry_budgets.set_by IS 'Actor of the last change.';
COMMENT ON COLUMN eav.retry_budgets.set_at IS 'When it last changed.';

CREATE FUNCTION eav.retry_budget_set(p_scope text, p_target text,
    p_per_min integer, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
BEGIN
    IF p_scope IS NULL OR p_scope NOT IN ('queue', 'tool') THEN
        RAISE EXCEPTION 'retry budget scope must be queue or tool'
            USING ERRCODE = '22023';
    END IF;
    IF p_scope = 'queue' AND NOT EXISTS (SELECT 1 FROM eav.queues
                                         WHERE name = p_target)
       OR p_scope = 'tool' AND NOT EXISTS (SELECT 1 FROM eav.tools
                                           WHERE name = p_target) THEN
        RAISE EXCEPTION 'no % "%"', p_scope, p_target USING ERRCODE = '22023';
    END IF;
    IF p_per_min IS NOT NULL AND p_per_min NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'retries per minute must be between 1 and 1000000, not %',
            p_per_min USING ERRCODE = '22023',
            HINT = 'NULL removes the budget.';
    END IF;
    IF p_per_min IS NULL THEN
        DELETE FROM eav.retry_budgets WHERE scope = p_scope AND target = p_target;
        IF NOT FOUND THEN
            RAISE EXCEPTION '% "%" has no retry budget', p_scope, p_target
                USING ERRCODE = 'EA003';
        END IF;
        PERFORM eav.alarm_resolve_subject('retry_storm', p_scope || ':' || p_target,
            v_actor);
    ELSE
        INSERT INTO eav.retry_budgets (scope, target, per_min, set_by)
        VALUES (p_scope, p_target, p_per_min, v_actor)
        ON CONFLICT (scope, target) DO UPDATE
            SET per_min = EXCLUDED.per_min, set_by = EXCLUDED.set_by,
                set_at = now();
    END IF;
    PERFORM eav.audit('retry_budget.set', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('scope', p_scope, 'target', p_target,
                           'per_min', p_per_min));
END;
$$;
COMMENT ON FUNCTION eav.retry_budget_set(text, text, integer, text) IS 'Sets (1 to 1000000 retries per minute) or, with NULL, removes the retry budget of a queue or a tool; audited retry_budget.set.';

-- After a claim that overflowed a budget: the storm alarm, once per window.
CREATE FUNCTION eav.retry_storm_raise(p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b eav.retry_budgets;
BEGIN
    FOR b IN
        UPDATE eav.retry_budgets r SET storm_window = r.window_start
        WHERE r.used > r.per_min
          AND r.storm_window IS DISTINCT FROM r.window_start
        RETURNING r.*
    LOOP
        PERFORM eav.audit('retry.storm', 'refused', p_actor, NULL, NULL, NULL,
            jsonb_build_object('scope', b.scope, 'target', b.target,
                'per_min', b.per_min, 'window_start', b.window_start));
        PERFORM eav.alarm_raise('retry_storm', 'warning', b.scope || ':' || b.target,
            format('more than %s retries a minute on %s %s: retries deferred',
                   b.per_min, b.scope, b.target),
            jsonb_build_object('per_min', b.per_min), p_actor);
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.retry_storm_raise(text) IS 'Raises retry_storm (audited retry.storm) for each budget overflowed in its current window, once per window.';

-- eavd's sweep: a storm is over once a whole window passed within budget.
CREATE FUNCTION eav.retry_storm_sweep(p_actor text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_n integer := 0;
BEGIN
    FOR r IN
        SELECT a.subject FROM eav.alarms a
        LEFT JOIN eav.retry_budgets b ON b.scope || ':' || b.target = a.subject
        WHERE a.type = 'retry_storm' AND a.state <> 'resolved'
          AND (b.scope IS NULL
               OR b.window_start < now() - interval '2 minutes'
               OR b.window_start > b.storm_window AND b.used <= b.per_min
                  AND b.window_start < now() - interval '1 minute')
    LOOP
        PERFORM eav.alarm_resolve_subject('retry_storm', r.subject, p_actor);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.retry_storm_sweep(text) IS 'Resolves retry_storm alarms whose budget has had a whole window within its limit (or was removed). Returns how many.';

-- Claim -------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION eav.claim(p_node text, p_incarnation bigint, p_pid integer,
    p_limit integer, p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer,
    kind text, config text, gate text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_actor text := format('worker:%s/%s/%s', p_node, p_incarnation, p_pid);
    v_all boolean;
    v_kq text[];
    v_kt text[];
    v_budget boolean := EXISTS (SELECT 1 FROM eav.retry_budgets);
BEGIN
    PERFORM 1 FROM eav.nodes n WHERE n.name = p_node AND n.incarnation = p_incarnation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'incarnation % is not the current incarnation of node "%"',
            p_incarnation, p_node USING ERRCODE = 'EA002';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'claim limit must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    -- Before reading the switches (see the top of this file).
    PERFORM pg_advisory_xact_lock_shared(eav.kill_switch_lock_id());
    SELECT * INTO v_all, v_kq, v_kt FROM eav.kill_switch_scopes();
    IF v_all THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT s.id FROM eav.steps s
        WHERE s.state = 'pending' AND s.run_at <= now()
          AND (p_queues IS NULL OR s.queue = ANY (p_queues))
          AND (v_kq IS NULL OR s.queue <> ALL (v_kq))
          AND (v_kt IS NULL OR s.tool <> ALL (v_kt))
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
                  s.idempotency_key, s.trace_id, s.queue
    ), rq AS (
        -- Retries in this claim, in line per budget that covers them.
        SELECT c.id, b.scope, b.target, row_number() OVER (
                   PARTITION BY b.scope, b.target ORDER BY c.id) AS place
        FROM c JOIN eav.retry_budgets b
          ON v_budget AND c.attempt > 1
         AND (b.scope = 'queue' AND b.target = c.queue
              OR b.scope = 'tool' AND b.target = c.tool)
    ), bu AS (
        UPDATE eav.retry_budgets b
        SET window_start = CASE WHEN b.window_start > now() - interval '1 minute'
                                THEN b.window_start ELSE now() END,
            used = CASE WHEN b.window_start > now() - interval '1 minute'
                        THEN b.used ELSE 0 END + x.n
        FROM (SELECT rq.scope, rq.target, count(*) AS n FROM rq
              GROUP BY rq.scope, rq.target) x
        WHERE b.scope = x.scope AND b.target = x.target
        RETURNING b.scope, b.target, b.per_min, b.used - x.n AS before,
                  b.window_start
    ), over AS (
        -- Past the budget: wait for the window this place fits in.
        SELECT rq.id, max(ceil(extract(epoch FROM bu.window_start
                   + make_interval(mins => ((bu.before + rq.place - 1)
                                            / bu.per_min)::integer)
                   - now()) * 1000) + (random() * 1000)::integer)::bigint AS wait_ms
        FROM rq JOIN bu ON bu.scope = rq.scope AND bu.target = rq.target
        WHERE bu.before + rq.place > bu.per_min
        GROUP BY rq.id
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
                   -- Another step with this key is running, or comes
                   -- first and is not finished: one call per key at a
                   -- time, and the later step then finds its outcome.
                   WHEN EXISTS (SELECT 1 FROM eav.steps o
                                WHERE NOT eav.key_is_derived(o.idempotency_key, o.id)
                                  AND o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key
                                  AND o.id <> c.id
                                  AND o.state IN ('blocked', 'pending',
                                                  'running', 'held')
                                  AND (o.state = 'running' OR o.id < c.id))
                       THEN 'wait'
               END AS key_gate,
               CASE
                   WHEN t.rate_limit_resets_at > now() THEN 'defer'
                   WHEN t.health IS DISTINCT FROM 'unavailable' THEN NULL
                   WHEN c.tool IN (SELECT name FROM probe)
                        AND row_number() OVER (PARTITION BY c.tool ORDER BY c.id) = 1
                       THEN NULL
                   WHEN t.config->'health'->>'when_unavailable' = 'fail' THEN 'fail'
                   ELSE 'defer'
               END AS tool_gate,
               'budget:' || over.wait_ms AS budget_gate
        FROM c LEFT JOIN eav.tools t ON t.name = c.tool
        LEFT JOIN over ON over.id = c.id
        LEFT JOIN eav.idempotency_keys k
               ON NOT eav.key_is_derived(c.idempotency_key, c.id)
              AND k.tool = c.tool AND k.idempotency_key = c.idempotency_key
    )
    SELECT g.id, g.task_id, g.claim_epoch, g.attempt, g.tool, g.builtin,
           g.input::text, g.idempotency_key, g.trace_id, g.timeout_ms, g.kind,
           g.config, coalesce(g.key_gate, g.tool_gate, g.budget_gate)
    FROM g ORDER BY g.id;
    IF v_budget THEN
        PERFORM eav.retry_storm_raise(v_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Nothing of a kill switch''s scope is claimed (eav.kill_switch_engage). Each row carries what the worker needs to call the tool (builtin name, or kind and config) and its gate: NULL (call), defer (rate limited or unavailable: eav.step_defer), fail (unavailable, fail fast), replay (recorded outcome: eav.step_replay), collision (eav.step_collision), wait (another step with the same client key is running or comes first: deferred) or budget:<ms> (a retry past its queue''s or tool''s retry budget: deferred ms). Refused (EA002) for a superseded incarnation.';
