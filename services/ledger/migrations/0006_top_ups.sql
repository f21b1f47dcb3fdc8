-- Top-ups: credits a customer paid for, granted once per payment event however often the
-- provider delivers it, and to whichever account a delivery names. The event id is the key
-- across all accounts: its row is written by the statement that writes the GRANT entry, and
-- the primary key refuses a second one, so an event cannot credit twice even when two
-- deliveries for two accounts race past the store's lookup (each holds only its own account's
-- lock). Like the journal, the rows never change and never go away.

-- A top-up's GRANT is keyed 'topup:' and the event id (1–128 characters), so the journal's
-- keys may be up to 134 characters; the service still takes no key over 128 from a caller.
ALTER TABLE ledger.entries
    DROP CONSTRAINT entries_idempotency_key_check,
    ADD CONSTRAINT entries_idempotency_key_length
        CHECK (length(idempotency_key) BETWEEN 1 AND 134);

CREATE TABLE ledger.payment_events (
    -- The payment provider's event id (Stripe's "evt_…").
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    -- The account the first delivery named, which the grant credited.
    account_id text NOT NULL REFERENCES ledger.accounts (id),
    credits bigint NOT NULL CHECK (credits > 0),
    -- The GRANT entry that credited it; an entry pays for one event at most. No foreign key:
    -- the trigger below checks that the entry exists and is this event's grant, entries are
    -- never deleted, and a key would make TRUNCATE of the journal fail on it before the
    -- journal's own guard.
    entry_id bigint NOT NULL UNIQUE,
    create_time timestamptz NOT NULL DEFAULT now()
);

-- An event records the grant that credited it and no other: a GRANT of the same account and
-- credits whose key names the event. An AFTER trigger, so that it sees the entry written by
-- the same statement.
CREATE FUNCTION ledger.payment_event_records_its_grant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM ledger.entries e
        WHERE e.id = NEW.entry_id AND e.kind = 'grant' AND e.account_id = NEW.account_id
            AND e.amount = NEW.credits AND e.idempotency_key = 'topup:' || NEW.id
    ) THEN
        RAISE EXCEPTION 'payment event % does not record the grant that credited it (entry %)',
            NEW.id, NEW.entry_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER payment_events_record_their_grant AFTER INSERT ON ledger.payment_events
    FOR EACH ROW EXECUTE FUNCTION ledger.payment_event_records_its_grant();

-- Append-only, with the journal's own guard, which now names the table it guards.
CREATE OR REPLACE FUNCTION ledger.reject_journal_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE ON ledger.payment_events
    FOR EACH ROW EXECUTE FUNCTION ledger.reject_journal_change();
CREATE TRIGGER payment_events_no_truncate BEFORE TRUNCATE ON ledger.payment_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.reject_journal_change();
