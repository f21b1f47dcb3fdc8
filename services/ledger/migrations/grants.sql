-- What the ledger's serving role may do: exactly the statements of store.py, no more.
-- services.common.postgres applies this as the schema's owner at every start, right after the
-- migrations and in their transaction, having first revoked everything the role held in the
-- schema; a migration that adds a column the store writes adds it here too.
--
-- The role never owns a table, so it can neither ALTER one (nor disable a trigger) nor DROP
-- it, and it is granted no UPDATE of what is frozen, no DELETE and no TRUNCATE anywhere: the
-- journal is INSERT and SELECT only. Defaulted columns (ids, create_time, a hold's state) are
-- not granted for INSERT: the database writes them, so no entry can be backdated.

GRANT USAGE ON SCHEMA ledger TO {role};

-- Balances move; an account's id and creation time never do. SELECT … FOR UPDATE, the lock
-- every write takes first, needs UPDATE on a column.
GRANT SELECT, INSERT (id), UPDATE (balance, held, unlimited) ON ledger.accounts TO {role};

-- A hold is placed once, with its usage labels, and closed once; while held, its checkpoint
-- grows and its deadline moves later (the holds_close_once trigger refuses the rest). Labels
-- are INSERT only: what a hold paid for is never rewritten, not even by the ledger.
GRANT SELECT,
    INSERT (id, account_id, amount, drawn, idempotency_key, expire_time, keyed_request_id,
            key_id, voice, response_format, model),
    UPDATE (state, close_time, captured, checkpointed, expire_time)
    ON ledger.holds TO {role};

-- The journal: appended to and read, nothing else.
GRANT SELECT, INSERT (account_id, kind, amount, balance_after, hold_id, idempotency_key)
    ON ledger.entries TO {role};

-- A keyed request counts its free replays; its price and window never change.
GRANT SELECT, INSERT (account_id, key, fingerprint, price, expire_time), UPDATE (replays)
    ON ledger.keyed_requests TO {role};

-- A top-up's payment event is recorded once, with the grant that credited it, and read back
-- when the event comes again; never changed.
GRANT SELECT, INSERT (id, account_id, credits, entry_id) ON ledger.payment_events TO {role};
