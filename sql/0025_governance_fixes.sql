-- 0025_governance_fixes: three defects of the governance SQL (issue 7).
--
-- 1. The recursion guard of eav.redaction_leak was the custom setting
--    eav.redaction_busy, which any session may SET: a worker that set it
--    had secrets in its results redacted but no secret_leak alarm and no
--    secret.leak audit row, the very signal the leak is meant to raise.
--    The guard is now a row in eav.redaction_guard for (backend, xact),
--    written and removed by eav.redaction_leak around its raises.  The
--    runtime roles have no privilege on the table (0021), so no session
--    can forge it; a row never outlives its transaction (deleted on the
--    way out, rolled back with it on an error), and it is written only
--    when a finding is reported, never on the hot path.  The setting is
--    no longer read.
--
-- 2. The claim counted every claim of a step past its first attempt
--    against the retry budgets, including those whose gate then sent it
--    back uncalled (wait, conflict, defer, fail, replay, collision):
--    eav.step_defer refunds the attempt, so a real retry held back by a
--    busy client key was counted again at each of its claims and ate
--    the budget of the retries that call.  Now only a claim that will
--    call the tool (no gate but, possibly, the budget's own) counts.  A
--    claim deferred by the budget still takes its place in line (so the
--    deferred are spread over later windows, as 0015 says).
--
-- 3. Lock order.  The claim's UPDATE of eav.retry_budgets locked the
--    rows in whatever order its plan produced them (a scan's physical
--    order moves as rows are updated), so two claims covered by the same
--    queue and tool budgets could lock them in opposite orders: 40P01.
--    They are now locked first, in (scope, target) order, by the
--    materialized CTE bl.  The other locks of the path, and why they
--    cannot close a cycle with these rows:
--      * resource keys (eav.resource_take): try-locks; a claim never
--        waits for one, so it is never a waiting edge of a cycle.
--      * steps: FOR UPDATE SKIP LOCKED at the claim, never waits.
--      * the per-trace advisory lock of eav.task_spawn is taken while a
--        completion applies (before the claim of the same transaction);
--        nothing holding budget rows ever asks for a trace lock (the
--        claim and eav.retry_storm_raise spawn nothing), so every
--        transaction that has both took the trace lock first.
--      * tools rows (eav.tool_health_apply at completion, the claim's
--        probe): a gate that looks at the probe is computed before the
--        budget rows are locked; a probe no gate looked at runs at the
--        end of the statement, after them (not proven safe here).
--    Not fixed here: one completion batch that spawns children in two
--    traces locks them in the order of its steps, not of the traces.

-- 1. Redaction guard ---------------------------------------------------------

CREATE UNLOGGED TABLE eav.redaction_guard (
    pid   integer NOT NULL,
    xact  xid8 NOT NULL,
    PRIMARY KEY (pid, xact)
);
COMMENT ON TABLE eav.redaction_guard IS 'Recursion guard of eav.redaction_leak: a row while it raises the alarm and audit rows of a finding, for its own backend and transaction (0025). Never holds a committed row; no runtime role may write it.';
COMMENT ON COLUMN eav.redaction_guard.pid IS 'Backend (pg_backend_pid()) of the transaction reporting a finding.';
COMMENT ON COLUMN eav.redaction_guard.xact IS 'That transaction (pg_current_xact_id()).';

CREATE OR REPLACE FUNCTION eav.redaction_leak(p_where text, p_findings text[],
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
    -- from inside a raise.  The guard is a row only this function writes
    -- (see the top of 0025), not a setting a session could set.
    IF EXISTS (SELECT 1 FROM eav.redaction_guard
               WHERE pid = pg_backend_pid() AND xact = pg_current_xact_id()) THEN
        RETURN;
    END IF;
    INSERT INTO eav.redaction_guard VALUES (pg_backend_pid(), pg_current_xact_id());
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
    DELETE FROM eav.redaction_guard
    WHERE pid = pg_backend_pid() AND xact = pg_current_xact_id();
END;
$$;
COMMENT ON FUNCTION eav.redaction_leak(text, text[], uuid, bigint, bigint) IS 'For each finding of a redacted row: a critical secret_leak alarm whose subject is p_where followed by the field path (e.g. steps.error, audit:step.failed:payload.error) and an audit event secret.leak naming the field and the rule, never the value. Findings of the rows it writes itself are redacted but not reported again (guard: eav.redaction_guard, which no session can forge; the setting eav.redaction_busy is ignored since 0025).';

-- 2 and 3. Claim ---------------------------------------------------------------

-- As in 0018, with the gates computed before the budgets (gt), only
-- claims that will call counted (rq), and the budget rows locked in
-- (scope, target) order (bl).
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
    ), one AS (
        -- The key's lock is re-entrant: of two steps of one key in this
        -- batch, only the first is claimed; the other stays pending.
        SELECT p.id FROM picked p
        WHERE p.resource_key IS NULL
           OR NOT EXISTS (SELECT 1 FROM picked q
                          WHERE q.resource_key = p.resource_key
                            AND (q.run_at, q.id) < (p.run_at, p.id))
    ), c AS (
        UPDATE eav.steps s
        SET state = 'running', claim_epoch = s.claim_epoch + 1,
            attempt = s.attempt + 1, owner_node = p_node,
            owner_incarnation = p_incarnation, owner_pid = p_pid,
            claimed_at = now(), updated_at = now()
        FROM one WHERE s.id = one.id
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
    IF v_budget THEN
        PERFORM eav.retry_storm_raise(v_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Nothing of a kill switch''s scope is claimed (eav.kill_switch_engage). Each row carries what the worker needs to call the tool (builtin name, or kind and config) and its gate: NULL (call), defer (rate limited or unavailable: eav.step_defer), fail (unavailable, fail fast), replay (recorded outcome: eav.step_replay), collision (eav.step_collision), wait (another step with the same client key is running or comes first: deferred) budget:<ms> (a retry past its queue''s or tool''s retry budget: deferred ms) or conflict (the step''s resource key is owned by another queue: eav.step_authority_conflict). Only a retry (attempt > 1) that no other gate holds back counts against the retry budgets, whose rows are locked in (scope, target) order. A step whose resource key has a running step, or an earlier step of the same key in the batch, is not claimed. Refused (EA002) for a superseded incarnation.';
