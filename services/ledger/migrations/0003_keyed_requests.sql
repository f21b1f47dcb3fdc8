-- Keyed requests: a customer's Idempotency-Key names one request for a window of time (24 h).
-- The holds placed for it are its attempts, and together they never capture more than its
-- price, whatever the gateway does: the trigger below refuses a capture that would.

CREATE TABLE ledger.keyed_requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL REFERENCES ledger.accounts (id),
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    -- The request as the caller understood it; another fingerprint under the key is refused.
    fingerprint text NOT NULL CHECK (length(fingerprint) BETWEEN 1 AND 1024),
    -- What the whole request costs: the most its attempts may capture together.
    price bigint NOT NULL CHECK (price > 0),
    -- Free replays served after the price was paid.
    replays integer NOT NULL DEFAULT 0 CHECK (replays >= 0),
    create_time timestamptz NOT NULL DEFAULT now(),
    -- After this the key may name another request (a new row).
    expire_time timestamptz NOT NULL CHECK (expire_time > create_time)
);

-- The key's live request is its newest row; every write to it holds the account's row lock.
CREATE INDEX keyed_requests_by_key ON ledger.keyed_requests (account_id, key, create_time DESC);

ALTER TABLE ledger.holds ADD COLUMN keyed_request_id bigint REFERENCES ledger.keyed_requests (id);
CREATE INDEX holds_by_keyed_request ON ledger.holds (keyed_request_id)
    WHERE keyed_request_id IS NOT NULL;

-- Which request a hold pays for is as frozen as the rest of it.
CREATE OR REPLACE FUNCTION ledger.hold_closes_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger.holds rows are never deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state <> 'held' OR NEW.state = 'held'
        OR (NEW.id, NEW.account_id, NEW.amount, NEW.drawn, NEW.idempotency_key,
            NEW.expire_time, NEW.create_time, NEW.keyed_request_id)
        IS DISTINCT FROM (OLD.id, OLD.account_id, OLD.amount, OLD.drawn, OLD.idempotency_key,
            OLD.expire_time, OLD.create_time, OLD.keyed_request_id)
    THEN
        RAISE EXCEPTION 'hold % can only close once, from held (is %, asked %)',
            OLD.id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- The cap itself: the captures of a keyed request's attempts add up to at most its price.
CREATE FUNCTION ledger.keyed_capture_within_price() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    earlier bigint;
    price bigint;
BEGIN
    SELECT coalesce(sum(h.captured), 0) INTO earlier FROM ledger.holds h
    WHERE h.keyed_request_id = NEW.keyed_request_id AND h.state = 'captured' AND h.id <> NEW.id;
    SELECT r.price INTO price FROM ledger.keyed_requests r WHERE r.id = NEW.keyed_request_id;
    IF earlier + NEW.captured > price THEN
        RAISE EXCEPTION 'keyed request % would capture % of its price %',
            NEW.keyed_request_id, earlier + NEW.captured, price USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER holds_keyed_capture_within_price BEFORE UPDATE ON ledger.holds
    FOR EACH ROW WHEN (NEW.state = 'captured' AND NEW.keyed_request_id IS NOT NULL)
    EXECUTE FUNCTION ledger.keyed_capture_within_price();
