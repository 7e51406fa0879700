-- 0032_producer_reconcile: a dead producer's leases end when eavd reaps
-- it, not when they run out.
--
-- A producer leases each watcher tick it probes (0023) and each event it
-- classifies (0022).  Killed, it leaves them to lapse: a watcher tick
-- waits out its time-out plus watcher_lease_grace_ms (5 s), a classified
-- event its classifier lease, before the restarted producer may take them
-- again.  eavd knows the moment the producer died (it reaped it, and its
-- probe and classifier processes are killed with it), so it ends those
-- leases then, as it reconciles a dead worker's steps.  Nothing the dead
-- producer was doing can still be recorded: watcher_complete and
-- event_classified check the lease, which now names nobody.

CREATE FUNCTION eav.reconcile_producer(p_node text, p_incarnation bigint,
    p_pid integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_producer text := format('producer:%s/%s/%s', p_node, p_incarnation, p_pid);
    v_actor text := format('supervisor:%s/%s', p_node, p_incarnation);
    w record;
    v_n integer := 0;
BEGIN
    FOR w IN SELECT x.id, x.name, x.tick_slot FROM eav.watchers x
             WHERE x.lease_by = v_producer ORDER BY x.id FOR UPDATE LOOP
        UPDATE eav.watchers SET tick_slot = NULL, lease_by = NULL,
            lease_until = NULL
        WHERE id = w.id;
        PERFORM eav.audit('watcher.lease_released', 'success', v_actor, NULL,
            NULL, NULL, jsonb_build_object('watcher', w.name, 'watcher_id', w.id,
                'slot', w.tick_slot, 'lease_by', v_producer,
                'reason', 'the producer died (reaped by eavd); its probe was killed'));
        v_n := v_n + 1;
    END LOOP;
    FOR w IN SELECT i.id, i.trace_id FROM eav.inbox i
             WHERE i.state = 'classifying' AND i.lease_owner = v_producer
               AND i.lease_until > now()
             ORDER BY i.id FOR UPDATE LOOP
        -- Lapsed now: the next take counts it as another attempt, so an
        -- event whose classifier kills its producer every time still
        -- falls back after classifier_max_attempts.
        UPDATE eav.inbox SET lease_until = clock_timestamp() WHERE id = w.id;
        PERFORM eav.audit('classifier.lease_released', 'success', v_actor,
            w.trace_id, NULL, NULL, jsonb_build_object('event_id', w.id,
                'lease_owner', v_producer,
                'reason', 'the producer died (reaped by eavd); its classifier was killed'));
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.reconcile_producer(text, bigint, integer) IS 'Called by eavd when it reaps a producer: ends the watcher ticks (audited watcher.lease_released) and classifier leases (audited classifier.lease_released) that producer held, so they are taken again at once instead of when they run out. Returns how many.';
