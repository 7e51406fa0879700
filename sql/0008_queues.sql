-- 0008_queues: queues are made and tuned through an audited function, not
-- by INSERT (eavctl queue set, or psql).

CREATE FUNCTION eav.queue_set(p_name text, p_default_max_attempts integer DEFAULT NULL,
    p_retry_base_ms integer DEFAULT NULL, p_retry_max_ms integer DEFAULT NULL,
    p_description text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    q eav.queues;
    v_new boolean;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid queue name "%"', p_name
            USING ERRCODE = '22023',
                  HINT = 'Use lowercase letters, digits, _ . -; at most 63 characters.';
    END IF;
    SELECT * INTO q FROM eav.queues WHERE name = p_name FOR UPDATE;
    v_new := NOT FOUND;
    IF v_new THEN
        q.name := p_name;
        q.default_max_attempts := 5;
        q.retry_base_ms := 1000;
        q.retry_max_ms := 3600000;
        q.description := '';
    END IF;
    q.default_max_attempts := coalesce(p_default_max_attempts, q.default_max_attempts);
    q.retry_base_ms := coalesce(p_retry_base_ms, q.retry_base_ms);
    q.retry_max_ms := coalesce(p_retry_max_ms, q.retry_max_ms);
    q.description := coalesce(p_description, q.description);
    IF q.default_max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'default_max_attempts must be between 1 and 1000, not %',
            q.default_max_attempts USING ERRCODE = '22023';
    END IF;
    IF q.retry_base_ms NOT BETWEEN 1 AND 86400000 THEN
        RAISE EXCEPTION 'retry_base_ms must be between 1 and 86400000, not %',
            q.retry_base_ms USING ERRCODE = '22023';
    END IF;
    IF q.retry_max_ms NOT BETWEEN q.retry_base_ms AND 604800000 THEN
        RAISE EXCEPTION 'retry_max_ms must be between retry_base_ms (%) and 604800000, not %',
            q.retry_base_ms, q.retry_max_ms USING ERRCODE = '22023';
    END IF;
    IF length(q.description) > 1000 THEN
        RAISE EXCEPTION 'description is longer than 1000 characters'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO eav.queues (name, default_max_attempts, retry_base_ms, retry_max_ms,
                            description)
    VALUES (q.name, q.default_max_attempts, q.retry_base_ms, q.retry_max_ms,
            q.description)
    ON CONFLICT (name) DO UPDATE
        SET default_max_attempts = EXCLUDED.default_max_attempts,
            retry_base_ms = EXCLUDED.retry_base_ms,
            retry_max_ms = EXCLUDED.retry_max_ms,
            description = EXCLUDED.description;
    PERFORM eav.audit(CASE WHEN v_new THEN 'queue.created' ELSE 'queue.updated' END,
        'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('queue', q.name,
                           'default_max_attempts', q.default_max_attempts,
                           'retry_base_ms', q.retry_base_ms,
                           'retry_max_ms', q.retry_max_ms));
    RETURN CASE WHEN v_new THEN 'created' ELSE 'updated' END;
END;
$$;
COMMENT ON FUNCTION eav.queue_set(text, integer, integer, integer, text, text) IS 'Creates a queue or changes its settings (NULL keeps a setting; audited queue.created / queue.updated). Returns created or updated.';
