-- 0004_failure_lab: injection points armed from psql, and the invariant
-- checker (docs/01-invariants.md).

-- Live injection: a row arms one point in every process of that kind
-- (worker.*, supervisor.*, producer.*) of every node.  Processes LISTEN on
-- eav_inject and reload the armed rows when one is added or disarmed;
-- each firing first takes one unit of `remaining` here, committed, so a
-- count is global and survives the crash it causes.
CREATE TABLE eav.inject_points (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    point       text NOT NULL CONSTRAINT inject_points_point_known CHECK (point IN (
                    'worker.startup', 'worker.after_claim',
                    'worker.before_effect',
                    'worker.after_effect_before_complete',
                    'worker.mid_complete', 'supervisor.mid_reconcile',
                    'producer.startup', 'producer.after_task_before_ack')),
    action      text NOT NULL CONSTRAINT inject_points_action_known
                CHECK (action IN ('crash', 'delay', 'error', 'exit', 'drop')),
    arg         bigint NOT NULL DEFAULT 0
                CONSTRAINT inject_points_arg_range CHECK (arg BETWEEN 0 AND 3600000),
    remaining   integer CONSTRAINT inject_points_remaining_range
                CHECK (remaining BETWEEN 0 AND 1000000),
    step_id     bigint CONSTRAINT inject_points_step_id_positive CHECK (step_id > 0),
    tool        text CONSTRAINT inject_points_tool_known REFERENCES eav.tools (name),
    fired       bigint NOT NULL DEFAULT 0,
    armed_by    text NOT NULL DEFAULT eav.default_actor(),
    armed_at    timestamptz NOT NULL DEFAULT now(),
    disarmed_at timestamptz,
    -- error and drop need a path in the code at that point; a delay in
    -- eavd would stop it reaping children and answering signals.
    CONSTRAINT inject_points_action_supported CHECK (
        action IN ('crash', 'exit')
        OR (action = 'delay' AND point <> 'supervisor.mid_reconcile')
        OR (action = 'error' AND point IN ('worker.after_claim', 'worker.before_effect'))
        OR (action = 'drop' AND point IN ('worker.before_effect',
                                          'producer.after_task_before_ack'))),
    -- 0 is a clean exit, 69, 75 and 78 tell eavd "database lost",
    -- "try again" and "configuration error": not failures to rehearse.
    CONSTRAINT inject_points_exit_code CHECK (action <> 'exit'
        OR (arg BETWEEN 1 AND 255 AND arg NOT IN (69, 75, 78))),
    -- Only these points run for a step; elsewhere a filter never matches.
    CONSTRAINT inject_points_step_id_point CHECK (step_id IS NULL OR point IN (
        'worker.after_claim', 'worker.before_effect',
        'worker.after_effect_before_complete')),
    CONSTRAINT inject_points_tool_point CHECK (tool IS NULL OR point IN (
        'worker.after_claim', 'worker.before_effect',
        'worker.after_effect_before_complete'))
);
COMMENT ON TABLE eav.inject_points IS 'Armed failure-injection points (docs/03-failure-modes.md). Arm with eav.inject_arm or eavctl inject; processes pick changes up by NOTIFY eav_inject.';
COMMENT ON COLUMN eav.inject_points.point IS 'Injection point: worker.*, supervisor.* or producer.* (inject/points.def).';
COMMENT ON COLUMN eav.inject_points.action IS 'crash (SIGKILL itself), delay (arg ms), error, exit (arg = status), drop (the database connection).';
COMMENT ON COLUMN eav.inject_points.arg IS 'Milliseconds for delay, exit status for exit (1-255 but 69, 75, 78, which mean more to eavd); 0 otherwise.';
COMMENT ON COLUMN eav.inject_points.remaining IS 'Firings left, over all processes; NULL: every time.';
COMMENT ON COLUMN eav.inject_points.step_id IS 'Fire only for this step (NULL: any).';
COMMENT ON COLUMN eav.inject_points.tool IS 'Fire only for steps of this tool (NULL: any).';
COMMENT ON COLUMN eav.inject_points.id IS 'Injection id (eavctl inject disarm <id>).';
COMMENT ON COLUMN eav.inject_points.armed_by IS 'Who armed it.';
COMMENT ON COLUMN eav.inject_points.armed_at IS 'When it was armed.';
COMMENT ON COLUMN eav.inject_points.fired IS 'Times it fired, over all processes.';
COMMENT ON COLUMN eav.inject_points.disarmed_at IS 'When it was disarmed; NULL while armed.';

-- Rows stay: they are the record of what was injected and how often.
CREATE FUNCTION eav.inject_points_refuse_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'eav.inject_points rows are never deleted'
        USING ERRCODE = 'EA003',
              HINT = 'Disarm with eav.inject_disarm(id) or eavctl inject disarm.';
END;
$$;
COMMENT ON FUNCTION eav.inject_points_refuse_delete() IS 'Trigger that refuses DELETE and TRUNCATE on eav.inject_points.';
CREATE TRIGGER inject_points_no_delete BEFORE DELETE ON eav.inject_points
    FOR EACH ROW EXECUTE FUNCTION eav.inject_points_refuse_delete();
CREATE TRIGGER inject_points_no_truncate BEFORE TRUNCATE ON eav.inject_points
    FOR EACH STATEMENT EXECUTE FUNCTION eav.inject_points_refuse_delete();

-- Each process holds at most 64 armed injections (inject/inject.c).
CREATE FUNCTION eav.inject_points_cap() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM eav.inject_points
        WHERE disarmed_at IS NULL AND (remaining IS NULL OR remaining > 0)
          AND split_part(point, '.', 1) = split_part(NEW.point, '.', 1)) >= 64 THEN
        RAISE EXCEPTION 'at most 64 injections of % points may be armed at once',
            split_part(NEW.point, '.', 1)
            USING ERRCODE = '54000', HINT = 'Disarm some: eavctl inject disarm.';
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION eav.inject_points_cap() IS 'Trigger: refuses a 65th armed injection for one kind of process.';
CREATE TRIGGER inject_points_cap BEFORE INSERT ON eav.inject_points
    FOR EACH ROW EXECUTE FUNCTION eav.inject_points_cap();

-- Arming from psql (a plain INSERT) is audited like arming through the
-- function: the trigger writes the row in the same transaction.
CREATE FUNCTION eav.inject_points_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM eav.audit('inject.armed', 'success', NEW.armed_by, NULL, NULL,
            NEW.step_id, jsonb_strip_nulls(jsonb_build_object('id', NEW.id,
                'point', NEW.point, 'action', NEW.action, 'arg', NEW.arg,
                'count', NEW.remaining, 'tool', NEW.tool)));
    ELSIF OLD.remaining IS DISTINCT FROM NEW.remaining AND NEW.remaining = 0 THEN
        -- Used up: processes reload and stop asking for firings.
        PERFORM pg_notify('eav_inject', NEW.point);
        RETURN NEW;
    ELSIF OLD.disarmed_at IS NULL AND NEW.disarmed_at IS NOT NULL THEN
        PERFORM eav.audit('inject.disarmed', 'success',
            coalesce(current_setting('eav.actor', true), eav.default_actor()),
            NULL, NULL, NEW.step_id, jsonb_build_object('id', NEW.id,
                'point', NEW.point, 'fired', NEW.fired));
    ELSE
        RETURN NEW;
    END IF;
    PERFORM pg_notify('eav_inject', NEW.point);
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION eav.inject_points_audit() IS 'Trigger: audits arming (inject.armed) and disarming (inject.disarmed) and sends NOTIFY eav_inject.';
CREATE TRIGGER inject_points_audit AFTER INSERT OR UPDATE ON eav.inject_points
    FOR EACH ROW EXECUTE FUNCTION eav.inject_points_audit();

CREATE FUNCTION eav.inject_arm(p_point text, p_action text, p_arg bigint DEFAULT 0,
    p_count integer DEFAULT NULL, p_step_id bigint DEFAULT NULL,
    p_tool text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO eav.inject_points (point, action, arg, remaining, step_id, tool, armed_by)
    VALUES (p_point, p_action, coalesce(p_arg, 0), p_count, p_step_id, p_tool,
            coalesce(p_actor, eav.default_actor()))
    RETURNING id;
$$;
COMMENT ON FUNCTION eav.inject_arm(text, text, bigint, integer, bigint, text, text) IS 'Arms an injection point in every process of its kind (audited inject.armed); returns its id. p_count NULL: fire every time.';

CREATE FUNCTION eav.inject_disarm(p_id bigint DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    PERFORM set_config('eav.actor', coalesce(p_actor, eav.default_actor()), true);
    UPDATE eav.inject_points SET disarmed_at = now()
    WHERE disarmed_at IS NULL AND (p_id IS NULL OR id = p_id);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF p_id IS NOT NULL AND v_n = 0 THEN
        RAISE EXCEPTION 'injection % does not exist or is not armed', p_id
            USING ERRCODE = 'EA004';
    END IF;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.inject_disarm(bigint, text) IS 'Disarms one injection (or all, with NULL), audited inject.disarmed; returns how many.';

-- Called by a process, on a connection of its own, just before an armed
-- point acts: commits the firing first, so a crash cannot lose it.
CREATE FUNCTION eav.inject_take(p_id bigint, p_actor text, p_step_id bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r eav.inject_points;
BEGIN
    UPDATE eav.inject_points
    SET remaining = remaining - 1, fired = fired + 1
    WHERE id = p_id AND disarmed_at IS NULL AND (remaining IS NULL OR remaining > 0)
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM eav.audit('inject.fired', 'success', p_actor, NULL, NULL,
        nullif(p_step_id, 0), jsonb_strip_nulls(jsonb_build_object('id', r.id,
            'point', r.point, 'action', r.action, 'arg', r.arg,
            'remaining', r.remaining)));
    RETURN true;
END;
$$;
COMMENT ON FUNCTION eav.inject_take(bigint, text, bigint) IS 'Takes one firing of an armed injection (fired + 1, remaining - 1, audited inject.fired); false when it is used up or disarmed.';

-- A process first LISTENs (its own committed statement: a LISTEN only
-- hears transactions that commit after it), then loads what is armed; a
-- change in between is both loaded and notified, never neither.
CREATE FUNCTION eav.inject_listen() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LISTEN eav_inject;
END;
$$;
COMMENT ON FUNCTION eav.inject_listen() IS 'LISTENs on eav_inject, where changes of eav.inject_points are announced; call it before eav.inject_armed.';

CREATE FUNCTION eav.inject_armed(p_kind text)
RETURNS TABLE (id bigint, point text, action text, arg bigint, step_id bigint,
    tool text)
LANGUAGE sql STABLE AS $$
    SELECT i.id, i.point, i.action, i.arg, i.step_id, i.tool
    FROM eav.inject_points i
    WHERE i.disarmed_at IS NULL AND (i.remaining IS NULL OR i.remaining > 0)
      AND split_part(i.point, '.', 1) = p_kind
    ORDER BY i.id;
$$;
COMMENT ON FUNCTION eav.inject_armed(text) IS 'The armed injections with firings left for a kind of process (worker, supervisor, producer).';

-- Invariant checker ----------------------------------------------------------

-- Ledger conservation needs each account's opening balance: for accounts
-- that already exist it is what their entries imply.
ALTER TABLE eav.ledger_accounts ADD COLUMN opening bigint;
UPDATE eav.ledger_accounts a SET opening = a.balance
    - coalesce((SELECT sum(amount) FROM eav.ledger_entries WHERE to_account = a.id), 0)
    + coalesce((SELECT sum(amount) FROM eav.ledger_entries WHERE from_account = a.id), 0);
ALTER TABLE eav.ledger_accounts ALTER COLUMN opening SET NOT NULL;
COMMENT ON COLUMN eav.ledger_accounts.opening IS 'Balance when the account was created: balance = opening + received - sent (INV-3).';

CREATE FUNCTION eav.ledger_account_opening() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.opening := NEW.balance;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION eav.ledger_account_opening() IS 'Trigger: a new account''s opening balance is its balance.';
CREATE TRIGGER ledger_accounts_opening BEFORE INSERT ON eav.ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION eav.ledger_account_opening();

-- The closing events of an attempt (step, epoch) in the audit: exactly one
-- per claim once it is over.  Reconciliation writes tool_call.unknown and
-- then, for the same epoch, step.retry_scheduled or step.held with outcome
-- unknown: those follow the closing event and are not counted again.
CREATE VIEW eav.audit_attempts AS
SELECT a.step_id, (a.payload->>'epoch')::bigint AS epoch,
       count(*) FILTER (WHERE a.type = 'step.claimed') AS claims,
       count(*) FILTER (WHERE a.type IN ('step.succeeded', 'step.failed',
                                         'step.released', 'tool_call.unknown',
                                         -- a retry or release of an
                                         -- attempt whose task was cancelled
                                         'step.cancelled')
                           OR (a.type = 'step.retry_scheduled'
                               AND a.outcome <> 'unknown')) AS closings,
       count(*) FILTER (WHERE a.type IN ('step.succeeded', 'step.failed')) AS applied,
       count(*) FILTER (WHERE a.type = 'tool_call.unknown') AS unknowns,
       min(a.id) FILTER (WHERE a.type = 'step.claimed') AS claim_audit_id
FROM eav.audit_events a
WHERE a.step_id IS NOT NULL AND a.payload ? 'epoch'
  AND a.type IN ('step.claimed', 'step.succeeded', 'step.failed', 'step.released',
                 'step.retry_scheduled', 'tool_call.unknown', 'step.cancelled')
GROUP BY a.step_id, (a.payload->>'epoch')::bigint;
COMMENT ON VIEW eav.audit_attempts IS 'One row per attempt (step, claim epoch) in the audit: its claims, closing events, applied completions and unknown outcomes (INV-5).';
COMMENT ON COLUMN eav.audit_attempts.step_id IS 'The step.';
COMMENT ON COLUMN eav.audit_attempts.epoch IS 'The claim epoch of the attempt.';
COMMENT ON COLUMN eav.audit_attempts.claims IS 'step.claimed rows (1 when sound).';
COMMENT ON COLUMN eav.audit_attempts.closings IS 'Closing events: succeeded, failed, released, retry_scheduled by a completion, or tool_call.unknown (at most 1).';
COMMENT ON COLUMN eav.audit_attempts.applied IS 'Applied completions (step.succeeded, step.failed).';
COMMENT ON COLUMN eav.audit_attempts.unknowns IS 'tool_call.unknown rows.';
COMMENT ON COLUMN eav.audit_attempts.claim_audit_id IS 'Audit id of the claim.';

CREATE FUNCTION eav.inv_row(p_inv text, p_statement text, p_ids text[])
RETURNS TABLE (inv text, statement text, violations bigint, sample text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_inv, p_statement, coalesce(cardinality(p_ids), 0)::bigint,
           nullif(array_to_string(p_ids[1:5], ' '), '');
$$;
COMMENT ON FUNCTION eav.inv_row(text, text, text[]) IS 'Row of eav.check_invariants: the violation count and the first five ids.';

CREATE FUNCTION eav.check_invariants(quiescent boolean DEFAULT false)
RETURNS TABLE (inv text, statement text, violations bigint, sample text)
LANGUAGE plpgsql STABLE AS $$
-- Every query reads plainly (no SKIP LOCKED): a locked row is still a row.
DECLARE
    v text[];
BEGIN
    -- INV-1: at quiescence nothing is pending or running and every active
    -- task has a step that is; at any moment no live step of a finished task.
    SELECT array_agg('step:' || s.id ORDER BY s.id) INTO v FROM eav.steps s
    JOIN eav.tasks t ON t.id = s.task_id
    -- (a running step of a cancelled task may finish its attempt)
    WHERE (s.state IN ('pending', 'blocked') AND t.state <> 'active')
       OR (quiescent AND s.state IN ('pending', 'running'));
    IF quiescent THEN
        v := coalesce(v, '{}') || ARRAY(
            SELECT 'task:' || t.id FROM eav.tasks t
            WHERE t.state = 'active' AND NOT EXISTS (
                SELECT 1 FROM eav.steps s
                WHERE s.id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
                  AND s.state IN ('pending', 'running', 'held'))
            ORDER BY t.id);
    END IF;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-1',
        'no step is lost: terminal, held, or (before quiescence) still queued', v);

    SELECT array_agg('step:' || s.id) INTO v FROM eav.steps s
    WHERE s.state = 'running' AND s.owner_incarnation IS NULL;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-2',
        'a running step has an owner incarnation', v);

    -- INV-3: one ledger entry per step, only for succeeded steps, and every
    -- balance equals its opening plus what it received minus what it sent.
    SELECT array_agg(x) INTO v FROM (
        SELECT 'step:' || e.step_id AS x FROM eav.ledger_entries e
        GROUP BY e.step_id HAVING count(*) > 1
        UNION ALL
        SELECT 'entry:' || e.id FROM eav.ledger_entries e
        JOIN eav.steps s ON s.id = e.step_id WHERE s.state <> 'succeeded'
        UNION ALL
        SELECT 'account:' || a.id FROM eav.ledger_accounts a
        LEFT JOIN (SELECT to_account AS id, sum(amount) AS n
                   FROM eav.ledger_entries GROUP BY 1) i ON i.id = a.id
        LEFT JOIN (SELECT from_account AS id, sum(amount) AS n
                   FROM eav.ledger_entries GROUP BY 1) o ON o.id = a.id
        WHERE a.balance <> a.opening + coalesce(i.n, 0) - coalesce(o.n, 0)
    ) d;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-3',
        'no duplicate effect of an in-database tool; balances conserve', v);

    -- INV-4: a claim of a non-idempotent step after one of its unknown
    -- outcomes needs an operator's step.resolved retry in between.
    SELECT array_agg(DISTINCT 'step:' || c.step_id) INTO v
    FROM eav.audit_events u
    JOIN eav.steps s ON s.id = u.step_id
    JOIN eav.tools tl ON tl.name = s.tool AND NOT tl.idempotent
    JOIN eav.audit_events c ON c.step_id = u.step_id AND c.type = 'step.claimed'
                           AND c.id > u.id
    WHERE u.type = 'tool_call.unknown'
      AND NOT EXISTS (SELECT 1 FROM eav.audit_events r
                      WHERE r.step_id = u.step_id AND r.type = 'step.resolved'
                        AND r.payload->>'action' = 'retry'
                        AND r.id > u.id AND r.id < c.id);
    RETURN QUERY SELECT * FROM eav.inv_row('INV-4',
        'a non-idempotent step is never re-run by itself after an unknown outcome', v);

    -- INV-5: each attempt closed at most once (exactly once at quiescence,
    -- unless the step is still running), and never both unknown and applied.
    SELECT array_agg('step:' || at.step_id || '/' || at.epoch) INTO v
    FROM eav.audit_attempts at
    LEFT JOIN eav.steps s ON s.id = at.step_id
    WHERE at.closings > 1 OR at.claims > 1
       OR (at.unknowns > 0 AND at.applied > 0)
       OR (quiescent AND at.claims = 1 AND at.closings = 0
           AND NOT (s.state = 'running' AND s.claim_epoch = at.epoch));
    v := coalesce(v, '{}') || ARRAY(
        SELECT 'unknown:' || u.step_id || '/' || u.claim_epoch
        FROM eav.unknown_outcomes u
        LEFT JOIN eav.audit_attempts at ON at.step_id = u.step_id
                                       AND at.epoch = u.claim_epoch
        WHERE coalesce(at.unknowns, 0) <> 1);
    RETURN QUERY SELECT * FROM eav.inv_row('INV-5',
        'each attempt is closed exactly once: one completion or one unknown outcome', v);

    -- INV-6: every applied completion carries the epoch of the claim before
    -- it (epochs only grow, so that is the running maximum).
    SELECT array_agg('audit:' || x.id) INTO v FROM (
        SELECT a.id, a.type, (a.payload->>'epoch')::bigint AS epoch,
               max((a.payload->>'epoch')::bigint) FILTER (WHERE a.type = 'step.claimed')
                   OVER (PARTITION BY a.step_id ORDER BY a.id) AS claimed
        FROM eav.audit_events a
        WHERE a.step_id IS NOT NULL
          AND a.type IN ('step.claimed', 'step.succeeded', 'step.failed')
    ) x
    WHERE x.type <> 'step.claimed' AND x.epoch IS DISTINCT FROM x.claimed
      -- an operator's resolution of a held step is not a completion
      AND x.epoch IS NOT NULL;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-6',
        'fencing holds: completions apply only for the current claim epoch', v);

    -- INV-7: the audit is append-only (its triggers exist) and every attempt
    -- a step counts has its step.claimed row: claims since its task was
    -- last retried (which resets attempts), minus refunded releases (also
    -- those of a cancelled task, audited step.cancelled with a reason).
    SELECT array_agg(x) INTO v FROM (
        SELECT 'trigger:' || t.name AS x
        FROM unnest(ARRAY['audit_events_append_only', 'audit_events_no_truncate']) AS t(name)
        WHERE NOT EXISTS (SELECT 1 FROM pg_trigger g
                          WHERE g.tgrelid = 'eav.audit_events'::regclass
                            AND g.tgname = t.name AND g.tgenabled <> 'D')
        UNION ALL
        SELECT 'step:' || s.id FROM eav.steps s
        LEFT JOIN (
            SELECT a.step_id,
                   count(*) FILTER (WHERE a.type = 'step.claimed')
                 - count(*) FILTER (WHERE a.type = 'step.released'
                                       OR (a.type = 'step.cancelled'
                                           AND a.payload ? 'epoch'
                                           AND a.payload ? 'reason')) AS n
            FROM eav.audit_events a
            LEFT JOIN (SELECT r.task_id, max(r.id) AS rid FROM eav.audit_events r
                       WHERE r.type = 'task.retried' GROUP BY r.task_id) lr
                   ON lr.task_id = a.task_id
            WHERE a.type IN ('step.claimed', 'step.released', 'step.cancelled')
              AND a.step_id IS NOT NULL AND a.id > coalesce(lr.rid, 0)
            GROUP BY a.step_id) c ON c.step_id = s.id
        WHERE s.attempt <> coalesce(c.n, 0)
    ) d;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-7',
        'every transition is audited and audit rows cannot change', v);

    -- INV-8: a running step's owner is a live child of its node's current
    -- incarnation; before quiescence only owners that exited over 10 s
    -- ago (twice the default sweep) count.
    SELECT array_agg('step:' || s.id) INTO v FROM eav.steps s
    LEFT JOIN eav.nodes n ON n.name = s.owner_node
    LEFT JOIN eav.processes p ON p.node = s.owner_node AND p.kind = 'worker'
                             AND p.incarnation = s.owner_incarnation
                             AND p.pid = s.owner_pid
    WHERE s.state = 'running'
      AND (n.incarnation IS DISTINCT FROM s.owner_incarnation
           OR p.state IS NULL OR p.state NOT IN ('starting', 'up', 'stopping'))
      -- (the slot may already run a new pid: the grace counts from the
      -- owner's own exit)
      AND (quiescent OR coalesce(
              (SELECT max(x.at) FROM eav.audit_events x
               WHERE x.type IN ('process.exited', 'process.failed')
                 AND x.payload->>'kind' = 'worker'
                 AND x.payload->>'pid' = s.owner_pid::text),
              s.claimed_at) < now() - interval '10 seconds');
    RETURN QUERY SELECT * FROM eav.inv_row('INV-8',
        'no orphan running step: its owner is a live worker of the current incarnation', v);

    SELECT array_agg('step:' || s.id) INTO v FROM eav.steps s
    WHERE s.attempt > s.max_attempts;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-9',
        'attempts are accounted: attempt <= max_attempts', v);

    -- INV-10: a claim comes from an incarnation that had not stopped.
    SELECT array_agg('audit:' || a.id) INTO v
    FROM eav.audit_events a
    LEFT JOIN eav.incarnations i
           ON i.id::text = substring(a.actor FROM '/([0-9]+)/[0-9]+$')
    WHERE a.type = 'step.claimed'
      AND (i.id IS NULL OR (i.stopped_at IS NOT NULL AND i.stopped_at < a.at));
    RETURN QUERY SELECT * FROM eav.inv_row('INV-10',
        'claims come only from a live incarnation of a node', v);

    -- INV-11: no database session of an eav process that is not alive.
    SELECT array_agg('backend:' || a.pid || '(' || a.application_name || ')') INTO v
    FROM pg_stat_activity a
    WHERE a.datname = current_database()
      AND a.application_name ~ '^eav-(worker|producer|inject):[0-9]+:[0-9]+$'
      AND NOT EXISTS (
          SELECT 1 FROM eav.processes p
          WHERE p.incarnation::text = split_part(a.application_name, ':', 2)
            AND p.pid::text = split_part(a.application_name, ':', 3)
            AND p.state IN ('starting', 'up', 'stopping'))
      AND (quiescent OR a.backend_start < now() - interval '10 seconds');
    RETURN QUERY SELECT * FROM eav.inv_row('INV-11',
        'nothing leaked: no database session of a dead eav process', v);

    SELECT array_agg('step:' || s.id) INTO v FROM eav.steps s
    WHERE s.state = 'held' AND NOT EXISTS (
        SELECT 1 FROM eav.alarms a
        WHERE a.subject = 'step:' || s.id AND a.state <> 'resolved');
    RETURN QUERY SELECT * FROM eav.inv_row('INV-12',
        'a held step has an open alarm', v);

    -- INV-13: step n+1 is claimed only after step n succeeded.
    SELECT array_agg('step:' || c.step_id) INTO v
    FROM (SELECT a.step_id, min(a.id) AS first_claim FROM eav.audit_events a
          WHERE a.type = 'step.claimed' AND a.step_id % 128 > 1
          GROUP BY a.step_id) c
    LEFT JOIN (SELECT a.step_id, min(a.id) AS first_ok FROM eav.audit_events a
               WHERE a.type = 'step.succeeded'
                  OR (a.type = 'step.resolved' AND a.payload->>'action' = 'succeeded')
               GROUP BY a.step_id) p ON p.step_id = c.step_id - 1
    WHERE p.first_ok IS NULL OR p.first_ok > c.first_claim;
    RETURN QUERY SELECT * FROM eav.inv_row('INV-13',
        'the steps of a task run in order', v);
END;
$$;
COMMENT ON FUNCTION eav.check_invariants(boolean) IS 'One row per invariant of docs/01-invariants.md: its violation count and up to five sample ids. quiescent: also check what holds only once the queue has drained (INV-1, INV-5, INV-8, INV-11 in full).';
