-- 0034_audit_role: each audit row records the database role that wrote
-- it, under the hash chain.
--
-- An audit row's actor is a label its caller chooses ("operator:alice");
-- the role the session logged in as is not.  eav.audit_events.role is
-- session_user at the insert: unchanged by SECURITY DEFINER functions
-- (through which every runtime role writes) and by SET ROLE, so a row
-- says which login wrote it whatever label it carries.  The canonical
-- form that the chain hashes gains it: rows written from now on are
-- eav.audit.v2 (the v1 fields, then the role); rows written before this
-- migration have no role and keep their v1 form and hashes, so a chain
-- that spans the upgrade still verifies, and editing a row's role, or
-- removing it, changes its digest.

ALTER TABLE eav.audit_events ADD COLUMN role text;
ALTER TABLE eav.audit_events ALTER COLUMN role SET DEFAULT session_user;
COMMENT ON COLUMN eav.audit_events.role IS 'Database role of the session that wrote the row (session_user: not the actor label, not changed by SECURITY DEFINER or SET ROLE); NULL for rows written before migration 0034.';

CREATE OR REPLACE FUNCTION eav.audit_canonical(e eav.audit_events) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN e.role IS NULL THEN 'eav.audit.v1' ELSE 'eav.audit.v2' END
        || eav.audit_field(e.id::text)
        || eav.audit_field(((extract(epoch FROM e.at) * 1000000)::bigint)::text)
        || eav.audit_field(e.type)
        || eav.audit_field(e.outcome)
        || eav.audit_field(e.actor)
        || eav.audit_field(e.trace_id::text)
        || eav.audit_field(e.task_id::text)
        || eav.audit_field(e.step_id::text)
        || eav.audit_field(e.payload::text)
        || CASE WHEN e.role IS NULL THEN '' ELSE eav.audit_field(e.role) END
$$;
COMMENT ON FUNCTION eav.audit_canonical(eav.audit_events) IS 'Canonical text of an audit event, hashed by the chain: eav.audit.v2 then id, at in UTC microseconds, type, outcome, actor, trace_id, task_id, step_id, payload (jsonb canonical text) and role, each as eav.audit_field; a row without a role (written before 0034) has the eav.audit.v1 form, without it. Independent of session settings.';
