-- 0019_diagnose: a governance diagnostic of the deployment, as rows
-- (eav.diagnose) and as one JSON document (eav.diagnose_json), read by
-- eavctl diagnose and by psql users alike.
--
-- Five categories of issue 7, each a function of small checks that yield
-- findings: severity ok, info, warning or critical, evidence (counts,
-- ids, names) as jsonb, and the fix.  The functions only read.
--
-- Some checks look at schema that other migrations add (approvals,
-- resource ownership, rules, redaction); each looks the table or column
-- up at run time, and without it reports "not available: <what>" at
-- severity info, so this migration applies before or after those.
-- PL/pgSQL plans a statement only when it first runs, so a branch that
-- names a missing column is harmless while it is not taken.

CREATE TYPE eav.diagnosis AS (
    category   text,
    check_name text,
    severity   text,
    finding    text,
    evidence   jsonb,
    fix        text
);
COMMENT ON TYPE eav.diagnosis IS 'One finding of eav.diagnose: category, check, severity (ok, info, warning, critical), finding, evidence (jsonb), fix.';
COMMENT ON COLUMN eav.diagnosis.category IS 'mutation control, loop control, orchestration authority, traceability or containment.';
COMMENT ON COLUMN eav.diagnosis.check_name IS 'The check, e.g. non_idempotent_tools.';
COMMENT ON COLUMN eav.diagnosis.severity IS 'ok, info, warning or critical.';
COMMENT ON COLUMN eav.diagnosis.finding IS 'One line for people.';
COMMENT ON COLUMN eav.diagnosis.evidence IS 'Counts, ids and names behind the finding.';
COMMENT ON COLUMN eav.diagnosis.fix IS 'What to do about it.';

CREATE FUNCTION eav.diag_has(p_table text, p_column text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_column IS NULL
                THEN to_regclass(p_table) IS NOT NULL
                ELSE EXISTS (SELECT 1 FROM pg_attribute a
                             WHERE a.attrelid = to_regclass(p_table)
                               AND a.attname = p_column
                               AND a.attnum > 0 AND NOT a.attisdropped)
           END
$$;
COMMENT ON FUNCTION eav.diag_has(text, text) IS 'Whether a table (or a column of it) exists: eav.diagnose checks schema that later migrations may add.';

CREATE FUNCTION eav.diag(p_category text, p_check text, p_severity text,
    p_finding text, p_evidence jsonb, p_fix text)
RETURNS eav.diagnosis
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p_category, p_check, p_severity, p_finding,
               coalesce(p_evidence, '{}'), p_fix)::eav.diagnosis
$$;
COMMENT ON FUNCTION eav.diag(text, text, text, text, jsonb, text) IS 'Builds one eav.diagnosis row.';

CREATE FUNCTION eav.diag_unavailable(p_category text, p_check text,
    p_what text, p_fix text)
RETURNS eav.diagnosis
LANGUAGE sql IMMUTABLE AS $$
    SELECT eav.diag(p_category, p_check, 'info', 'not available: ' || p_what,
                    jsonb_build_object('available', false, 'missing', p_what),
                    p_fix)
$$;
COMMENT ON FUNCTION eav.diag_unavailable(text, text, text, text) IS 'The finding of a check whose schema this database lacks: severity info.';

-- Mutation control -----------------------------------------------------

-- Builtin tools are eav's own (noop, sleep, the ledger, the demo), so only
-- tools that reach outside (exec, http, mcp) are judged.
CREATE FUNCTION eav.diag_tools_without_approval() RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_approvals boolean := eav.diag_has('eav.tools', 'approval');
    v_names text[];
BEGIN
    IF v_approvals THEN
        SELECT array_agg(name ORDER BY name) INTO v_names FROM eav.tools
        WHERE kind <> 'builtin' AND NOT idempotent AND approval IS NULL;
    ELSE
        SELECT array_agg(name ORDER BY name) INTO v_names FROM eav.tools
        WHERE kind <> 'builtin' AND NOT idempotent;
    END IF;
    RETURN eav.diag('mutation control', 'non_idempotent_tools',
        CASE WHEN v_names IS NULL THEN 'ok' ELSE 'warning' END,
        CASE WHEN v_names IS NULL
             THEN 'every non-idempotent tool needs approval, or there is none'
             ELSE format('%s non-idempotent tool(s) without approval',
                         cardinality(v_names)) END,
        jsonb_build_object('count', coalesce(cardinality(v_names), 0),
            'tools', coalesce(to_jsonb(v_names), '[]'),
            'approvals', CASE WHEN v_approvals THEN 'available'
                              ELSE 'not available' END),
        CASE WHEN v_approvals
             THEN 'make the far side dedupe on the idempotency key and '
                  're-register the tool idempotent, or require approval '
                  'for it (eav.tool_approval_set, eavctl approvals policy)'
             ELSE 'make the far side dedupe on the idempotency key and '
                  're-register the tool idempotent (eav.tool_register); '
                  'approvals are not installed yet' END);
END;
$$;
COMMENT ON FUNCTION eav.diag_tools_without_approval() IS 'mutation control / non_idempotent_tools: exec, http and mcp tools that are not idempotent and need no approval (tools.approval NULL: no approval policy, sql/0017).';

-- A timeout is the bound on how long a call's outcome can stay open; the
-- column has a default, so "unset" shows as a bound too long to mean one.
CREATE FUNCTION eav.diag_tool_timeouts(p_max_ms integer DEFAULT 300000)
RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    SELECT eav.diag('mutation control', 'tool_timeouts',
        CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warning' END,
        CASE WHEN count(*) = 0
             THEN format('every external tool times out within %s ms',
                         p_max_ms)
             ELSE format('%s tool(s) with a timeout over %s ms',
                         count(*), p_max_ms) END,
        jsonb_build_object('count', count(*), 'limit_ms', p_max_ms,
            'tools', coalesce(jsonb_agg(jsonb_build_object('tool', name,
                'timeout_ms', timeout_ms) ORDER BY name), '[]')),
        'register the tool again with a timeout_ms the far side can '
        'honour (eav.tool_register, eavctl tools register -t)')
    FROM eav.tools WHERE kind <> 'builtin' AND timeout_ms > p_max_ms
$$;
COMMENT ON FUNCTION eav.diag_tool_timeouts(integer) IS 'mutation control / tool_timeouts: exec, http and mcp tools whose timeout_ms exceeds p_max_ms (default 5 minutes).';

-- Loop control ---------------------------------------------------------

CREATE FUNCTION eav.diag_queue_limits(p_max_depth integer DEFAULT 100,
    p_max_trace_tasks integer DEFAULT 100000)
RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    WITH q AS (
        SELECT name, max_depth, max_trace_tasks,
               max_depth > p_max_depth
                   OR max_trace_tasks > p_max_trace_tasks AS high,
               max_depth = 20 AND max_trace_tasks = 1000 AS defaults
        FROM eav.queues)
    SELECT eav.diag('loop control', 'queue_limits',
        CASE WHEN bool_or(high) THEN 'warning'
             WHEN bool_or(defaults) THEN 'info' ELSE 'ok' END,
        CASE WHEN bool_or(high)
             THEN format('%s queue(s) without real depth or fan-out limits',
                         count(*) FILTER (WHERE high))
             WHEN bool_or(defaults)
             THEN format('%s queue(s) on the default limits (depth 20, '
                         '1000 tasks a trace)',
                         count(*) FILTER (WHERE defaults))
             ELSE 'every queue has depth and fan-out limits set' END,
        jsonb_build_object('limit_max_depth', p_max_depth,
            'limit_max_trace_tasks', p_max_trace_tasks,
            'too_high', coalesce(jsonb_agg(jsonb_build_object('queue', name,
                'max_depth', max_depth, 'max_trace_tasks', max_trace_tasks)
                ORDER BY name) FILTER (WHERE high), '[]'),
            'at_defaults', coalesce(jsonb_agg(name ORDER BY name)
                FILTER (WHERE defaults AND NOT high), '[]')),
        'set limits that fit the queue''s real chains: '
        'eavctl queue recursion QUEUE MAX_DEPTH MAX_TRACE_TASKS '
        '(eav.queue_set_recursion)')
    FROM q
$$;
COMMENT ON FUNCTION eav.diag_queue_limits(integer, integer) IS 'loop control / queue_limits: queues whose max_depth or max_trace_tasks is over the given bounds (warning), or still at the defaults (info).';

-- Rules and watchers (issue 8) do not exist yet; eav.rules.debounce_ms is
-- the expected shape.
CREATE FUNCTION eav.diag_rule_debounce() RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_n bigint;
BEGIN
    IF NOT eav.diag_has('eav.rules', 'debounce_ms') THEN
        RETURN eav.diag_unavailable('loop control', 'rule_debounce',
            'rules (eav.rules.debounce_ms)',
            'nothing to do until rules are installed');
    END IF;
    SELECT count(*) INTO v_n FROM eav.rules
    WHERE coalesce(debounce_ms, 0) <= 0;
    RETURN eav.diag('loop control', 'rule_debounce',
        CASE WHEN v_n = 0 THEN 'ok' ELSE 'warning' END,
        format('%s rule(s) without debounce', v_n),
        jsonb_build_object('count', v_n),
        'give each rule a debounce_ms');
END;
$$;
COMMENT ON FUNCTION eav.diag_rule_debounce() IS 'loop control / rule_debounce: rules without a debounce (placeholder until eav.rules exists).';

-- Orchestration authority ----------------------------------------------

-- Resource ownership (sql/0018): an owner row's pattern is one key, or a
-- prefix when it ends in ':'.
CREATE FUNCTION eav.diag_ownership_available() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT eav.diag_has('eav.steps', 'resource_key')
       AND eav.diag_has('eav.resource_owners', 'pattern')
$$;
COMMENT ON FUNCTION eav.diag_ownership_available() IS 'Whether resource ownership (steps.resource_key, eav.resource_owners.pattern) is installed.';

CREATE FUNCTION eav.diag_resources_without_owners() RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_keys text[];
BEGIN
    IF NOT eav.diag_ownership_available() THEN
        RETURN eav.diag_unavailable('orchestration authority',
            'resources_without_owners',
            'resource ownership (steps.resource_key, eav.resource_owners)',
            'nothing to do until ownership is installed');
    END IF;
    SELECT array_agg(DISTINCT s.resource_key ORDER BY s.resource_key)
    INTO v_keys FROM eav.steps s
    WHERE s.state IN ('blocked', 'pending', 'running', 'held')
      AND s.resource_key IS NOT NULL
      AND eav.resource_owner_match(s.resource_key) IS NULL;
    RETURN eav.diag('orchestration authority', 'resources_without_owners',
        CASE WHEN v_keys IS NULL THEN 'ok' ELSE 'warning' END,
        format('%s resource key(s) of unfinished steps without an owner',
               coalesce(cardinality(v_keys), 0)),
        jsonb_build_object('count', coalesce(cardinality(v_keys), 0),
            'resource_keys', coalesce(to_jsonb(v_keys[1:20]), '[]')),
        'register an owner for each resource key or its prefix '
        '(eav.resource_owner_set, eavctl owner set)');
END;
$$;
COMMENT ON FUNCTION eav.diag_resources_without_owners() IS 'orchestration authority / resources_without_owners: resource keys of unfinished steps that no owner row names (the first 20 as evidence).';

-- A conflict is audited authority.conflict (issue 7); this reads a week of
-- the audit, which is a scan: diagnose is run by hand, not in a loop.
CREATE FUNCTION eav.diag_concurrent_writers(p_since interval DEFAULT '7 days')
RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_n bigint;
    v_steps bigint[];
BEGIN
    IF NOT eav.diag_ownership_available() THEN
        RETURN eav.diag_unavailable('orchestration authority',
            'concurrent_writers',
            'resource ownership (authority.conflict is not audited)',
            'nothing to do until ownership is installed');
    END IF;
    SELECT count(*), (array_agg(step_id ORDER BY id DESC))[1:20]
    INTO v_n, v_steps FROM eav.audit_events
    WHERE type = 'authority.conflict' AND at > now() - p_since;
    RETURN eav.diag('orchestration authority', 'concurrent_writers',
        CASE WHEN v_n = 0 THEN 'ok' ELSE 'warning' END,
        format('%s authority conflict(s) in the last %s', v_n, p_since),
        jsonb_build_object('count', v_n, 'since', p_since::text,
            'step_ids', coalesce(to_jsonb(v_steps), '[]')),
        'find which service writes a resource it does not own and route '
        'its steps through the owner');
END;
$$;
COMMENT ON FUNCTION eav.diag_concurrent_writers(interval) IS 'orchestration authority / concurrent_writers: authority.conflict audit events in the last p_since (placeholder until ownership exists).';

-- Traceability ---------------------------------------------------------

-- The chain is verified by eavctl, in C (a database cannot vouch for
-- itself); p_chain is its verdict, reported as given.  Without one, an
-- open audit_chain_broken alarm is the last word.
CREATE FUNCTION eav.diag_audit_chain(p_chain jsonb) RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    WITH a AS (SELECT array_agg(id ORDER BY id) AS ids FROM eav.alarms
               WHERE type = 'audit_chain_broken' AND state <> 'resolved'),
         h AS (SELECT coalesce(max(seq), 0) AS seq FROM eav.audit_chain)
    SELECT CASE
        WHEN (p_chain->>'verified')::boolean THEN
            eav.diag('traceability', 'audit_chain', 'ok',
                CASE WHEN (p_chain->>'seq')::bigint > 0
                     THEN format('audit chain verified: seq 1..%s',
                                 p_chain->>'seq')
                     ELSE 'audit chain verified: nothing sealed yet' END,
                p_chain, 'none')
        WHEN p_chain IS NOT NULL THEN
            eav.diag('traceability', 'audit_chain', 'critical',
                format('audit chain broken at seq %s (id %s): %s',
                       p_chain->>'bad_seq', p_chain->>'bad_id',
                       p_chain->>'why'),
                p_chain, 'see "The audit chain does not verify" in '
                'docs/04-recovery-strategies.md')
        WHEN a.ids IS NOT NULL THEN
            eav.diag('traceability', 'audit_chain', 'critical',
                'the audit chain was found broken (open audit_chain_broken '
                'alarm)', jsonb_build_object('alarm_ids', to_jsonb(a.ids),
                'head_seq', h.seq),
                'see "The audit chain does not verify" in '
                'docs/04-recovery-strategies.md')
        ELSE
            eav.diag('traceability', 'audit_chain', 'info',
                'audit chain not verified by this report',
                jsonb_build_object('head_seq', h.seq),
                'eavctl diagnose --verify, or eavctl audit verify')
        END
    FROM a, h
$$;
COMMENT ON FUNCTION eav.diag_audit_chain(jsonb) IS 'traceability / audit_chain: eavctl''s verdict when given ({"verified": bool, "seq", "bad_seq", "bad_id", "why"}), else an open audit_chain_broken alarm, else "not verified".';

CREATE FUNCTION eav.diag_audit_sealing(p_max_lag interval DEFAULT '1 minute')
RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    WITH t AS (
        SELECT count(*) AS n, min(e.at) AS oldest FROM eav.audit_events e
        WHERE e.id > coalesce((SELECT max(c.id) FROM eav.audit_chain c), 0))
    SELECT eav.diag('traceability', 'audit_sealing',
        CASE WHEN t.oldest < clock_timestamp() - p_max_lag THEN 'warning'
             ELSE 'ok' END,
        CASE WHEN t.n = 0 THEN 'every audit event is sealed'
             ELSE format('%s audit event(s) not yet sealed, the oldest '
                         'for %s ms', t.n, round(extract(epoch FROM
                         clock_timestamp() - t.oldest) * 1000)) END,
        jsonb_build_object('unsealed', t.n, 'oldest_unsealed_ms',
            coalesce(round(extract(epoch FROM clock_timestamp() - t.oldest)
                           * 1000), 0),
            'max_lag_ms', round(extract(epoch FROM p_max_lag) * 1000)),
        'keep eavd running: its sealer chains events within about a second '
        '([audit] seal_interval)')
    FROM t
$$;
COMMENT ON FUNCTION eav.diag_audit_sealing(interval) IS 'traceability / audit_sealing: events not yet in the chain; warning when the oldest waits longer than p_max_lag (the sealer is behind or not running).';

CREATE FUNCTION eav.diag_steps_without_trace() RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_n bigint := 0;
    v_enforced boolean;
BEGIN
    SELECT a.attnotnull INTO v_enforced FROM pg_attribute a
    WHERE a.attrelid = 'eav.steps'::regclass AND a.attname = 'trace_id';
    IF NOT v_enforced THEN
        SELECT count(*) INTO v_n FROM eav.steps WHERE trace_id IS NULL;
    END IF;
    RETURN eav.diag('traceability', 'steps_without_trace',
        CASE WHEN v_n = 0 THEN 'ok' ELSE 'warning' END,
        format('%s step(s) without a trace', v_n),
        jsonb_build_object('count', v_n, 'not_null_enforced', v_enforced),
        CASE WHEN v_enforced THEN 'none: steps.trace_id is NOT NULL'
             ELSE 'give steps.trace_id its NOT NULL constraint back' END);
END;
$$;
COMMENT ON FUNCTION eav.diag_steps_without_trace() IS 'traceability / steps_without_trace: steps.trace_id is NOT NULL, so none; counted only if that constraint was dropped.';

CREATE FUNCTION eav.diag_redaction() RETURNS eav.diagnosis
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_n bigint;
BEGIN
    IF NOT eav.diag_has('eav.redaction_rules', 'enabled') THEN
        RETURN eav.diag_unavailable('traceability', 'redaction_policy',
            'redaction (eav.redaction_rules)',
            'nothing to do until redaction is installed');
    END IF;
    SELECT count(*) INTO v_n FROM eav.redaction_rules
    WHERE enabled AND kind IN ('key', 'value');
    RETURN eav.diag('traceability', 'redaction_policy',
        CASE WHEN v_n = 0 THEN 'warning' ELSE 'ok' END,
        format('%s redaction rule(s) enabled', v_n),
        jsonb_build_object('enabled_rules', v_n),
        CASE WHEN v_n = 0 THEN 'enable the redaction rules: secrets would '
                               'reach the audit log'
             ELSE 'none' END);
END;
$$;
COMMENT ON FUNCTION eav.diag_redaction() IS 'traceability / redaction_policy: enabled key and value rules of eav.redaction_rules (when installed); none is a warning.';

-- Containment ----------------------------------------------------------

-- A switch row exists once it has been engaged; its changed_at is the
-- last engage or release, so the newest row dates the last rehearsal.
CREATE FUNCTION eav.diag_kill_switch(p_within interval DEFAULT '30 days')
RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    WITH k AS (
        SELECT max(changed_at) AS last,
               coalesce(jsonb_agg(CASE WHEN scope = 'global' THEN 'global'
                   ELSE scope || ':' || target END ORDER BY scope, target)
                   FILTER (WHERE engaged), '[]') AS engaged
        FROM eav.kill_switches)
    SELECT eav.diag('containment', 'kill_switch_tested',
        CASE WHEN k.last IS NULL OR k.last < now() - p_within
             THEN 'warning' ELSE 'ok' END,
        CASE WHEN k.last IS NULL THEN 'the kill switch was never engaged'
             WHEN k.last < now() - p_within
             THEN format('kill switch not tested in the last %s', p_within)
             ELSE 'kill switch tested recently' END,
        jsonb_build_object('last_changed_at', k.last,
            'within', p_within::text, 'engaged_now', k.engaged),
        'rehearse it: eavctl kill-switch on --queue Q --reason "drill", '
        'then off')
    FROM k
$$;
COMMENT ON FUNCTION eav.diag_kill_switch(interval) IS 'containment / kill_switch_tested: warning when no kill switch was engaged or released within p_within (default 30 days); lists the ones engaged now.';

CREATE FUNCTION eav.diag_retry_budgets_queues() RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    SELECT eav.diag('containment', 'retry_budgets_queues',
        CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warning' END,
        CASE WHEN count(*) = 0 THEN 'every queue has a retry budget'
             ELSE format('%s queue(s) without a retry budget', count(*)) END,
        jsonb_build_object('count', count(*),
            'queues', coalesce(jsonb_agg(q.name ORDER BY q.name), '[]')),
        'eavctl budget set -q QUEUE RETRIES_PER_MINUTE '
        '(eav.retry_budget_set)')
    FROM eav.queues q
    WHERE NOT EXISTS (SELECT 1 FROM eav.retry_budgets b
                      WHERE b.scope = 'queue' AND b.target = q.name)
$$;
COMMENT ON FUNCTION eav.diag_retry_budgets_queues() IS 'containment / retry_budgets_queues: queues without a retry budget (a retry storm is uncapped there).';

-- Info only: a queue budget already caps the tool's retries on that queue.
CREATE FUNCTION eav.diag_retry_budgets_tools() RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    SELECT eav.diag('containment', 'retry_budgets_tools',
        CASE WHEN count(*) = 0 THEN 'ok' ELSE 'info' END,
        CASE WHEN count(*) = 0 THEN 'every external tool has a retry budget'
             ELSE format('%s external tool(s) without a retry budget of '
                         'their own', count(*)) END,
        jsonb_build_object('count', count(*),
            'tools', coalesce(jsonb_agg(t.name ORDER BY t.name), '[]')),
        'eavctl budget set -t TOOL RETRIES_PER_MINUTE, to cap retries '
        'against one far side across queues')
    FROM eav.tools t
    WHERE t.kind <> 'builtin'
      AND NOT EXISTS (SELECT 1 FROM eav.retry_budgets b
                      WHERE b.scope = 'tool' AND b.target = t.name)
$$;
COMMENT ON FUNCTION eav.diag_retry_budgets_tools() IS 'containment / retry_budgets_tools: exec, http and mcp tools without a budget of their own (info).';

CREATE FUNCTION eav.diag_open_alarms() RETURNS eav.diagnosis
LANGUAGE sql STABLE AS $$
    WITH a AS (
        SELECT severity, coalesce(jsonb_agg(id ORDER BY id), '[]') AS ids,
               count(*) AS n
        FROM eav.alarms WHERE state <> 'resolved' GROUP BY severity),
    s AS (SELECT coalesce(jsonb_object_agg(severity, ids), '{}') AS ids,
                 coalesce(sum(n), 0) AS n,
                 CASE WHEN bool_or(severity = 'critical') THEN 'critical'
                      WHEN bool_or(severity = 'warning') THEN 'warning'
                      WHEN bool_or(severity = 'info') THEN 'info'
                      ELSE 'ok' END AS worst
          FROM a),
    t AS (SELECT coalesce(jsonb_object_agg(type, n), '{}') AS by_type
          FROM (SELECT type, count(*) AS n FROM eav.alarms
                WHERE state <> 'resolved' GROUP BY type) x)
    SELECT eav.diag('containment', 'open_alarms', s.worst,
        format('%s open alarm(s)', s.n),
        jsonb_build_object('count', s.n, 'ids', s.ids,
                           'by_type', t.by_type),
        CASE WHEN s.n = 0 THEN 'none'
             ELSE 'work through them: eavctl alarms; eavctl alarms ack ID; '
                  'eavctl alarms resolve -n NOTE ID' END)
    FROM s, t
$$;
COMMENT ON FUNCTION eav.diag_open_alarms() IS 'containment / open_alarms: alarms not resolved (open or acked), ids by severity; as severe as the worst.';

-- The report -----------------------------------------------------------

CREATE FUNCTION eav.diagnose(p_chain jsonb DEFAULT NULL)
RETURNS TABLE (category text, check_name text, severity text,
    finding text, evidence jsonb, fix text)
LANGUAGE sql STABLE AS $$
    SELECT d.category, d.check_name, d.severity, d.finding, d.evidence,
           d.fix
    FROM unnest(ARRAY[
        eav.diag_tools_without_approval(),
        eav.diag_tool_timeouts(),
        eav.diag_queue_limits(),
        eav.diag_rule_debounce(),
        eav.diag_resources_without_owners(),
        eav.diag_concurrent_writers(),
        eav.diag_audit_chain(p_chain),
        eav.diag_audit_sealing(),
        eav.diag_steps_without_trace(),
        eav.diag_redaction(),
        eav.diag_kill_switch(),
        eav.diag_retry_budgets_queues(),
        eav.diag_retry_budgets_tools(),
        eav.diag_open_alarms()]) WITH ORDINALITY AS d(category, check_name,
            severity, finding, evidence, fix, n)
    ORDER BY d.n
$$;
COMMENT ON FUNCTION eav.diagnose(jsonb) IS 'Governance diagnostic (issue 7): one row per check, in five categories (mutation control, loop control, orchestration authority, traceability, containment), with severity ok/info/warning/critical, evidence and fix. p_chain: eavctl''s audit chain verdict, if it ran one. Read-only.';

CREATE FUNCTION eav.diag_rank(p_severity text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_position(ARRAY['ok', 'info', 'warning', 'critical'],
                          p_severity)
$$;
COMMENT ON FUNCTION eav.diag_rank(text) IS 'Order of severities: ok 1, info 2, warning 3, critical 4.';

-- One document: {"worst", "counts", "categories": [{"category", "worst",
-- "findings": [{"check", "severity", "finding", "evidence", "fix"}]}]}.
CREATE FUNCTION eav.diagnose_json(p_chain jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH d AS (SELECT row_number() OVER () AS n, * FROM eav.diagnose(p_chain)),
    c AS (SELECT category, min(n) AS n, max(eav.diag_rank(severity)) AS rank,
                 jsonb_agg(jsonb_build_object('check', check_name,
                     'severity', severity, 'finding', finding,
                     'evidence', evidence, 'fix', fix) ORDER BY n) AS findings
          FROM d GROUP BY category)
    SELECT jsonb_build_object(
        'generated_at', now(),
        'worst', (SELECT (ARRAY['ok', 'info', 'warning', 'critical'])
                         [max(eav.diag_rank(severity))] FROM d),
        'counts', (SELECT jsonb_build_object(
                       'ok', count(*) FILTER (WHERE severity = 'ok'),
                       'info', count(*) FILTER (WHERE severity = 'info'),
                       'warning', count(*) FILTER (WHERE severity = 'warning'),
                       'critical', count(*) FILTER (WHERE severity = 'critical'))
                   FROM d),
        'categories', (SELECT jsonb_agg(jsonb_build_object(
                           'category', category,
                           'worst', (ARRAY['ok', 'info', 'warning',
                                           'critical'])[rank],
                           'findings', findings) ORDER BY n) FROM c))
$$;
COMMENT ON FUNCTION eav.diagnose_json(jsonb) IS 'eav.diagnose as one JSON document, grouped by category, with the worst severity and counts per severity (eavctl diagnose --json).';
