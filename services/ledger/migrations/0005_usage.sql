-- Usage: a hold remembers what it paid for (which API key, voice, format, model), so the ledger
-- can report an account's spending per day and key (SummarizeUsage) and list its requests
-- (ListHolds) from the holds themselves, with no second record that could disagree with them.
--
-- The labels are the caller's, stored as given and never interpreted; each is optional (NULL
-- when not given) and capped so that a buggy caller cannot store essays. Like everything else
-- that says what a hold is, they are written once, at Reserve, and never change.
--
-- close_time needs no new column: 0001 gave every hold one, and its CHECK
-- ((state = 'held') = (close_time IS NULL)) means every hold closed so far already has one, set
-- by the statement that closed it. Nothing to backfill. What is new is that it is now read
-- (Hold.close_time), so the trigger also pins it to the moment of closing.

ALTER TABLE ledger.holds
    ADD COLUMN key_id text CONSTRAINT holds_key_id_length
        CHECK (length(key_id) BETWEEN 1 AND 64),
    ADD COLUMN voice text CONSTRAINT holds_voice_length
        CHECK (length(voice) BETWEEN 1 AND 400),
    ADD COLUMN response_format text CONSTRAINT holds_response_format_length
        CHECK (length(response_format) BETWEEN 1 AND 16),
    ADD COLUMN model text CONSTRAINT holds_model_length
        CHECK (length(model) BETWEEN 1 AND 64);

-- An account's holds newest first: ListHolds' pages (keyset on create_time, id) and
-- SummarizeUsage's window (create_time from the first day on), both within one account.
CREATE INDEX holds_by_account_newest ON ledger.holds (account_id, create_time DESC, id DESC);

-- Still: a hold closes once, and nothing that says what it is ever changes; its labels now
-- among them. While it is held its checkpoint may only grow and its deadline only move later;
-- the closing sets close_time to the closing transaction's own time (no backdated close); once
-- closed it is frozen, close_time included.
CREATE OR REPLACE FUNCTION ledger.hold_closes_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger.holds rows are never deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state <> 'held'
        OR (NEW.id, NEW.account_id, NEW.amount, NEW.drawn, NEW.idempotency_key,
            NEW.create_time, NEW.keyed_request_id,
            NEW.key_id, NEW.voice, NEW.response_format, NEW.model)
        IS DISTINCT FROM (OLD.id, OLD.account_id, OLD.amount, OLD.drawn, OLD.idempotency_key,
            OLD.create_time, OLD.keyed_request_id,
            OLD.key_id, OLD.voice, OLD.response_format, OLD.model)
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
    IF NEW.state <> 'held' AND NEW.close_time IS DISTINCT FROM now() THEN
        RAISE EXCEPTION 'hold % closes now: close_time % is not %', OLD.id, NEW.close_time, now()
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
