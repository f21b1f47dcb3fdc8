-- Holds that follow the stream: the caller checkpoints on an open hold what it has delivered
-- so far and extends the hold's deadline while the stream lives. A hold that expires captures
-- its last checkpoint and returns the rest, so a caller that dies mid-stream neither keeps the
-- customer's credits nor gives the delivered audio away.

ALTER TABLE ledger.holds ADD COLUMN checkpointed bigint NOT NULL DEFAULT 0;
ALTER TABLE ledger.holds ADD CONSTRAINT holds_checkpoint_within_amount
    CHECK (checkpointed BETWEEN 0 AND amount);

-- Still: a hold closes once, and nothing that says what it is ever changes. While it is held
-- its checkpoint may only grow and its deadline only move later; once closed it is frozen.
CREATE OR REPLACE FUNCTION ledger.hold_closes_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger.holds rows are never deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state <> 'held'
        OR (NEW.id, NEW.account_id, NEW.amount, NEW.drawn, NEW.idempotency_key,
            NEW.create_time, NEW.keyed_request_id)
        IS DISTINCT FROM (OLD.id, OLD.account_id, OLD.amount, OLD.drawn, OLD.idempotency_key,
            OLD.create_time, OLD.keyed_request_id)
    THEN
        RAISE EXCEPTION 'hold % can only close once, from held (is %, asked %)',
            OLD.id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.checkpointed < OLD.checkpointed THEN
        RAISE EXCEPTION 'hold % checkpoint only grows (% to %)',
            OLD.id, OLD.checkpointed, NEW.checkpointed USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state = 'held' AND NEW.expire_time < OLD.expire_time
        OR NEW.state <> 'held' AND NEW.expire_time IS DISTINCT FROM OLD.expire_time
    THEN
        RAISE EXCEPTION 'hold % deadline only moves later, and only while held', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
