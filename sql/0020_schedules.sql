-- 0020_schedules: schedules that create tasks at cron slots, with a
-- catch-up policy for slots missed while eav was down.
--
-- Time is PostgreSQL's.  A schedule is a cron expression (5 fields, or
-- @every <duration>, or @hourly/@daily/@weekly/@monthly/@yearly) and a
-- time zone from pg_timezone_names.  The next slot is stored in
-- eav.schedules.next_fire_at, never only in a producer's memory, so a
-- producer that restarts, or a second producer, starts from the same
-- place.
--
-- Cron, as vixie-cron reads it: lists, ranges a-b, steps */n and a-b/n
-- (a/n is a-max/n), month names JAN-DEC and day names SUN-SAT (any case),
-- day-of-week 0 and 7 both Sunday.  When day-of-month and day-of-week are
-- both restricted (neither starts with "*"), a day matches if EITHER
-- does; otherwise both must.  An expression with no slot within 10 years
-- (`* * 31 2 *`) is refused: the longest gap a valid one can have is 8
-- years (29 February across 2100).
--
-- Slots are local wall-clock minutes of the schedule's zone, each firing
-- once.  Daylight saving time:
--   * a local time in a spring-forward gap (02:30 in Berlin on the last
--     Sunday of March) fires once, at the first valid instant after the
--     gap (03:00 CEST), as vixie-cron and cronie do: a daily job is not
--     lost for the year.  Several local times in one gap (*/15 2 * * *)
--     are the same instant, so the same slot: they fire once together.
--   * a local time in a fall-back overlap (02:30 in Berlin on the last
--     Sunday of October happens twice) fires once, at its first
--     occurrence (02:30 CEST); the repeated hour has no slots.  A daily
--     job does not run twice.
-- A schedule that must keep an absolute cadence through DST uses
-- @every: its slots are multiples of the interval since the Unix epoch
-- (UTC), the same for every producer, whatever the zone.
--
-- Firing: eav.schedule_tick, called by the producer, takes the due
-- schedules FOR UPDATE SKIP LOCKED and handles every slot from
-- next_fire_at up to now, in the same transaction as the tasks it
-- creates.  The newest due slot fires "on time" if it is at most
-- settings.schedule_late_ms (60 s) late; every older slot, and a late
-- newest one, was missed, and the schedule's catch_up_policy decides:
--   skip      each missed slot is audited schedule.missed;
--   run_once  the newest missed slot fires (catch_up), the others are
--             audited missed: one run stands for the lot;
--   run_all   the newest run_all_cap missed slots fire, oldest first; any
--             older ones are audited missed.
-- At most settings.schedule_missed_audit_cap (1000) misses per schedule
-- and tick get a row each; the rest one summary row with their count and
-- range.  A backlog of more than 10000 slots is handled 10000 at a time
-- (bounded work per transaction); the slots of a full chunk are all
-- missed, so only the last chunk can fire.
--
-- At most once: every fire first inserts (schedule, slot) into
-- eav.schedule_fires, whose primary key refuses a second fire of a slot
-- even from a producer that read a stale next_fire_at (ON CONFLICT DO
-- NOTHING, audited schedule.duplicate).  Each step gets the idempotency
-- key schedule:<id>:<slot>:<n>, so a tool sees the slot too; a template
-- may not carry its own key (every slot would replay the first outcome).
--
-- A task that cannot be created at fire time (the template became
-- invalid) does not stop the tick: the slot is recorded with the error,
-- audited schedule.fire_failed, and a schedule_failed alarm is raised.
--
-- Kill switch: while one covers a schedule's queue, a tool of its steps,
-- or everything, the tick leaves the schedule alone (holds its slots, as
-- the inbox holds events); on release its catch-up policy handles them
-- as after downtime.  A pause is an operator's decision, not downtime:
-- the slots of a paused schedule are not slots, resume starts from the
-- next slot after now (schedule.paused / schedule.resumed audit the
-- window).
--
-- Templates are checked at add time by the very function that creates
-- the tasks: eav.task_enqueue runs in a subtransaction that is then
-- rolled back, so a schedule cannot be added that eav.task_enqueue would
-- refuse today, and checks added to it later apply here unchanged.

INSERT INTO eav.settings VALUES
    ('schedule_late_ms', 60000, 'How late (ms) the newest due slot of a schedule may be handled and still fire on time; older slots were missed and the catch-up policy decides.'),
    ('schedule_missed_audit_cap', 1000, 'Missed slots of one schedule audited one row each per tick; the rest get one summary row.');

-- Cron parsing ----------------------------------------------------------

CREATE FUNCTION eav.cron_value(p_tok text, p_what text, p_min integer,
    p_max integer, p_names text[], p_base integer)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v integer;
BEGIN
    IF p_tok ~ '^[0-9]{1,4}$' THEN
        v := p_tok::integer;
    ELSE
        v := array_position(p_names, upper(p_tok));
        IF v IS NULL THEN
            RAISE EXCEPTION 'cron %: "%" is not a number%', p_what, p_tok,
                CASE WHEN p_names IS NULL THEN '' ELSE ' or a name' END
                USING ERRCODE = '22023';
        END IF;
        v := v - 1 + p_base;
    END IF;
    IF v NOT BETWEEN p_min AND p_max THEN
        RAISE EXCEPTION 'cron %: % is out of range %-%', p_what, v, p_min, p_max
            USING ERRCODE = '22023';
    END IF;
    RETURN v;
END;
$$;
COMMENT ON FUNCTION eav.cron_value(text, text, integer, integer, text[], integer) IS 'One value of a cron field: a number in range or a name (names[i] is i - 1 + base). Raises 22023 naming the field.';

-- One cron field as the sorted array of the values it allows.
CREATE FUNCTION eav.cron_field(p_text text, p_what text, p_min integer,
    p_max integer, p_star_max integer, p_names text[] DEFAULT NULL,
    p_base integer DEFAULT 0)
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_item text;
    m text[];
    r text[];
    v_lo integer;
    v_hi integer;
    v_step integer;
    v_out integer[] := '{}';
BEGIN
    FOREACH v_item IN ARRAY string_to_array(p_text, ',') LOOP
        m := regexp_match(v_item, '^([^/]+)(?:/([0-9]{1,4}))?$');
        IF m IS NULL THEN
            RAISE EXCEPTION 'cron %: "%" is not a value, range or step', p_what,
                v_item USING ERRCODE = '22023';
        END IF;
        v_step := coalesce(m[2]::integer, 1);
        IF v_step < 1 THEN
            RAISE EXCEPTION 'cron %: step must be at least 1 in "%"', p_what,
                v_item USING ERRCODE = '22023';
        END IF;
        IF m[1] = '*' THEN
            v_lo := p_min;
            v_hi := p_star_max;
        ELSE
            r := regexp_match(m[1], '^([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?$');
            IF r IS NULL THEN
                RAISE EXCEPTION 'cron %: "%" is not a value, range or step',
                    p_what, v_item USING ERRCODE = '22023';
            END IF;
            v_lo := eav.cron_value(r[1], p_what, p_min, p_max, p_names, p_base);
            v_hi := CASE WHEN r[2] IS NOT NULL
                         THEN eav.cron_value(r[2], p_what, p_min, p_max, p_names, p_base)
                         WHEN m[2] IS NOT NULL THEN p_star_max
                         ELSE v_lo END;
            IF v_lo > v_hi THEN
                RAISE EXCEPTION 'cron %: range "%" runs backwards', p_what,
                    v_item USING ERRCODE = '22023';
            END IF;
        END IF;
        v_out := v_out || ARRAY(SELECT generate_series(v_lo, v_hi, v_step));
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT x FROM unnest(v_out) x ORDER BY x);
END;
$$;
COMMENT ON FUNCTION eav.cron_field(text, text, integer, integer, integer, text[], integer) IS 'Parses one cron field (lists, ranges, steps, names) into the sorted values it allows; raises 22023 naming the field.';

-- "90s", "5m", "1h30m", "1d" as seconds.
CREATE FUNCTION eav.cron_every(p_dur text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_s numeric;
BEGIN
    IF p_dur IS NULL OR p_dur !~ '^([0-9]{1,9}[smhd])+$' THEN
        RAISE EXCEPTION '@every needs a duration like 90s, 5m, 1h30m or 1d, not "%"',
            coalesce(p_dur, '') USING ERRCODE = '22023';
    END IF;
    SELECT sum(g[1]::numeric * CASE g[2] WHEN 's' THEN 1 WHEN 'm' THEN 60
                                         WHEN 'h' THEN 3600 ELSE 86400 END)
    INTO v_s FROM regexp_matches(p_dur, '([0-9]+)([smhd])', 'g') AS g;
    IF v_s < 1 OR v_s > 366 * 86400 THEN
        RAISE EXCEPTION '@every must be between 1s and 366d, not %', p_dur
            USING ERRCODE = '22023';
    END IF;
    RETURN v_s::bigint;
END;
$$;
COMMENT ON FUNCTION eav.cron_every(text) IS 'Seconds of an @every duration (units s, m, h, d, combined as in 1h30m; 1 s to 366 d); raises 22023.';

CREATE FUNCTION eav.cron_parse(p_expr text, OUT minutes integer[],
    OUT hours integer[], OUT doms integer[], OUT months integer[],
    OUT dows integer[], OUT dom_any boolean, OUT dow_any boolean,
    OUT every_s bigint)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_expr text := btrim(coalesce(p_expr, ''));
    f text[];
BEGIN
    IF length(v_expr) > 200 THEN
        RAISE EXCEPTION 'a cron expression has at most 200 characters'
            USING ERRCODE = '22023';
    END IF;
    IF v_expr ~* '^@every\s' THEN
        every_s := eav.cron_every(btrim(substr(v_expr, 7)));
        RETURN;
    END IF;
    v_expr := CASE lower(v_expr) WHEN '@hourly' THEN '0 * * * *'
        WHEN '@daily' THEN '0 0 * * *' WHEN '@midnight' THEN '0 0 * * *'
        WHEN '@weekly' THEN '0 0 * * 0' WHEN '@monthly' THEN '0 0 1 * *'
        WHEN '@yearly' THEN '0 0 1 1 *' WHEN '@annually' THEN '0 0 1 1 *'
        ELSE v_expr END;
    IF v_expr LIKE '@%' THEN
        RAISE EXCEPTION 'unknown cron shorthand "%"', v_expr USING ERRCODE = '22023',
            HINT = 'Known: @every <duration>, @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually.';
    END IF;
    f := regexp_split_to_array(v_expr, '\s+');
    IF v_expr = '' OR cardinality(f) <> 5 THEN
        RAISE EXCEPTION 'a cron expression has 5 fields (minute hour day-of-month month day-of-week), not %',
            CASE WHEN v_expr = '' THEN 0 ELSE cardinality(f) END
            USING ERRCODE = '22023';
    END IF;
    minutes := eav.cron_field(f[1], 'minute', 0, 59, 59);
    hours := eav.cron_field(f[2], 'hour', 0, 23, 23);
    doms := eav.cron_field(f[3], 'day-of-month', 1, 31, 31);
    months := eav.cron_field(f[4], 'month', 1, 12, 12,
        '{JAN,FEB,MAR,APR,MAY,JUN,JUL,AUG,SEP,OCT,NOV,DEC}', 1);
    dows := eav.cron_field(f[5], 'day-of-week', 0, 7, 6,
        '{SUN,MON,TUE,WED,THU,FRI,SAT}', 0);
    -- 7 is Sunday too.
    dows := ARRAY(SELECT DISTINCT x % 7 FROM unnest(dows) x ORDER BY 1);
    dom_any := f[3] LIKE '*%';
    dow_any := f[5] LIKE '*%';
END;
$$;
COMMENT ON FUNCTION eav.cron_parse(text) IS 'Parses a cron expression into the minutes, hours, days of month, months and days of week it allows (dom_any/dow_any: the field starts with "*"), or every_s for @every. Raises 22023 naming what is wrong.';

-- The instant of local time p_local in zone p_tz, by the DST rule of the
-- header: a gap fires at its end, an overlap at its first occurrence.
CREATE FUNCTION eav.cron_instant(p_local timestamp, p_tz text)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_at timestamptz := p_local AT TIME ZONE p_tz;
    v_l timestamp := p_local;
    v_prev timestamptz;
    v_first timestamptz;
BEGIN
    IF (v_at AT TIME ZONE p_tz) <> p_local THEN
        -- In a gap (PostgreSQL read it with the offset before the jump):
        -- the first local minute that exists.  Gaps are at most a day.
        FOR i IN 1 .. 2880 LOOP
            v_l := v_l + interval '1 minute';
            v_at := v_l AT TIME ZONE p_tz;
            EXIT WHEN (v_at AT TIME ZONE p_tz) = v_l;
        END LOOP;
        RETURN v_at;
    END IF;
    -- PostgreSQL reads an ambiguous time as the later occurrence; with the
    -- offset of a few hours before, it may exist earlier too.
    v_prev := v_at - interval '6 hours';
    v_first := (p_local - ((v_prev AT TIME ZONE p_tz) - (v_prev AT TIME ZONE 'UTC')))
               AT TIME ZONE 'UTC';
    IF v_first < v_at AND (v_first AT TIME ZONE p_tz) = p_local THEN
        RETURN v_first;
    END IF;
    RETURN v_at;
END;
$$;
COMMENT ON FUNCTION eav.cron_instant(timestamp, text) IS 'The instant a local time of zone p_tz fires: in a spring-forward gap the first valid instant after it, in a fall-back overlap its first occurrence.';

CREATE FUNCTION eav.cron_next(p_expr text, p_tz text, p_after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c record;
    v_start timestamp := date_trunc('minute', p_after AT TIME ZONE p_tz);
    v_day date := v_start::date;
    v_end date := (v_start + interval '10 years')::date;
    v_l timestamp;
    v_at timestamptz;
    v_dom boolean;
    v_dow boolean;
    h integer;
    m integer;
BEGIN
    SELECT * INTO c FROM eav.cron_parse(p_expr);
    IF c.every_s IS NOT NULL THEN
        RETURN to_timestamp((floor(extract(epoch FROM p_after) / c.every_s) + 1)
                            * c.every_s);
    END IF;
    WHILE v_day <= v_end LOOP
        IF NOT extract(month FROM v_day)::integer = ANY (c.months) THEN
            v_day := (date_trunc('month', v_day) + interval '1 month')::date;
            CONTINUE;
        END IF;
        v_dom := extract(day FROM v_day)::integer = ANY (c.doms);
        v_dow := extract(dow FROM v_day)::integer = ANY (c.dows);
        -- vixie-cron: both restricted, either matches; else both must.
        IF (c.dom_any OR c.dow_any) AND v_dom AND v_dow
           OR NOT (c.dom_any OR c.dow_any) AND (v_dom OR v_dow) THEN
            FOREACH h IN ARRAY c.hours LOOP
                CONTINUE WHEN v_day = v_start::date
                              AND h < extract(hour FROM v_start);
                FOREACH m IN ARRAY c.minutes LOOP
                    v_l := v_day + make_time(h, m, 0);
                    CONTINUE WHEN v_l < v_start;
                    v_at := eav.cron_instant(v_l, p_tz);
                    IF v_at > p_after THEN
                        RETURN v_at;
                    END IF;
                END LOOP;
            END LOOP;
        END IF;
        v_day := v_day + 1;
    END LOOP;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.cron_next(text, text, timestamptz) IS 'The first slot of a cron expression in zone p_tz strictly after p_after (DST rule: see eav.cron_instant; @every: multiples of the interval since the Unix epoch), or NULL if none within 10 years.';

CREATE FUNCTION eav.cron_next_n(p_expr text, p_tz text, p_after timestamptz,
    p_n integer)
RETURNS SETOF timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_at timestamptz := p_after;
BEGIN
    IF p_n IS NULL OR p_n NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'count must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. p_n LOOP
        v_at := eav.cron_next(p_expr, p_tz, v_at);
        EXIT WHEN v_at IS NULL;
        RETURN NEXT v_at;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.cron_next_n(text, text, timestamptz, integer) IS 'The next p_n (1 to 1000) slots of a cron expression after p_after.';

-- The zone as pg_timezone_names spells it (any case accepted), or 22023.
CREATE FUNCTION eav.cron_tz(p_tz text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_name text;
BEGIN
    SELECT name INTO v_name FROM pg_timezone_names
    WHERE lower(name) = lower(p_tz) ORDER BY name = p_tz DESC LIMIT 1;
    IF v_name IS NULL THEN
        RAISE EXCEPTION 'unknown time zone "%"', coalesce(p_tz, '')
            USING ERRCODE = '22023',
                  HINT = 'Use a name of pg_timezone_names, e.g. Europe/Berlin or UTC.';
    END IF;
    RETURN v_name;
END;
$$;
COMMENT ON FUNCTION eav.cron_tz(text) IS 'Checks a time zone name against pg_timezone_names (POSIX strings and abbreviations are refused) and returns its spelling there; raises 22023.';

-- Tables ------------------------------------------------------------------

CREATE TABLE eav.schedules (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    cron            text NOT NULL,
    tz              text NOT NULL,
    queue           text NOT NULL REFERENCES eav.queues (name),
    kind            text NOT NULL,
    steps           jsonb NOT NULL,
    catch_up_policy text NOT NULL
                    CHECK (catch_up_policy IN ('skip', 'run_once', 'run_all')),
    run_all_cap     integer NOT NULL CHECK (run_all_cap BETWEEN 1 AND 1000),
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'paused', 'removed')),
    next_fire_at    timestamptz,
    last_slot       timestamptz,
    last_fired_at   timestamptz,
    fires           bigint NOT NULL DEFAULT 0,
    misses          bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    changed_by      text NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (state = 'active' OR next_fire_at IS NULL)
);
CREATE UNIQUE INDEX schedules_name ON eav.schedules (name) WHERE state <> 'removed';
CREATE INDEX schedules_due ON eav.schedules (next_fire_at) WHERE state = 'active';
COMMENT ON TABLE eav.schedules IS 'Schedules: a cron expression in a time zone and a task template, fired by eav.schedule_tick. Changed only through eav.schedule_add, _pause, _resume, _remove (audited).';
COMMENT ON COLUMN eav.schedules.id IS 'Schedule id (never reused; fires refer to it).';
COMMENT ON COLUMN eav.schedules.name IS 'Name, unique among schedules not removed.';
COMMENT ON COLUMN eav.schedules.cron IS 'Cron expression (5 fields), @every <duration> or a shorthand such as @daily.';
COMMENT ON COLUMN eav.schedules.tz IS 'Time zone of the cron fields (a pg_timezone_names name).';
COMMENT ON COLUMN eav.schedules.queue IS 'Queue of the tasks it creates.';
COMMENT ON COLUMN eav.schedules.kind IS 'Kind of the tasks it creates.';
COMMENT ON COLUMN eav.schedules.steps IS 'Steps of the tasks it creates (as eav.task_enqueue takes them, without idempotency keys).';
COMMENT ON COLUMN eav.schedules.catch_up_policy IS 'What happens to missed slots: skip, run_once or run_all.';
COMMENT ON COLUMN eav.schedules.run_all_cap IS 'run_all: most missed slots fired in one catch-up (the newest).';
COMMENT ON COLUMN eav.schedules.state IS 'active, paused or removed.';
COMMENT ON COLUMN eav.schedules.next_fire_at IS 'Oldest slot not yet handled (NULL unless active).';
COMMENT ON COLUMN eav.schedules.last_slot IS 'Newest slot handled (fired or missed).';
COMMENT ON COLUMN eav.schedules.last_fired_at IS 'When a slot last created a task.';
COMMENT ON COLUMN eav.schedules.fires IS 'Slots that created a task.';
COMMENT ON COLUMN eav.schedules.misses IS 'Slots missed (audited schedule.missed).';
COMMENT ON COLUMN eav.schedules.failures IS 'Slots whose task could not be created (audited schedule.fire_failed).';
COMMENT ON COLUMN eav.schedules.created_by IS 'Actor that added it.';
COMMENT ON COLUMN eav.schedules.created_at IS 'When it was added.';
COMMENT ON COLUMN eav.schedules.changed_by IS 'Actor of the last change of state.';
COMMENT ON COLUMN eav.schedules.changed_at IS 'When its state last changed.';

CREATE TABLE eav.schedule_fires (
    schedule_id bigint NOT NULL REFERENCES eav.schedules (id),
    slot        timestamptz NOT NULL,
    fire        text NOT NULL CHECK (fire IN ('on_time', 'catch_up')),
    task_id     bigint,
    error       text,
    fired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    fired_by    text NOT NULL,
    PRIMARY KEY (schedule_id, slot)
);
CREATE INDEX schedule_fires_task ON eav.schedule_fires (task_id);
COMMENT ON TABLE eav.schedule_fires IS 'One row per slot that fired: the primary key makes each (schedule, slot) fire at most once, whichever producer gets there.';
COMMENT ON COLUMN eav.schedule_fires.schedule_id IS 'Schedule.';
COMMENT ON COLUMN eav.schedule_fires.slot IS 'The slot (instant) that fired.';
COMMENT ON COLUMN eav.schedule_fires.fire IS 'on_time (the newest due slot, not late) or catch_up (a missed slot the policy ran).';
COMMENT ON COLUMN eav.schedule_fires.task_id IS 'Task created; NULL if it could not be (see error).';
COMMENT ON COLUMN eav.schedule_fires.error IS 'Why the task could not be created.';
COMMENT ON COLUMN eav.schedule_fires.fired_at IS 'When the task was created (slot latency = fired_at - slot).';
COMMENT ON COLUMN eav.schedule_fires.fired_by IS 'Producer (actor) that fired it.';

-- Changes -----------------------------------------------------------------

-- Checks a template by creating its task in a subtransaction that is then
-- rolled back: exactly eav.task_enqueue's checks, today's and later ones.
CREATE FUNCTION eav.schedule_template_check(p_queue text, p_kind text,
    p_steps jsonb, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_steps) = 'array' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_steps) e
            WHERE jsonb_typeof(e) = 'object' AND e ? 'idempotency_key') THEN
        RAISE EXCEPTION 'task template: a schedule''s steps carry no idempotency_key'
            USING ERRCODE = '22023',
                  HINT = 'Each slot gets its own: schedule:<id>:<slot>:<step>.';
    END IF;
    BEGIN
        PERFORM eav.task_enqueue(p_queue, p_kind, p_steps, p_actor);
        RAISE EXCEPTION 'template ok' USING ERRCODE = 'EAS01';
    EXCEPTION
        WHEN SQLSTATE 'EAS01' THEN
            NULL;
        WHEN data_exception OR program_limit_exceeded
             OR integrity_constraint_violation THEN
            RAISE EXCEPTION 'task template: %', SQLERRM USING ERRCODE = SQLSTATE;
    END;
END;
$$;
COMMENT ON FUNCTION eav.schedule_template_check(text, text, jsonb, text) IS 'Raises what eav.task_enqueue would raise for this template (prefixed "task template:"), storing nothing; steps may not carry an idempotency_key.';

CREATE FUNCTION eav.schedule_add(p_name text, p_cron text, p_queue text,
    p_kind text, p_steps jsonb, p_tz text DEFAULT 'UTC',
    p_policy text DEFAULT 'skip', p_cap integer DEFAULT 10,
    p_actor text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_tz text;
    v_next timestamptz;
    v_id bigint;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'a schedule name is 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM eav.schedules WHERE name = p_name AND state <> 'removed') THEN
        RAISE EXCEPTION 'a schedule named "%" exists', p_name
            USING ERRCODE = '22023', HINT = 'Remove it first (eav.schedule_remove).';
    END IF;
    IF p_policy IS NULL OR p_policy NOT IN ('skip', 'run_once', 'run_all') THEN
        RAISE EXCEPTION 'catch_up_policy must be skip, run_once or run_all, not "%"',
            coalesce(p_policy, '') USING ERRCODE = '22023';
    END IF;
    IF p_cap IS NULL OR p_cap NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'run_all_cap must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    v_tz := eav.cron_tz(p_tz);
    PERFORM eav.cron_parse(p_cron);
    v_next := eav.cron_next(p_cron, v_tz, now());
    IF v_next IS NULL THEN
        RAISE EXCEPTION 'cron expression "%" never fires (no slot within 10 years)',
            p_cron USING ERRCODE = '22023';
    END IF;
    PERFORM eav.schedule_template_check(p_queue, p_kind, p_steps, v_actor);
    INSERT INTO eav.schedules (name, cron, tz, queue, kind, steps,
        catch_up_policy, run_all_cap, next_fire_at, created_by, changed_by)
    VALUES (p_name, btrim(p_cron), v_tz, p_queue, p_kind, p_steps, p_policy,
        p_cap, v_next, v_actor, v_actor)
    RETURNING id INTO v_id;
    PERFORM eav.audit('schedule.added', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('schedule', p_name, 'schedule_id', v_id,
            'cron', btrim(p_cron), 'tz', v_tz, 'queue', p_queue, 'kind', p_kind,
            'catch_up_policy', p_policy, 'run_all_cap', p_cap,
            'next_fire_at', v_next));
    PERFORM pg_notify('eav_schedules', p_name);
    RETURN v_next;
END;
$$;
COMMENT ON FUNCTION eav.schedule_add(text, text, text, text, jsonb, text, text, integer, text) IS 'Adds a schedule (audited schedule.added, NOTIFY eav_schedules) and returns its first slot. Raises 22023 for a bad name, cron expression (or one that never fires), time zone, policy, cap or task template; nothing is stored then.';

-- The schedule by name (not removed), locked, or EA004.
CREATE FUNCTION eav.schedule_get(p_name text)
RETURNS eav.schedules
LANGUAGE plpgsql AS $$
DECLARE
    s eav.schedules;
BEGIN
    SELECT * INTO s FROM eav.schedules
    WHERE name = p_name AND state <> 'removed' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no schedule "%"', coalesce(p_name, '')
            USING ERRCODE = 'EA004', HINT = 'eav.proj_schedules lists them.';
    END IF;
    RETURN s;
END;
$$;
COMMENT ON FUNCTION eav.schedule_get(text) IS 'Locks and returns a schedule that is not removed, or raises EA004.';

-- active <-> paused, any -> removed; audited schedule.<p_event>.
CREATE FUNCTION eav.schedule_set_state(p_name text, p_from text[],
    p_to text, p_event text, p_actor text)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    s eav.schedules := eav.schedule_get(p_name);
    v_next timestamptz;
BEGIN
    IF NOT s.state = ANY (p_from) THEN
        RAISE EXCEPTION 'schedule "%" is %', p_name, s.state USING ERRCODE = 'EA003';
    END IF;
    IF p_to = 'active' THEN
        -- A pause is not downtime: no catch-up for its slots.
        v_next := eav.cron_next(s.cron, s.tz, now());
    END IF;
    UPDATE eav.schedules SET state = p_to, next_fire_at = v_next,
        changed_by = v_actor, changed_at = now()
    WHERE id = s.id;
    PERFORM eav.audit('schedule.' || p_event, 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('schedule', p_name, 'schedule_id', s.id,
            'from', s.state, 'next_fire_at', v_next,
            'unhandled_since', s.next_fire_at));
    IF p_to = 'active' THEN
        PERFORM pg_notify('eav_schedules', p_name);
    END IF;
    RETURN v_next;
END;
$$;
COMMENT ON FUNCTION eav.schedule_set_state(text, text[], text, text, text) IS 'Moves a schedule between states (EA003 if not from one of p_from), audited schedule.<p_event>; becoming active sets the next slot after now.';

CREATE FUNCTION eav.schedule_pause(p_name text, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    SELECT FROM eav.schedule_set_state(p_name, '{active}', 'paused', 'paused', p_actor);
$$;
COMMENT ON FUNCTION eav.schedule_pause(text, text) IS 'Pauses an active schedule (audited schedule.paused); its slots until resumed are not fired nor caught up.';

CREATE FUNCTION eav.schedule_resume(p_name text, p_actor text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE sql AS $$
    SELECT eav.schedule_set_state(p_name, '{paused}', 'active', 'resumed', p_actor);
$$;
COMMENT ON FUNCTION eav.schedule_resume(text, text) IS 'Resumes a paused schedule from its next slot after now (audited schedule.resumed, NOTIFY eav_schedules); returns that slot.';

CREATE FUNCTION eav.schedule_remove(p_name text, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    SELECT FROM eav.schedule_set_state(p_name, '{active,paused}', 'removed',
        'removed', p_actor);
$$;
COMMENT ON FUNCTION eav.schedule_remove(text, text) IS 'Removes a schedule (audited schedule.removed); its row and fires stay for the record and its name is free again.';

-- Firing --------------------------------------------------------------------

CREATE FUNCTION eav.schedule_is_killed(s eav.schedules, p_queues text[],
    p_tools text[])
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT s.queue = ANY (coalesce(p_queues, '{}'))
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(s.steps) st
                   WHERE st->>'tool' = ANY (coalesce(p_tools, '{}')));
$$;
COMMENT ON FUNCTION eav.schedule_is_killed(eav.schedules, text[], text[]) IS 'True if the schedule''s tasks would go to one of these queues or call one of these tools.';

-- Audits missed slots: one row each up to the cap, then one summary.
CREATE FUNCTION eav.schedule_miss(s eav.schedules, p_slots timestamptz[],
    p_reason text, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := coalesce(cardinality(p_slots), 0);
    v_cap integer := eav.setting('schedule_missed_audit_cap');
BEGIN
    FOR i IN 1 .. least(v_n, v_cap) LOOP
        PERFORM eav.audit('schedule.missed', 'failure', p_actor, NULL, NULL, NULL,
            jsonb_build_object('schedule', s.name, 'schedule_id', s.id,
                'slot', p_slots[i], 'reason', p_reason,
                'local', (p_slots[i] AT TIME ZONE s.tz)::text));
    END LOOP;
    IF v_n > v_cap THEN
        PERFORM eav.audit('schedule.missed', 'failure', p_actor, NULL, NULL, NULL,
            jsonb_build_object('schedule', s.name, 'schedule_id', s.id,
                'summary', true, 'slots', v_n - v_cap,
                'first_slot', p_slots[v_cap + 1], 'last_slot', p_slots[v_n],
                'reason', p_reason));
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.schedule_miss(eav.schedules, timestamptz[], text, text) IS 'Audits missed slots as schedule.missed with the reason: one row per slot up to settings.schedule_missed_audit_cap, then one summary row (count, first and last slot).';

-- Fires one slot: claims (schedule, slot), then creates the task.
CREATE FUNCTION eav.schedule_fire(s eav.schedules, p_slot timestamptz,
    p_fire text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_key text := format('schedule:%s:%s', s.id,
        to_char(p_slot AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS"Z"'));
    v_steps jsonb;
    v_task bigint;
    v_trace uuid;
BEGIN
    INSERT INTO eav.schedule_fires (schedule_id, slot, fire, fired_by)
    VALUES (s.id, p_slot, p_fire, p_actor) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        PERFORM eav.audit('schedule.duplicate', 'refused', p_actor, NULL, NULL, NULL,
            jsonb_build_object('schedule', s.name, 'schedule_id', s.id,
                'slot', p_slot, 'reason', 'the slot has fired already'));
        RETURN NULL;
    END IF;
    SELECT jsonb_agg(e || jsonb_build_object('idempotency_key', v_key || ':' || n)
                     ORDER BY n)
    INTO v_steps FROM jsonb_array_elements(s.steps) WITH ORDINALITY AS a(e, n);
    BEGIN
        v_task := eav.task_enqueue(s.queue, s.kind, v_steps, p_actor);
    EXCEPTION WHEN data_exception OR program_limit_exceeded
                   OR integrity_constraint_violation THEN
        UPDATE eav.schedule_fires SET error = SQLERRM
        WHERE schedule_id = s.id AND slot = p_slot;
        UPDATE eav.schedules SET failures = failures + 1 WHERE id = s.id;
        PERFORM eav.audit('schedule.fire_failed', 'failure', p_actor, NULL, NULL,
            NULL, jsonb_build_object('schedule', s.name, 'schedule_id', s.id,
                'slot', p_slot, 'fire', p_fire, 'error', SQLERRM));
        PERFORM eav.alarm_raise('schedule_failed', 'warning', 'schedule:' || s.name,
            format('schedule %s could not create its task: %s', s.name, SQLERRM),
            jsonb_build_object('slot', p_slot), p_actor);
        RETURN NULL;
    END;
    SELECT trace_id INTO v_trace FROM eav.tasks WHERE id = v_task;
    UPDATE eav.schedule_fires SET task_id = v_task, fired_at = clock_timestamp()
    WHERE schedule_id = s.id AND slot = p_slot;
    UPDATE eav.schedules SET fires = fires + 1, last_fired_at = now()
    WHERE id = s.id;
    PERFORM eav.audit('schedule.fired', 'success', p_actor, v_trace, v_task, NULL,
        jsonb_build_object('schedule', s.name, 'schedule_id', s.id,
            'slot', p_slot, 'fire', p_fire,
            'local', (p_slot AT TIME ZONE s.tz)::text,
            'late_ms', round(extract(epoch FROM clock_timestamp() - p_slot) * 1000)));
    RETURN v_task;
END;
$$;
COMMENT ON FUNCTION eav.schedule_fire(eav.schedules, timestamptz, text, text) IS 'Fires one slot: inserts (schedule, slot) into eav.schedule_fires (a second fire is refused, audited schedule.duplicate), creates the task (steps keyed schedule:<id>:<slot>:<n>), audits schedule.fired; a task that cannot be created is recorded, audited schedule.fire_failed and alarmed schedule_failed.';

-- Handles every due slot of one locked schedule by its catch-up policy.
CREATE FUNCTION eav.schedule_run(s eav.schedules, p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
    v_slots timestamptz[] := '{}';
    v_slot timestamptz := s.next_fire_at;
    v_n integer;
    v_missed integer;
    v_catch integer := 0;
    v_on_time boolean := false;
    v_reason text;
BEGIN
    -- Bounded work per transaction: a longer backlog takes several ticks.
    WHILE v_slot IS NOT NULL AND v_slot <= v_now AND cardinality(v_slots) < 10000 LOOP
        v_slots := v_slots || v_slot;
        v_slot := eav.cron_next(s.cron, s.tz, v_slot);
    END LOOP;
    v_n := cardinality(v_slots);
    IF v_slot IS NULL OR v_slot > v_now THEN
        v_on_time := v_now - v_slots[v_n]
                     <= eav.setting('schedule_late_ms') * interval '1 millisecond';
        v_missed := v_n - v_on_time::integer;
        v_catch := CASE s.catch_up_policy WHEN 'skip' THEN 0
                   WHEN 'run_once' THEN least(1, v_missed)
                   ELSE least(s.run_all_cap, v_missed) END;
        v_reason := CASE s.catch_up_policy
            WHEN 'skip' THEN 'missed; catch_up_policy skip'
            WHEN 'run_once' THEN 'missed; catch_up_policy run_once: the run of a newer slot stands for it'
            ELSE format('missed; over the run_all_cap of %s', s.run_all_cap) END;
    ELSE
        v_missed := v_n;
        v_reason := 'missed; part of a backlog of more than 10000 slots';
    END IF;
    PERFORM eav.schedule_miss(s, v_slots[1:v_missed - v_catch], v_reason, p_actor);
    FOR i IN v_missed - v_catch + 1 .. v_n LOOP
        PERFORM eav.schedule_fire(s, v_slots[i],
            CASE WHEN i > v_missed THEN 'on_time' ELSE 'catch_up' END, p_actor);
    END LOOP;
    UPDATE eav.schedules SET next_fire_at = v_slot, last_slot = v_slots[v_n],
        misses = misses + v_missed - v_catch,
        state = CASE WHEN v_slot IS NULL THEN 'paused' ELSE state END
    WHERE id = s.id;
    IF v_slot IS NULL THEN
        PERFORM eav.audit('schedule.paused', 'failure', p_actor, NULL, NULL, NULL,
            jsonb_build_object('schedule', s.name, 'schedule_id', s.id,
                'reason', 'no slot within 10 years'));
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.schedule_run(eav.schedules, text) IS 'Handles the due slots of one schedule (locked by the caller): the newest fires on time if not later than settings.schedule_late_ms; the missed ones are fired or audited per catch_up_policy; sets next_fire_at to the next slot after now.';

CREATE FUNCTION eav.schedule_tick(p_actor text, p_limit integer DEFAULT 100)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s eav.schedules;
    v_all boolean;
    v_kq text[];
    v_kt text[];
    v_n integer := 0;
    v_next timestamptz;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit must be at least 1' USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(eav.kill_switch_lock_id());
    SELECT * INTO v_all, v_kq, v_kt FROM eav.kill_switch_scopes();
    IF v_all THEN
        RETURN NULL;
    END IF;
    -- A schedule under a kill switch is stepped over (held), so no limit
    -- while one is engaged: the cursor locks as it goes.
    FOR s IN
        SELECT * FROM eav.schedules sc
        WHERE sc.state = 'active' AND sc.next_fire_at <= now()
        ORDER BY sc.next_fire_at
        LIMIT CASE WHEN v_kq IS NULL AND v_kt IS NULL THEN p_limit END
        FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN v_n >= p_limit;
        CONTINUE WHEN eav.schedule_is_killed(s, v_kq, v_kt);
        v_n := v_n + 1;
        PERFORM eav.schedule_run(s, p_actor);
    END LOOP;
    IF v_n >= p_limit THEN
        RETURN 0;
    END IF;
    SELECT min(sc.next_fire_at) INTO v_next FROM eav.schedules sc
    WHERE sc.state = 'active'
      AND ((v_kq IS NULL AND v_kt IS NULL)
           OR NOT eav.schedule_is_killed(sc, v_kq, v_kt));
    -- greatest() skips a NULL: no schedule must stay NULL, not 0.
    RETURN CASE WHEN v_next IS NOT NULL THEN
        greatest(0, ceil(extract(epoch FROM v_next - clock_timestamp()) * 1000)) END;
END;
$$;
COMMENT ON FUNCTION eav.schedule_tick(text, integer) IS 'Producer step: handles up to p_limit due schedules (FOR UPDATE SKIP LOCKED; those under a kill switch are held) and returns the milliseconds until the next slot is due (0: due now, NULL: none, or everything is stopped). The caller commits.';

-- Projection ------------------------------------------------------------------

CREATE VIEW eav.proj_schedules AS
SELECT s.name, s.cron, s.tz, s.state, s.catch_up_policy, s.run_all_cap,
       s.queue, s.kind, s.next_fire_at, s.last_slot, s.last_fired_at,
       s.fires, s.misses, s.failures,
       s.state = 'active' AND (k.p_all OR eav.schedule_is_killed(s, k.p_queues, k.p_tools))
           AS held_by_kill_switch
FROM eav.schedules s CROSS JOIN eav.kill_switch_scopes() k
WHERE s.state <> 'removed';
COMMENT ON VIEW eav.proj_schedules IS 'Schedules with their next and last slot, fires, misses and failures: table eav.proj_schedules.';
COMMENT ON COLUMN eav.proj_schedules.name IS 'Schedule name.';
COMMENT ON COLUMN eav.proj_schedules.cron IS 'Cron expression.';
COMMENT ON COLUMN eav.proj_schedules.tz IS 'Time zone.';
COMMENT ON COLUMN eav.proj_schedules.state IS 'active or paused.';
COMMENT ON COLUMN eav.proj_schedules.catch_up_policy IS 'skip, run_once or run_all.';
COMMENT ON COLUMN eav.proj_schedules.run_all_cap IS 'run_all: most missed slots fired at once.';
COMMENT ON COLUMN eav.proj_schedules.queue IS 'Queue of its tasks.';
COMMENT ON COLUMN eav.proj_schedules.kind IS 'Kind of its tasks.';
COMMENT ON COLUMN eav.proj_schedules.next_fire_at IS 'Next slot to handle.';
COMMENT ON COLUMN eav.proj_schedules.last_slot IS 'Newest slot handled.';
COMMENT ON COLUMN eav.proj_schedules.last_fired_at IS 'When it last created a task.';
COMMENT ON COLUMN eav.proj_schedules.fires IS 'Slots that created a task.';
COMMENT ON COLUMN eav.proj_schedules.misses IS 'Slots missed.';
COMMENT ON COLUMN eav.proj_schedules.failures IS 'Slots whose task could not be created.';
COMMENT ON COLUMN eav.proj_schedules.held_by_kill_switch IS 'True while a kill switch holds its slots.';
