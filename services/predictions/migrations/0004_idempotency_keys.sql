-- CreatePrediction's idempotency keys (the gateway's Idempotency-Key header): for 24 hours a
-- key names one prediction of its account, and a create that repeats it is answered with that
-- prediction instead of a second one (store.py, "Idempotency keys").
--
-- The primary key is the arbiter: a create claims its key (INSERT … ON CONFLICT) in its
-- transaction before it reserves anything, so a concurrent create of the same key waits on the
-- uncommitted row and then finds it, and no two creates can both hold a key. A row older than
-- 24 hours no longer counts: the next create under the key takes it over (ON CONFLICT DO
-- UPDATE), and the workers' maintenance deletes the rest.
--
-- What the database keeps true: a key names a prediction that exists. The reference is checked
-- at commit, because the key is claimed before the prediction it names is written (after the
-- Reserve, in the same transaction).
CREATE TABLE predictions.idempotency_keys (
    account_id text NOT NULL CHECK (length(account_id) BETWEEN 1 AND 128),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    -- The request as the gateway understood it (`field=digest,…`), never the text itself;
    -- another fingerprint under the key is refused.
    fingerprint text NOT NULL CHECK (length(fingerprint) BETWEEN 1 AND 1024),
    prediction_id text NOT NULL
        REFERENCES predictions.predictions (id) DEFERRABLE INITIALLY DEFERRED,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, idempotency_key)
);

-- The maintenance's sweep of expired keys.
CREATE INDEX idempotency_keys_by_age ON predictions.idempotency_keys (create_time);
