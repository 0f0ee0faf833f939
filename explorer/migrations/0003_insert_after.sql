-- Group commit that also says, for each new reservation, the number its
-- node had before it: explorer_insert_reservations (0002, kept for
-- replicas of the previous release during a rolling upgrade) plus o_after.
--
-- o_after: the highest number of the row's node stored before this row
-- (0: none), read under the node's advisory lock, so every number of the
-- node below this row's has committed and none lies between o_after and
-- o_number. A replica whose last poll query of the node proved nothing
-- live from some number F answers the woken poll from this row alone when
-- o_after < F (explorer/src/storage.rs, Wakers::wrote): no other
-- replica's reservation can hide in between. NULL for a row not stored
-- (its signature was).
CREATE FUNCTION explorer_insert_reservations_after(
    p_version integer[], p_node_id text[], p_user_id text[], p_kind bytea[], p_data text[],
    p_created timestamptz[], p_duration bigint[], p_nonce text[], p_signature text[],
    p_to_delete boolean[], p_delete_signature text[], p_expires_ns bigint[])
RETURNS TABLE (o_number bigint, o_new boolean, o_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
    i integer;
BEGIN
    FOR k IN SELECT DISTINCT hashtextextended('explorer node ' || n, 0)
             FROM unnest(p_node_id) AS n ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_signature, 1), 0) LOOP
        o_after := NULL;
        SELECT r.number INTO o_number FROM reservations r WHERE r.signature = p_signature[i];
        IF FOUND THEN
            o_new := false;
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT coalesce(max(r.number), 0) INTO o_after FROM reservations r
         WHERE r.node_id = p_node_id[i];
        INSERT INTO reservations (number, version, node_id, user_id, kind, data, created,
                                  duration, nonce, signature, to_delete, delete_signature,
                                  expires_ns)
        VALUES (nextval('reservation_number'), p_version[i], p_node_id[i], p_user_id[i],
                p_kind[i], p_data[i], p_created[i], p_duration[i], p_nonce[i],
                p_signature[i], p_to_delete[i], p_delete_signature[i], p_expires_ns[i])
        ON CONFLICT (signature) DO NOTHING
        RETURNING reservations.number INTO o_number;
        IF FOUND THEN
            o_new := true;
        ELSE
            -- Another transaction stored the same signature meanwhile (it
            -- has committed: the insert waited for it).
            SELECT r.number INTO o_number FROM reservations r WHERE r.signature = p_signature[i];
            o_new := false;
            o_after := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
