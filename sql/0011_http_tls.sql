-- 0011_http_tls: https for the http tool.  The worker verifies every far
-- side (its chain and its host; there is no switch to turn that off)
-- against the system's CA certificates, or against the PEM bundle the
-- config's new field ca_file names.  A certificate that does not verify
-- fails the step at once, before any request is sent.
--
-- eav.http_config_check is replaced whole: the same checks as 0009 plus
-- ca_file, and unknown fields are now reported as an http (not exec)
-- tool config's.

-- The path is only checked for its form here: the file is on the
-- workers' machines, and they read it at each call (a missing or
-- unreadable file fails the call, naming it).
CREATE FUNCTION eav.http_config_ca_file(p_ca jsonb, p_url text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_path text := p_ca #>> '{}';
BEGIN
    IF p_ca IS NULL THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_ca) <> 'string' THEN
        RAISE EXCEPTION 'http tool config: "ca_file" must be a string, the absolute path of a PEM file'
            USING ERRCODE = '22023';
    END IF;
    IF v_path !~ '^/[^\x01-\x1f\x7f]*$' OR octet_length(v_path) > 1024 THEN
        RAISE EXCEPTION 'http tool config: "ca_file" must be an absolute path of at most 1024 bytes without control characters, not "%"',
            left(v_path, 200) USING ERRCODE = '22023';
    END IF;
    IF p_url !~* '^https://' THEN
        RAISE EXCEPTION 'http tool config: "ca_file" applies to https URLs only'
            USING ERRCODE = '22023',
                  HINT = 'Use an https:// URL, or drop ca_file.';
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.http_config_ca_file(jsonb, text) IS 'Validates the ca_file of an http tool config (22023 naming the field): a string, an absolute path of at most 1024 bytes without control characters, with an https URL.';

CREATE OR REPLACE FUNCTION eav.http_config_check(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_known text[] := ARRAY['url', 'method', 'headers', 'secret_headers',
        'body', 'max_output_bytes', 'ca_file'];
    v_url text;
    v_method text := coalesce(p_config->>'method', 'POST');
    v_body text := coalesce(p_config->>'body', 'input');
    v_bad text;
BEGIN
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'http tool config must be a JSON object' USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_bad FROM jsonb_object_keys(p_config) AS k
    WHERE k <> ALL (v_known) ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'http tool config: unknown field "%"', left(v_bad, 64)
            USING ERRCODE = '22023',
                  HINT = 'Known fields: ' || array_to_string(v_known, ', ') || ', health.';
    END IF;
    IF jsonb_typeof(p_config->'url') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'http tool config: "url" is missing or not a string'
            USING ERRCODE = '22023',
                  HINT = 'e.g. {"url": "http://127.0.0.1:8080/charge/{order}"}; {name} is replaced by input.name.';
    END IF;
    v_url := p_config->>'url';
    IF v_url !~* '^[a-z][a-z0-9+.-]*://' THEN
        RAISE EXCEPTION 'http tool config: "url" must be an absolute URL, not "%"', left(v_url, 200)
            USING ERRCODE = '22023';
    END IF;
    IF v_url !~* '^https?://' THEN
        RAISE EXCEPTION 'http tool config: "url" must use http or https, not "%"',
            substring(v_url from '^[^:]*') USING ERRCODE = '22023';
    END IF;
    IF octet_length(v_url) > 2048 OR v_url !~* '^https?://[^/?#\s@]+(/[^\s]*)?$' THEN
        RAISE EXCEPTION 'http tool config: "url" must be http(s)://host[:port][/path], at most 2048 bytes, without spaces or user info'
            USING ERRCODE = '22023';
    END IF;
    IF v_method NOT IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')
       OR jsonb_typeof(coalesce(p_config->'method', '"POST"')) <> 'string' THEN
        RAISE EXCEPTION 'http tool config: "method" must be GET, POST, PUT, PATCH or DELETE'
            USING ERRCODE = '22023';
    END IF;
    IF v_body NOT IN ('input', 'none')
       OR jsonb_typeof(coalesce(p_config->'body', '"input"')) <> 'string' THEN
        RAISE EXCEPTION 'http tool config: "body" must be "input" (the step input as JSON) or "none"'
            USING ERRCODE = '22023';
    END IF;
    PERFORM eav.http_config_ca_file(p_config->'ca_file', v_url);
    RETURN jsonb_build_object('url', v_url, 'method', v_method, 'body', v_body,
        'headers', eav.http_config_headers(p_config->'headers', 'headers',
            '^[^\x01-\x1f\x7f]*$'),
        'secret_headers', eav.http_config_headers(p_config->'secret_headers',
            'secret_headers', '^[A-Za-z_][A-Za-z0-9_]{0,127}$'),
        'max_output_bytes', coalesce(eav.exec_config_int(p_config,
            'max_output_bytes', 'max_output_bytes', 1, 1048576), 65536))
        || CASE WHEN p_config ? 'ca_file'
                THEN jsonb_build_object('ca_file', p_config->'ca_file')
                ELSE '{}' END;
END;
$$;
COMMENT ON FUNCTION eav.http_config_check(jsonb) IS 'Validates an http tool config and returns it with defaults: url (http or https; {name} placeholders take input fields), method (GET POST PUT PATCH DELETE, default POST), headers (static), secret_headers (header -> secret name, read by the worker from the file <secrets_dir>/<name> or the environment variable of that name; never stored here), body (input, default, or none), max_output_bytes (1 to 1048576, default 65536), ca_file (https only: the absolute path, on the worker''s machine, of a PEM bundle of the CA certificates the far side''s chain must lead to, instead of the system''s; the certificate must also name the URL''s host either way). Raises 22023 naming the field.';
