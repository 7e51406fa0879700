-- 0035_watcher_https: http watchers may probe https URLs.
--
-- The producer verifies the server as the http tool does (common/tls.c:
-- the system's CAs, or the PEM file ca_file names; SNI and the host
-- name or address checked; no switch to turn verification off).  A
-- certificate that does not verify, like any other handshake failure,
-- is a tick error with the reason: watchers count errors and disable
-- themselves past their threshold, so nothing more is needed here.

CREATE OR REPLACE FUNCTION eav.watcher_config_http(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_url text := p_config->>'url';
    v_match jsonb := p_config->'body_match';
    v_ca jsonb := p_config->'ca_file';
BEGIN
    IF jsonb_typeof(p_config->'url') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'watcher config: "url" is missing or not a string'
            USING ERRCODE = '22023', HINT = 'e.g. {"url": "http://127.0.0.1:8080/health"}.';
    END IF;
    IF octet_length(v_url) > 2048
       OR v_url !~* '^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s#]*)?$' THEN
        RAISE EXCEPTION 'watcher config: "url" must be http[s]://host[:port][/path], at most 2048 bytes, without spaces, user info or fragment, not "%"',
            left(v_url, 200) USING ERRCODE = '22023';
    END IF;
    IF substring(v_url from '^[A-Za-z]+://[^/:]+:([0-9]+)')::integer NOT BETWEEN 1 AND 65535 THEN
        RAISE EXCEPTION 'watcher config: "url" has a port out of range 1-65535'
            USING ERRCODE = '22023';
    END IF;
    IF v_match IS NOT NULL AND (jsonb_typeof(v_match) <> 'string'
       OR octet_length(v_match #>> '{}') NOT BETWEEN 1 AND 1024) THEN
        RAISE EXCEPTION 'watcher config: "body_match" must be a string of 1 to 1024 bytes'
            USING ERRCODE = '22023';
    END IF;
    IF v_ca IS NOT NULL THEN
        IF jsonb_typeof(v_ca) <> 'string' OR (v_ca #>> '{}') !~ '^/[^\x01-\x1f\x7f]*$'
           OR octet_length(v_ca #>> '{}') > 1024 THEN
            RAISE EXCEPTION 'watcher config: "ca_file" must be the absolute path of a PEM file, at most 1024 bytes without control characters'
                USING ERRCODE = '22023';
        END IF;
        IF v_url !~* '^https://' THEN
            RAISE EXCEPTION 'watcher config: "ca_file" applies to https URLs only'
                USING ERRCODE = '22023', HINT = 'Use an https:// URL, or drop ca_file.';
        END IF;
    END IF;
    RETURN jsonb_build_object('url', v_url,
        'expect_status', eav.watcher_config_int(p_config, 'expect_status', 100, 599, 200),
        'max_output_bytes', eav.watcher_config_int(p_config, 'max_output_bytes',
            1, 1048576, 65536))
        || CASE WHEN v_match IS NULL THEN '{}'
                ELSE jsonb_build_object('body_match', v_match) END
        || CASE WHEN v_ca IS NULL THEN '{}'
                ELSE jsonb_build_object('ca_file', v_ca) END;
END;
$$;
COMMENT ON FUNCTION eav.watcher_config_http(jsonb) IS 'Checks an http watcher''s probe: url (http[s]://host[:port][/path]), expect_status (100-599, default 200), body_match (optional substring of the body, 1-1024 bytes), max_output_bytes (body bytes read, default 65536), ca_file (https only: the PEM file of the CAs to trust instead of the system''s). Raises 22023.';

CREATE OR REPLACE FUNCTION eav.watcher_config_check(p_kind text, p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_known text[];
    v_bad text;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('exec', 'http') THEN
        RAISE EXCEPTION 'watcher kind must be exec or http, not "%"', coalesce(p_kind, '')
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'watcher config must be a JSON object' USING ERRCODE = '22023';
    END IF;
    v_known := CASE p_kind WHEN 'exec'
        THEN ARRAY['argv', 'env', 'max_output_bytes', 'false_exit']
        ELSE ARRAY['url', 'expect_status', 'body_match', 'max_output_bytes',
                   'ca_file'] END;
    SELECT k INTO v_bad FROM jsonb_object_keys(p_config) k
    WHERE NOT k = ANY (v_known) ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'watcher config: unknown field "%" for kind %', left(v_bad, 200), p_kind
            USING ERRCODE = '22023', HINT = 'Known: ' || array_to_string(v_known, ', ') || '.';
    END IF;
    RETURN CASE p_kind WHEN 'exec' THEN eav.watcher_config_exec(p_config)
                       ELSE eav.watcher_config_http(p_config) END;
END;
$$;
