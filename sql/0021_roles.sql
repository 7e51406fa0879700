-- 0021_roles: least privilege.  Five roles, none superuser, none owning
-- anything: eav_worker, eav_producer, eav_api (callers of the engine),
-- eav_operator (people: eavctl, psql) and eav_auditor (reads the audit).
-- No eav function is executable by PUBLIC.  Each role may execute only
-- the entry points listed for it in eav.role_functions; those run as
-- SECURITY DEFINER with a fixed search_path, so the roles need (and get)
-- no privilege on any table: a worker cannot UPDATE a step, DELETE an
-- audit row or approve anything, it can only call the claim and the
-- completion.  Operators and auditors may read (SELECT); nobody but the
-- owner may write a table directly.  eavd's children connect with their
-- role ([database] child_roles); eavd itself keeps the migrating role,
-- which it needs to end dead workers' sessions.
--
-- eav.privileges_apply() (re)applies all of it, and eav's migration
-- runner calls it after every migration run, so a function a later
-- migration adds is covered once it is listed in eav.role_functions.
-- Roles are cluster-wide: they are created here when missing and the
-- migrating role may (superuser or CREATEROLE), else left for the
-- administrator (docs/00-scope.md).

DO $$
DECLARE
    r text;
    v_may boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles
                      WHERE rolname = current_user);
BEGIN
    FOREACH r IN ARRAY ARRAY['eav_worker', 'eav_producer', 'eav_api',
                             'eav_operator', 'eav_auditor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            IF v_may THEN
                -- The roles are shared by every database of the cluster;
                -- two migrations at once may both get here.
                BEGIN
                    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB '
                                   'NOCREATEROLE NOREPLICATION', r);
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL;
                END;
            ELSE
                RAISE NOTICE 'role % does not exist and % may not create it',
                    r, current_user;
            END IF;
        END IF;
    END LOOP;
END;
$$;

CREATE TABLE eav.role_functions (
    role     text NOT NULL CHECK (role IN ('eav_worker', 'eav_producer', 'eav_api',
                                            'eav_operator', 'eav_auditor')),
    function text NOT NULL,
    PRIMARY KEY (role, function)
);
COMMENT ON TABLE eav.role_functions IS 'Which eav functions (by name, every overload) each runtime role may execute; applied by eav.privileges_apply().';
COMMENT ON COLUMN eav.role_functions.role IS 'The role.';
COMMENT ON COLUMN eav.role_functions.function IS 'Function name in schema eav.';

INSERT INTO eav.role_functions (role, function)
SELECT 'eav_worker', f FROM unnest(ARRAY['complete_and_claim', 'ledger_transfer',
    'worker_resync', 'kill_switch_observe', 'inject_listen', 'inject_armed',
    'inject_take']) f
UNION ALL
SELECT 'eav_producer', f FROM unnest(ARRAY['inbox_ingest', 'demo_emit',
    'kill_switch_observe', 'inject_listen', 'inject_armed', 'inject_take',
    'schedule_tick']) f
UNION ALL
SELECT 'eav_api', f FROM unnest(ARRAY['task_enqueue', 'enqueue', 'enqueue_many',
    'event_submit', 'kill_switch_observe']) f
UNION ALL
SELECT 'eav_operator', f FROM unnest(ARRAY['task_enqueue', 'enqueue',
    'enqueue_many', 'event_submit', 'task_retry', 'task_cancel', 'step_resolve',
    'inject_arm', 'inject_disarm', 'check_invariants', 'alarm_ack',
    'alarm_resolve', 'alarm_raise', 'queue_set', 'queue_set_stuck_after',
    'queue_set_recursion', 'tool_register', 'tool_health_reset',
    'tool_approval_set', 'approval_approve', 'approval_deny', 'retry_budget_set',
    'kill_switch_set', 'kill_switch_engage', 'kill_switch_release',
    'redaction_rule_add', 'redaction_rule_disable', 'redact', 'redact_text',
    'cron_next', 'schedule_add', 'schedule_pause', 'schedule_resume',
    'schedule_remove', 'resource_owner_set', 'resource_owner_clear',
    'diagnose', 'diagnose_json', 'cron_next_n', 'audit_head', 'schedule_get']) f
UNION ALL
SELECT 'eav_auditor', f FROM unnest(ARRAY['check_invariants', 'diagnose',
    'diagnose_json', 'audit_head']) f;

CREATE FUNCTION eav.privileges_apply() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_n integer := 0;
BEGIN
    REVOKE ALL ON SCHEMA eav FROM PUBLIC;
    REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA eav FROM PUBLIC;
    ALTER DEFAULT PRIVILEGES IN SCHEMA eav REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
    FOR r IN
        SELECT DISTINCT rf.role, p.oid::regprocedure AS fn
        FROM eav.role_functions rf
        JOIN pg_roles ro ON ro.rolname = rf.role
        JOIN pg_proc p ON p.proname = rf.function
        JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'eav'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER '
                       'SET search_path = pg_catalog, eav, pg_temp', r.fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', r.fn, r.role);
        v_n := v_n + 1;
    END LOOP;
    FOR r IN SELECT rolname FROM pg_roles
             WHERE rolname IN ('eav_worker', 'eav_producer', 'eav_api',
                               'eav_operator', 'eav_auditor') LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA eav TO %I', r.rolname);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eav_operator') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA eav TO eav_operator;
        -- Helpers that only read (step_id, the views' functions, cron
        -- and schedule lookups): with the operator's own rights, since
        -- it may read every table anyway.
        FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'eav' AND p.provolatile IN ('s', 'i')
                   AND p.prorettype <> 'trigger'::regtype LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO eav_operator', r.fn);
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eav_auditor') THEN
        GRANT SELECT ON eav.audit_events, eav.audit_chain, eav.alarms,
            eav.kill_switches, eav.approvals TO eav_auditor;
    END IF;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.privileges_apply() IS 'Applies least privilege: nothing in schema eav for PUBLIC; each role of eav.role_functions may execute its functions (made SECURITY DEFINER with search_path pg_catalog, eav, pg_temp); eav_operator reads every table and may call every function that only reads (STABLE or IMMUTABLE), eav_auditor reads the audit, alarms, kill switches and approvals. Idempotent; run at every start. Returns the grants made.';

SELECT eav.privileges_apply();
