-- 0033_plan_cache: SQL functions of hot paths become PL/pgSQL.
--
-- A LANGUAGE sql function that PostgreSQL cannot inline (it reads a
-- table, or aggregates) is parsed and planned again at every call; a
-- PL/pgSQL function keeps its statements' plans for the session.  Per
-- event routed, eav.rule_match was planned once and eav.rule_matches once,
-- and eav.setting (read by every enqueue, twice) four times: in 2,400
-- routed events, 146 ms of planning for 176 ms of rule lookups, and 171
-- ms of planning for 25 ms of settings reads (pg_stat_statements,
-- track_planning).  So do eav.audit (every transition's audit row),
-- eav.event_payload and the generated eav.approval_tools (below).  Same
-- results, same volatility.

CREATE OR REPLACE FUNCTION eav.setting(p_name text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT s.value FROM eav.settings s WHERE s.name = p_name);
END;
$$;

CREATE OR REPLACE FUNCTION eav.rule_matches(p_predicates jsonb, p_body jsonb)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN coalesce((SELECT bool_and(eav.predicate_holds(p, p_body))
                     FROM jsonb_array_elements(p_predicates) p), true);
END;
$$;

CREATE OR REPLACE FUNCTION eav.rule_match(p_type text, p_source text, p_body jsonb)
RETURNS eav.rules
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r eav.rules;
BEGIN
    SELECT * INTO r FROM eav.rules x
    WHERE x.state = 'enabled' AND x.type = p_type
      AND (x.source IS NULL OR x.source = p_source)
      AND eav.rule_matches(x.predicates, p_body)
    ORDER BY x.priority, x.id LIMIT 1;
    RETURN r;
END;
$$;

-- Every transition function's audit row goes through here.
CREATE OR REPLACE FUNCTION eav.audit(p_type text, p_outcome text, p_actor text,
    p_trace_id uuid, p_task_id bigint, p_step_id bigint,
    p_payload jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id,
        step_id, payload)
    VALUES (p_type, p_outcome, p_actor, p_trace_id, p_task_id, p_step_id,
        coalesce(p_payload, '{}'));
END;
$$;

CREATE OR REPLACE FUNCTION eav.event_payload(e eav.inbox) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN jsonb_build_object('event_id', e.id, 'source', e.source,
        'event_key', e.event_key, 'type', e.type);
END;
$$;

-- The steps triggers' WHEN clauses call eav.approval_tools() for every
-- step inserted or made ready, and a trigger's WHEN clause is not
-- planned, so the SQL function's body was parsed and planned at each of
-- those calls.  As PL/pgSQL its one expression is prepared once.
CREATE OR REPLACE FUNCTION eav.approval_tools_refresh() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v text[] := ARRAY(SELECT name FROM eav.tools WHERE approval IS NOT NULL
                      ORDER BY name);
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION eav.approval_tools() RETURNS text[] '
                   'LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN RETURN %L::text[]; END $f$', v);
END;
$$;
COMMENT ON FUNCTION eav.approval_tools_refresh() IS 'Rewrites eav.approval_tools() (PL/pgSQL since 0033) from eav.tools.approval.';
SELECT eav.approval_tools_refresh();
