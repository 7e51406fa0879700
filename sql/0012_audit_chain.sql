-- 0012: a tamper-evident audit log (issue 7).  Transitions keep appending
-- to eav.audit_events exactly as before; a single sealer (eav.audit_seal,
-- called by eavd every audit.seal_interval) chains the committed rows
-- shortly after, the way a transparency log does.  No transition waits on
-- a lock the others hold: the only new cost on the write path is that a
-- row's id is drawn after its transaction has an xid (below).
--
-- The chain.  eav.audit_chain holds one row per sealed event: its event
-- id, a gapless seq (1, 2, ...), the previous link's hash and its own:
--
--   digest = sha256(utf8(eav.audit_canonical(event)))
--   hash   = sha256(prev_hash || int8send(seq) || digest)
--
-- with 32 zero bytes as the prev_hash of seq 1.  The canonical form uses
-- only integers (id, UTC microseconds since the epoch), text as stored and
-- jsonb's own canonical text (keys sorted), each length-prefixed, so no
-- session setting (DateStyle, TimeZone, extra_float_digits) changes it;
-- eavctl audit verify recomputes it in C from the raw columns.  The seal
-- lives in its own insert-only table rather than in columns of
-- audit_events so that audit_events stays strictly append-only (no
-- trigger exception for the sealer, no second version of every row).
--
-- The order: seq follows id.  The sealer only ever seals the rows of
-- an id range below a horizon H under which no row can still appear, so
-- the sealed rows are always exactly the events with id <= the head's id
-- and seq order is id order.  That makes the chain one order no writer can
-- fork (one sealer at a time, by an advisory lock; seq unique), lets
-- verify walk both tables by id, and makes a row inserted behind the
-- head (a back-dated forgery) visible as an unsealed id inside the sealed
-- range.
--
-- Why H is safe.  Ids come from a sequence, and nextval is not
-- transactional: a transaction may draw id 100, the one after it id 101
-- and commit first.  Row 100 must not be left behind once 101 is sealed.
-- The column default therefore calls pg_current_xact_id() before nextval,
-- so every writer has its xid before it has its id.  Each round the
-- sealer (1) reads S = the sequence's last value, and only after that
-- (2) takes its own xid X.  Any row with id <= S drew its id before (1),
-- hence got its xid before (1), hence before X: xids are handed out in
-- order.  Once every xid below X has ended -- the xmin of a later
-- snapshot is >= X -- each row with id <= S is committed and visible, or
-- will never exist.  (S, X) is kept in eav.audit_seal_state as the pending
-- horizon; the first round that finds xmin >= X makes S the safe horizon
-- and records a new pending one.  Read-only transactions (pg_dump, a
-- report) have no xid and never hold the sealer back; a long writing
-- transaction does, for as long as it runs, which the sealing delay
-- (audit_chain.sealed_at - audit_events.at) shows.
--
-- What protects the unsealed tail (a few hundred milliseconds of rows) is
-- what protected every row before: the append-only triggers (and, later,
-- the grants).  What the chain adds is detection: a sealed row changed,
-- removed, reordered or inserted breaks it, and the head written outside
-- the database by eavctl audit anchor catches a rewritten or cut tail.

-- Ids after xids --------------------------------------------------------

DO $$
DECLARE
    v_last bigint;
BEGIN
    v_last := greatest(
        coalesce(pg_sequence_last_value(
            pg_get_serial_sequence('eav.audit_events', 'id')::regclass), 0),
        coalesce((SELECT max(id) FROM eav.audit_events), 0));
    ALTER TABLE eav.audit_events ALTER COLUMN id DROP IDENTITY;
    CREATE SEQUENCE eav.audit_events_id_seq AS bigint
        OWNED BY eav.audit_events.id;
    PERFORM setval('eav.audit_events_id_seq', v_last + 1, false);
END;
$$;
COMMENT ON SEQUENCE eav.audit_events_id_seq IS 'Ids of eav.audit_events; drawn only after the writer has an xid (see the column default), which eav.audit_seal relies on.';

-- CASE evaluates its condition first: the xid exists before the id.
ALTER TABLE eav.audit_events ALTER COLUMN id SET DEFAULT
    CASE WHEN pg_current_xact_id() IS NOT NULL
         THEN nextval('eav.audit_events_id_seq') END;
COMMENT ON COLUMN eav.audit_events.id IS 'Event id, increasing (not gapless); drawn after the writing transaction has its xid, so the sealer can tell when no lower id can still commit. Sealed in id order: see eav.audit_chain.';

-- The chain ------------------------------------------------------------

CREATE TABLE eav.audit_chain (
    seq       bigint PRIMARY KEY CHECK (seq > 0),
    id        bigint NOT NULL UNIQUE,
    prev_hash bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash      bytea NOT NULL CHECK (octet_length(hash) = 32),
    sealed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE eav.audit_chain IS 'Hash chain over eav.audit_events, written only by eav.audit_seal: one row per sealed event, seq in id order. Insert-only; eavctl audit verify recomputes it.';
COMMENT ON COLUMN eav.audit_chain.seq IS 'Position in the chain: 1, 2, ... without gaps, in event id order.';
COMMENT ON COLUMN eav.audit_chain.id IS 'The eav.audit_events row sealed.';
COMMENT ON COLUMN eav.audit_chain.prev_hash IS 'hash of seq - 1 (32 zero bytes for seq 1).';
COMMENT ON COLUMN eav.audit_chain.hash IS 'sha256(prev_hash || int8send(seq) || sha256(canonical form of the event)).';
COMMENT ON COLUMN eav.audit_chain.sealed_at IS 'When the row was sealed (not hashed): sealed_at - the event''s at is the sealing delay.';

CREATE TABLE eav.audit_seal_state (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    safe_id       bigint NOT NULL DEFAULT 0,
    pending_id    bigint NOT NULL DEFAULT 0,
    pending_xmax  xid8 NOT NULL DEFAULT '0'
);
COMMENT ON TABLE eav.audit_seal_state IS 'The sealer''s horizons (one row); see the header of sql/0012_audit_chain.sql.';
COMMENT ON COLUMN eav.audit_seal_state.one IS 'Always true: the table has one row.';
COMMENT ON COLUMN eav.audit_seal_state.safe_id IS 'No event with an id up to this can still commit: the sealer may seal up to it.';
COMMENT ON COLUMN eav.audit_seal_state.pending_id IS 'The audit id sequence''s last value, read before pending_xmax was taken.';
COMMENT ON COLUMN eav.audit_seal_state.pending_xmax IS 'The sealer''s xid, taken after pending_id was read: once every xid below it has ended, pending_id becomes safe_id.';
INSERT INTO eav.audit_seal_state DEFAULT VALUES;

-- The append-only trigger names the table it guards.
CREATE OR REPLACE FUNCTION eav.audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'eav.% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'EA009',
              HINT = 'Audit rows cannot be changed or removed.';
END;
$$;
COMMENT ON FUNCTION eav.audit_refuse_change() IS 'Trigger that refuses UPDATE, DELETE and TRUNCATE on eav.audit_events and eav.audit_chain.';

CREATE TRIGGER audit_chain_append_only
    BEFORE UPDATE OR DELETE ON eav.audit_chain
    FOR EACH ROW EXECUTE FUNCTION eav.audit_refuse_change();
CREATE TRIGGER audit_chain_no_truncate
    BEFORE TRUNCATE ON eav.audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION eav.audit_refuse_change();

-- Once per statement, not per row: the sealer inserts thousands at once.
CREATE FUNCTION eav.audit_chain_only_sealer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('eav.sealing', true), '') <> 'on' THEN
        RAISE EXCEPTION 'eav.audit_chain is written only by eav.audit_seal'
            USING ERRCODE = 'EA009';
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.audit_chain_only_sealer() IS 'Trigger that refuses an INSERT into eav.audit_chain outside eav.audit_seal (which sets eav.sealing for its transaction).';

CREATE TRIGGER audit_chain_sealer_only
    BEFORE INSERT ON eav.audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION eav.audit_chain_only_sealer();

-- Canonical form --------------------------------------------------------

-- STABLE only because extract() and text || integer are: the planner
-- inlines these into the sealer's query only when no volatility is
-- promised that the body does not keep (an uninlined call costs 100 times
-- more).  Neither depends on any setting in fact.
CREATE FUNCTION eav.audit_field(p text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p IS NULL THEN 'N'
                ELSE 'S' || octet_length(p)::text || ':' || p END
$$;
COMMENT ON FUNCTION eav.audit_field(text) IS 'One field of the canonical form: N for NULL, else S<byte length>:<text>.';

CREATE FUNCTION eav.audit_canonical(e eav.audit_events) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 'eav.audit.v1'
        || eav.audit_field(e.id::text)
        || eav.audit_field(((extract(epoch FROM e.at) * 1000000)::bigint)::text)
        || eav.audit_field(e.type)
        || eav.audit_field(e.outcome)
        || eav.audit_field(e.actor)
        || eav.audit_field(e.trace_id::text)
        || eav.audit_field(e.task_id::text)
        || eav.audit_field(e.step_id::text)
        || eav.audit_field(e.payload::text)
$$;
COMMENT ON FUNCTION eav.audit_canonical(eav.audit_events) IS 'Canonical text of an audit event, hashed by the chain: id, at in UTC microseconds, type, outcome, actor, trace_id, task_id, step_id, payload (jsonb canonical text), each as eav.audit_field. Independent of session settings.';

CREATE FUNCTION eav.audit_link(p_prev bytea, p_seq bigint, p_digest bytea)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(p_prev || int8send(p_seq) || p_digest)
$$;
COMMENT ON FUNCTION eav.audit_link(bytea, bigint, bytea) IS 'hash of chain position p_seq: sha256(prev_hash || int8send(seq) || digest).';

-- The sealer ------------------------------------------------------------

-- Advances the horizons (see the header); returns the safe id.  Runs
-- before the transaction has an xid of its own, or its own xid would
-- hold the snapshot's xmin down.
CREATE FUNCTION eav.audit_seal_horizon() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s eav.audit_seal_state;
    v_last bigint;
BEGIN
    SELECT * INTO STRICT s FROM eav.audit_seal_state;
    IF pg_snapshot_xmin(pg_current_snapshot()) < s.pending_xmax THEN
        RETURN s.safe_id;
    END IF;
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
        INTO v_last FROM eav.audit_events_id_seq;
    IF v_last = s.pending_id AND s.safe_id = s.pending_id THEN
        RETURN s.safe_id;               -- nothing written since: no write
    END IF;
    -- Our xid is taken here, after v_last was read.
    UPDATE eav.audit_seal_state
    SET safe_id = s.pending_id, pending_id = v_last,
        pending_xmax = pg_current_xact_id();
    RETURN s.pending_id;
END;
$$;
COMMENT ON FUNCTION eav.audit_seal_horizon() IS 'The sealer''s horizon step: if every transaction that could hold an id up to the pending horizon has ended, makes it safe and records a new one. Returns the id up to which events may be sealed. Called by eav.audit_seal only.';

CREATE FUNCTION eav.audit_seal(p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_safe bigint;
    v_seq bigint := 0;
    v_id bigint := 0;
    v_prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    v_n integer := 0;
    v_ids bigint[];
    v_seqs bigint[];
    v_prevs bytea[];
    v_hashes bytea[];
    r record;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000000 THEN
        RAISE EXCEPTION 'p_limit must be 1 to 1000000' USING ERRCODE = '22023';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'eav.audit_seal needs READ COMMITTED'
            USING ERRCODE = '25000',
                  HINT = 'Each statement must see what committed before it.';
    END IF;
    -- One sealer at a time over every eavd: the others skip this round.
    IF NOT pg_try_advisory_xact_lock(7007, 12) THEN
        RETURN 0;
    END IF;
    v_safe := eav.audit_seal_horizon();
    SELECT c.seq, c.id, c.hash INTO v_seq, v_id, v_prev
    FROM eav.audit_chain c ORDER BY c.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        v_seq := 0;
        v_id := 0;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000';
    END IF;
    FOR r IN
        SELECT e.id, sha256(convert_to(eav.audit_canonical(e), 'UTF8')) AS d
        FROM eav.audit_events e
        WHERE e.id > v_id AND e.id <= v_safe
        ORDER BY e.id LIMIT p_limit
    LOOP
        v_n := v_n + 1;
        v_seq := v_seq + 1;
        v_ids[v_n] := r.id;
        v_seqs[v_n] := v_seq;
        v_prevs[v_n] := v_prev;
        v_prev := eav.audit_link(v_prev, v_seq, r.d);
        v_hashes[v_n] := v_prev;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM set_config('eav.sealing', 'on', true);
        INSERT INTO eav.audit_chain (seq, id, prev_hash, hash)
        SELECT * FROM unnest(v_seqs, v_ids, v_prevs, v_hashes);
        PERFORM set_config('eav.sealing', 'off', true);
    END IF;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.audit_seal(integer) IS 'Seals up to p_limit committed audit events, in id order, below the horizon under which no event can still commit; returns how many (0 also when another sealer holds the lock). Called by eavd every audit.seal_interval, again at once after a full batch. Needs READ COMMITTED.';

-- For eavctl audit anchor and verify, and for psql.
CREATE FUNCTION eav.audit_head() RETURNS TABLE (seq bigint, id bigint,
    hash text, sealed_at timestamptz, unsealed bigint)
LANGUAGE sql STABLE AS $$
    SELECT h.seq, h.id, encode(h.hash, 'hex'), h.sealed_at,
           (SELECT count(*) FROM eav.audit_events e
            WHERE e.id > coalesce(h.id, 0))
    FROM (SELECT NULL) one
    LEFT JOIN LATERAL (SELECT c.seq, c.id, c.hash, c.sealed_at
                       FROM eav.audit_chain c ORDER BY c.seq DESC LIMIT 1) h
        ON true
$$;
COMMENT ON FUNCTION eav.audit_head() IS 'The chain''s head (seq, event id, hash in hex, when sealed; NULLs when nothing is sealed) and how many events wait to be sealed.';
