-- 0028_claim_plans: the claim planned once per session, not once per call.
--
-- eav.claim was one statement: the pick (FOR UPDATE SKIP LOCKED) and the
-- update, gates, budgets and audit of what it picked, in thirteen CTEs.
-- PL/pgSQL keeps a generic plan for a statement only when it looks no
-- costlier than the custom ones, and the pick's generic plan cannot: its
-- tests on the kill switch scopes and queues (p_queues IS NULL OR ...)
-- multiply to an estimate of one row, so a generic plan sorts a bitmap
-- scan of every pending step (47 ms with 20,000 pending, against 0.1 ms
-- for the ordered index scan).  So the whole statement was planned again
-- at every claim: in a 20,000-step drain, 1.58 s of planning against
-- 2.38 s of execution (pg_stat_statements, track_planning).
--
-- Now the pick is a statement of its own, planned at each call (0.05 ms:
-- one table, one index), and the rest (eav.claim_take) takes the picked
-- ids and keeps one generic plan per session, forced because its custom
-- plans, which fold away the budget and owner branches, would otherwise
-- keep looking cheaper.  What a claim does is unchanged.

CREATE FUNCTION eav.claim_take(p_ids bigint[], p_node text,
    p_incarnation bigint, p_pid integer, v_actor text, v_owned boolean,
    v_budget boolean)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer,
    kind text, config text, gate text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        UPDATE eav.steps s
        SET state = 'running', claim_epoch = s.claim_epoch + 1,
            attempt = s.attempt + 1, owner_node = p_node,
            owner_incarnation = p_incarnation, owner_pid = p_pid,
            claimed_at = now(), updated_at = now()
        FROM unnest(p_ids) AS one(id) WHERE s.id = one.id
        RETURNING s.id, s.task_id, s.claim_epoch, s.attempt, s.tool, s.input,
                  s.idempotency_key, s.trace_id, s.queue, s.resource_key
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
    ), gt AS MATERIALIZED (
        -- The gates other than the budget's: a step with one is not
        -- called, so it is no retry and spends no budget (0025).
        SELECT c.id,
               -- Owned by another queue: refused before anything else.
               CASE WHEN v_owned AND c.resource_key IS NOT NULL
                         AND (eav.resource_owner_match(c.resource_key)).queue
                             <> c.queue
                    THEN 'conflict' END AS own_gate,
               CASE
                   WHEN eav.key_is_derived(c.idempotency_key, c.id) THEN NULL
                   WHEN k.step_id <> c.id
                        AND k.fingerprint <> eav.input_fingerprint(c.tool, c.input)
                       THEN 'collision'
                   WHEN EXISTS (SELECT 1 FROM eav.idempotency_outcomes o
                                WHERE o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key)
                       THEN 'replay'
                   -- Another step with this key is running, or pending
                   -- ahead of it: one call per key at a time, and the
                   -- later step then finds its outcome.
                   WHEN EXISTS (SELECT 1 FROM eav.steps o
                                WHERE NOT eav.key_is_derived(o.idempotency_key, o.id)
                                  AND o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key
                                  AND o.id <> c.id
                                  -- Only steps that will move: a held one
                                  -- waits for a person and a blocked one
                                  -- for its task, maybe forever, and a
                                  -- step must not sit pending behind them.
                                  AND (o.state = 'running'
                                       OR o.state = 'pending' AND o.id < c.id))
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
               END AS tool_gate
        FROM c LEFT JOIN eav.tools t ON t.name = c.tool
        LEFT JOIN eav.idempotency_keys k
               ON NOT eav.key_is_derived(c.idempotency_key, c.id)
              AND k.tool = c.tool AND k.idempotency_key = c.idempotency_key
    ), rq AS (
        -- Retries in this claim that will call the tool, in line per
        -- budget that covers them.
        SELECT c.id, b.scope, b.target, row_number() OVER (
                   PARTITION BY b.scope, b.target ORDER BY c.id) AS place
        FROM c JOIN gt ON gt.id = c.id
          AND gt.own_gate IS NULL AND gt.key_gate IS NULL
          AND gt.tool_gate IS NULL
        JOIN eav.retry_budgets b
          ON v_budget AND c.attempt > 1
         AND (b.scope = 'queue' AND b.target = c.queue
              OR b.scope = 'tool' AND b.target = c.tool)
    ), bl AS MATERIALIZED (
        -- The budget rows, locked in (scope, target) order before the
        -- update below touches any, whatever plan it gets: two claims
        -- never wait for each other's rows in opposite orders (0025).
        SELECT b.scope, b.target FROM eav.retry_budgets b
        WHERE (b.scope, b.target) IN (SELECT rq.scope, rq.target FROM rq)
        ORDER BY b.scope, b.target
        FOR UPDATE
    ), bu AS (
        UPDATE eav.retry_budgets b
        SET window_start = CASE WHEN b.window_start > now() - interval '1 minute'
                                THEN b.window_start ELSE now() END,
            used = CASE WHEN b.window_start > now() - interval '1 minute'
                        THEN b.used ELSE 0 END + x.n
        FROM (SELECT rq.scope, rq.target, count(*) AS n FROM rq
              JOIN (SELECT count(*) FROM bl) l ON true
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
    ), g AS (
        SELECT c.*, t.config->>'builtin' AS builtin, t.timeout_ms, t.kind,
               CASE WHEN t.kind <> 'builtin' THEN t.config::text END AS config,
               gt.own_gate, gt.key_gate, gt.tool_gate,
               'budget:' || over.wait_ms AS budget_gate
        FROM c JOIN gt ON gt.id = c.id
        LEFT JOIN eav.tools t ON t.name = c.tool
        LEFT JOIN over ON over.id = c.id
    )
    SELECT g.id, g.task_id, g.claim_epoch, g.attempt, g.tool, g.builtin,
           g.input::text, g.idempotency_key, g.trace_id, g.timeout_ms, g.kind,
           g.config, coalesce(g.own_gate, g.key_gate, g.tool_gate,
           g.budget_gate)
    FROM g ORDER BY g.id;
END;
$$;
COMMENT ON FUNCTION eav.claim_take(bigint[], text, bigint, integer, text, boolean, boolean) IS 'The second half of eav.claim: marks the picked steps (p_ids, locked by the caller) running, audits step.claimed, and computes each one''s gate (ownership, client key, tool health, retry budget). Its statement keeps one generic plan (0028).';

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
    v_owned boolean := EXISTS (SELECT 1 FROM eav.resource_owners);
    v_ids bigint[];
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
    WITH picked AS (
        SELECT s.id, s.run_at, s.resource_key FROM eav.steps s
        WHERE s.state = 'pending' AND s.run_at <= now()
          AND (p_queues IS NULL OR s.queue = ANY (p_queues))
          AND (v_kq IS NULL OR s.queue <> ALL (v_kq))
          AND (v_kt IS NULL OR s.tool <> ALL (v_kt))
          -- One running step per resource key (see the top of 0018).
          -- The costliest test, so the planner puts it last.
          AND (s.resource_key IS NULL OR eav.resource_take(s.resource_key))
        ORDER BY s.run_at, s.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    -- The key's lock is re-entrant: of two steps of one key in this
    -- batch, only the first is claimed; the other stays pending.
    SELECT array_agg(p.id ORDER BY p.id) INTO v_ids FROM picked p
        WHERE p.resource_key IS NULL
           OR NOT EXISTS (SELECT 1 FROM picked q
                          WHERE q.resource_key = p.resource_key
                            AND (q.run_at, q.id) < (p.run_at, p.id));
    IF v_ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM eav.claim_take(v_ids, p_node, p_incarnation,
            p_pid, v_actor, v_owned, v_budget);
    END IF;
    IF v_budget THEN
        PERFORM eav.retry_storm_raise(v_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Nothing of a kill switch''s scope is claimed (eav.kill_switch_engage). Each row carries what the worker needs to call the tool (builtin name, or kind and config) and its gate: NULL (call), defer (rate limited or unavailable: eav.step_defer), fail (unavailable, fail fast), replay (recorded outcome: eav.step_replay), collision (eav.step_collision), wait (another step with the same client key is running or comes first: deferred) budget:<ms> (a retry past its queue''s or tool''s retry budget: deferred ms) or conflict (the step''s resource key is owned by another queue: eav.step_authority_conflict). Only a retry (attempt > 1) that no other gate holds back counts against the retry budgets, whose rows are locked in (scope, target) order. A step whose resource key has a running step, or an earlier step of the same key in the batch, is not claimed. Refused (EA002) for a superseded incarnation.';
