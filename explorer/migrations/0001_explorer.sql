-- The explorer's state in PostgreSQL, shared by every replica.
--
-- Signed values are kept exactly: `data` as the posted text (never jsonb,
-- which would reorder keys and rewrite numbers), signatures and nonces as
-- text; free text a signed message may carry (the wire `type`, a node's
-- url) as bytea, since text cannot hold a NUL character that JSON can.

-- Reservation numbers: one sequence for every replica, so no two hand out
-- the same id.
CREATE SEQUENCE reservation_number AS bigint START 1;

CREATE TABLE reservations (
    number            bigint PRIMARY KEY,
    version           integer NOT NULL,
    node_id           text NOT NULL,
    user_id           text NOT NULL,
    kind              bytea NOT NULL,
    data              text NOT NULL,
    created           timestamptz,
    duration          bigint NOT NULL,
    nonce             text NOT NULL,
    signature         text NOT NULL,
    to_delete         boolean NOT NULL DEFAULT false,
    delete_signature  text,
    -- created + duration in unix nanoseconds: the poll's expiry filter.
    expires_ns        bigint NOT NULL,
    deleted           boolean NOT NULL DEFAULT false,
    deleted_signature text
);

-- A signature is stored once, whichever replica took the post (409).
CREATE UNIQUE INDEX reservations_signature ON reservations (signature);
-- The poll: one node's reservations in number order.
CREATE INDEX reservations_node ON reservations (node_id, number);
-- Pending deletions, answered whatever the cursor.
CREATE INDEX reservations_pending_delete ON reservations (node_id, number)
    WHERE to_delete AND NOT deleted;

CREATE TABLE results (
    seq       bigserial PRIMARY KEY,
    number    bigint NOT NULL REFERENCES reservations (number),
    signature text NOT NULL,
    -- The result's JSON (its `data` byte for byte).
    body      text NOT NULL,
    UNIQUE (number, signature)
);

CREATE TABLE nodes (
    node_id        text PRIMARY KEY,
    url            bytea NOT NULL,
    capacity       text NOT NULL,
    used           text NOT NULL,
    draining       boolean NOT NULL DEFAULT false,
    last_heartbeat timestamptz,
    -- The timestamp (unix ms) of the last registration or uptime accepted:
    -- the next must be newer, checked in the UPDATE that writes it.
    last_timestamp bigint
);

-- Store a reservation unless its signature is already stored; answers its
-- number and whether it is new. A node's numbers are handed out in commit
-- order: a transaction-level advisory lock on the node is taken before the
-- sequence is read and held until commit, so a poll that has seen number n
-- of a node can never later find a smaller one committed (the node's
-- cursor, past n, would skip it). Different nodes do not wait on each other.
CREATE FUNCTION explorer_insert_reservation(
    p_version integer, p_node_id text, p_user_id text, p_kind bytea, p_data text,
    p_created timestamptz, p_duration bigint, p_nonce text, p_signature text,
    p_to_delete boolean, p_delete_signature text, p_expires_ns bigint,
    OUT number bigint, OUT new boolean)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT r.number INTO number FROM reservations r WHERE r.signature = p_signature;
    IF FOUND THEN
        new := false;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('explorer node ' || p_node_id, 0));
    INSERT INTO reservations (number, version, node_id, user_id, kind, data, created, duration,
                              nonce, signature, to_delete, delete_signature, expires_ns)
    VALUES (nextval('reservation_number'), p_version, p_node_id, p_user_id, p_kind, p_data,
            p_created, p_duration, p_nonce, p_signature, p_to_delete, p_delete_signature,
            p_expires_ns)
    ON CONFLICT (signature) DO NOTHING
    RETURNING reservations.number INTO number;
    IF FOUND THEN
        new := true;
        RETURN;
    END IF;
    -- Another transaction stored the same signature meanwhile (it has
    -- committed: the insert waited for it).
    SELECT r.number INTO number FROM reservations r WHERE r.signature = p_signature;
    new := false;
END
$$;
