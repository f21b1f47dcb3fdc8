-- The ledger's money rules, enforced by the database so that no code path can break them:
-- balances never go negative, a hold closes at most once, the journal is append-only.
-- Applied by services.common.postgres.apply_migrations inside one transaction.

-- One balance per account id issued by auth (the ledger never reads auth's tables).
CREATE TABLE ledger.accounts (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    -- Spendable credits: settled credits minus those drawn by open holds.
    balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- Credits of open holds, unlimited accounts' holds included.
    held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    unlimited boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger.holds (
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES ledger.accounts (id),
    amount bigint NOT NULL CHECK (amount > 0),
    -- What the hold took from the balance, and so what Release or expiry gives back: the amount,
    -- or nothing when placed on an unlimited account (whose balance is never drawn down).
    drawn bigint NOT NULL CHECK (drawn = amount OR drawn = 0),
    state text NOT NULL DEFAULT 'held'
        CHECK (state IN ('held', 'captured', 'released', 'expired')),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    expire_time timestamptz NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    close_time timestamptz,
    CHECK ((state = 'held') = (close_time IS NULL)),
    UNIQUE (account_id, idempotency_key)
);

-- The sweeper's and Reserve's search for holds past their deadline.
CREATE INDEX holds_open_by_deadline ON ledger.holds (expire_time) WHERE state = 'held';
CREATE INDEX holds_open_by_account ON ledger.holds (account_id, expire_time) WHERE state = 'held';

-- A hold moves once, from held to a final state, and nothing else about it ever changes:
-- a second Capture or Release cannot refund or spend twice even if application code tried.
CREATE FUNCTION ledger.hold_closes_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger.holds rows are never deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state <> 'held' OR NEW.state = 'held'
        OR (NEW.id, NEW.account_id, NEW.amount, NEW.drawn, NEW.idempotency_key,
            NEW.expire_time, NEW.create_time)
        IS DISTINCT FROM (OLD.id, OLD.account_id, OLD.amount, OLD.drawn, OLD.idempotency_key,
            OLD.expire_time, OLD.create_time)
    THEN
        RAISE EXCEPTION 'hold % can only close once, from held (is %, asked %)',
            OLD.id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER holds_close_once BEFORE UPDATE OR DELETE ON ledger.holds
    FOR EACH ROW EXECUTE FUNCTION ledger.hold_closes_once();

-- The journal. `amount` is the signed change to the spendable balance, except CAPTURE, whose
-- amount reports the credits spent and moves nothing; so for every account
-- balance = sum(amount) over its non-CAPTURE entries.
CREATE TABLE ledger.entries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL REFERENCES ledger.accounts (id),
    kind text NOT NULL
        CHECK (kind IN ('grant', 'hold', 'capture', 'release', 'expire', 'unlimited')),
    amount bigint NOT NULL,
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    hold_id text REFERENCES ledger.holds (id),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    create_time timestamptz NOT NULL DEFAULT now(),
    CHECK (CASE kind
        WHEN 'grant' THEN amount > 0 AND hold_id IS NULL AND idempotency_key IS NOT NULL
        WHEN 'hold' THEN amount <= 0 AND hold_id IS NOT NULL
        WHEN 'capture' THEN amount > 0 AND hold_id IS NOT NULL
        WHEN 'release' THEN amount >= 0 AND hold_id IS NOT NULL
        WHEN 'expire' THEN amount >= 0 AND hold_id IS NOT NULL
        WHEN 'unlimited' THEN amount = 0 AND hold_id IS NULL
    END)
);

CREATE INDEX entries_by_account_newest ON ledger.entries (account_id, id DESC);
-- Grant is idempotent by key, per account.
CREATE UNIQUE INDEX entries_grant_key ON ledger.entries (account_id, idempotency_key)
    WHERE kind = 'grant';
-- One HOLD entry and at most one closing entry per hold: no double hold, no double refund.
CREATE UNIQUE INDEX entries_one_hold_per_hold ON ledger.entries (hold_id) WHERE kind = 'hold';
CREATE UNIQUE INDEX entries_one_close_per_hold ON ledger.entries (hold_id)
    WHERE kind IN ('capture', 'release', 'expire');

-- Append-only: corrections are new rows, never edits.
CREATE FUNCTION ledger.reject_journal_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.entries is append-only: % refused', TG_OP
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON ledger.entries
    FOR EACH ROW EXECUTE FUNCTION ledger.reject_journal_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON ledger.entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.reject_journal_change();
