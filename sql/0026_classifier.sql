-- 0026_classifier: what the producer needs to run the event classifier
-- (producer/classify.c; the SQL side of the classifier is 0022's).  The
-- classifier is an exec tool named by [producer] classifier, so its argv,
-- environment allowlist, output cap, rlimits and time-out are checked
-- once, at registration, by the same rules as every exec tool.

CREATE FUNCTION eav.classifier_tool(p_name text)
RETURNS TABLE (kind text, config text, timeout_ms integer)
LANGUAGE sql STABLE AS $$
    SELECT t.kind, t.config::text, t.timeout_ms FROM eav.tools t
    WHERE t.name = p_name
$$;
COMMENT ON FUNCTION eav.classifier_tool(text) IS 'The classifier tool the producer runs: its kind (it must be exec), config and timeout_ms; no row if there is no such tool.';

INSERT INTO eav.role_functions (role, function)
VALUES ('eav_producer', 'classifier_tool');
