-- Group commit: many reservations stored by one statement, in one
-- transaction (explorer/src/pg.rs queues a replica's concurrent POSTs to
-- one writer that calls this).
--
-- Same rules as explorer_insert_reservation, row by row in array order:
-- a signature already stored (by an earlier row of this batch, or by any
-- replica) answers its number and new = false, burning no number; else a
-- number from the sequence and new = true. Every node of the batch is
-- locked (transaction-level advisory lock, the key the single-row function
-- uses) before the first number is taken and until commit, so a node's
-- numbers still become visible in order. The locks are taken in one order
-- (ascending key), so two batches, on one replica or two, never deadlock.
--
-- One bad row fails the whole statement: the caller then stores each row
-- on its own with explorer_insert_reservation.
CREATE FUNCTION explorer_insert_reservations(
    p_version integer[], p_node_id text[], p_user_id text[], p_kind bytea[], p_data text[],
    p_created timestamptz[], p_duration bigint[], p_nonce text[], p_signature text[],
    p_to_delete boolean[], p_delete_signature text[], p_expires_ns bigint[])
RETURNS TABLE (o_number bigint, o_new boolean)
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
        SELECT r.number INTO o_number FROM reservations r WHERE r.signature = p_signature[i];
        IF FOUND THEN
            o_new := false;
            RETURN NEXT;
            CONTINUE;
        END IF;
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
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
