-- Predictions, their stored audio, and each account's webhook signing secret.
-- Applied by services.common.postgres.apply_migrations inside one transaction, as the schema's
-- owner; the serving role gets only what grants.sql declares.
--
-- What the database itself keeps true, whatever the code does:
-- - a prediction finishes once: from processing to success or error, never back, never twice,
--   and nothing that says what was asked (text, voice, hold, account) ever changes;
-- - a success has its predict_time and the expiry of its output; an error has its message;
-- - settling (the hold captured on success, released on error) is recorded once, and only for a
--   finished prediction.

-- One prediction. `characters` is what its hold holds (len(text) in code points), `hold_id` the
-- ledger's hold, `job_id` the queue job that runs it (procrastinate_jobs, migration 0002; no
-- foreign key: finished jobs are deleted).
CREATE TABLE predictions.predictions (
    id text PRIMARY KEY CHECK (id ~ '^pred_[0-9A-HJKMNP-TV-Z]{26}$'),
    account_id text NOT NULL CHECK (length(account_id) BETWEEN 1 AND 128),
    key_id text CHECK (length(key_id) BETWEEN 1 AND 64),
    status text NOT NULL DEFAULT 'processing'
        CHECK (status IN ('processing', 'success', 'error')),
    text text NOT NULL CHECK (char_length(text) BETWEEN 1 AND 100000),
    voice text NOT NULL CHECK (length(voice) BETWEEN 1 AND 400),
    speed real NOT NULL CHECK (speed BETWEEN 0.5 AND 5),
    output_format text NOT NULL
        CHECK (output_format IN ('mp3', 'opus', 'aac', 'flac', 'wav', 'pcm')),
    webhook_url text CHECK (length(webhook_url) BETWEEN 1 AND 2048),
    characters integer NOT NULL CHECK (characters = char_length(text)),
    hold_id text NOT NULL CHECK (length(hold_id) BETWEEN 1 AND 128),
    job_id bigint NOT NULL,
    -- Why it failed ("cancelled", "synthesis failed", …) and more detail; errors only.
    message text CHECK (length(message) BETWEEN 1 AND 200),
    details text CHECK (length(details) <= 2000),
    -- Seconds the successful synthesis took.
    predict_time double precision CHECK (predict_time >= 0),
    create_time timestamptz NOT NULL DEFAULT now(),
    finish_time timestamptz,
    output_expire_time timestamptz,
    -- When the hold was captured (success) or released (error): the money is done with.
    settle_time timestamptz,
    CONSTRAINT predictions_finished_when_not_processing
        CHECK ((status = 'processing') = (finish_time IS NULL)),
    CONSTRAINT predictions_success_has_output
        CHECK ((status = 'success') = (output_expire_time IS NOT NULL AND predict_time IS NOT NULL)),
    CONSTRAINT predictions_error_has_message CHECK ((status = 'error') = (message IS NOT NULL)),
    CONSTRAINT predictions_settled_when_finished
        CHECK (settle_time IS NULL OR status <> 'processing')
);

-- ListPredictions: an account's newest first (keyset on create_time, id).
CREATE INDEX predictions_by_account_newest
    ON predictions.predictions (account_id, create_time DESC, id DESC);
-- The workers' reconciliation: finished predictions whose hold is not settled yet.
CREATE INDEX predictions_unsettled ON predictions.predictions (finish_time)
    WHERE settle_time IS NULL AND status <> 'processing';

CREATE FUNCTION predictions.prediction_finishes_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'predictions are never deleted (their outputs are)'
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.id, NEW.account_id, NEW.key_id, NEW.text, NEW.voice, NEW.speed, NEW.output_format,
        NEW.webhook_url, NEW.characters, NEW.hold_id, NEW.job_id, NEW.create_time)
        IS DISTINCT FROM
       (OLD.id, OLD.account_id, OLD.key_id, OLD.text, OLD.voice, OLD.speed, OLD.output_format,
        OLD.webhook_url, OLD.characters, OLD.hold_id, OLD.job_id, OLD.create_time)
    THEN
        RAISE EXCEPTION 'prediction %: what was asked never changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status <> 'processing'
        AND (NEW.status, NEW.message, NEW.details, NEW.predict_time, NEW.finish_time,
             NEW.output_expire_time)
        IS DISTINCT FROM
            (OLD.status, OLD.message, OLD.details, OLD.predict_time, OLD.finish_time,
             OLD.output_expire_time)
    THEN
        RAISE EXCEPTION 'prediction % finished once already (%)', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.settle_time IS NOT NULL AND NEW.settle_time IS DISTINCT FROM OLD.settle_time THEN
        RAISE EXCEPTION 'prediction % was settled once already', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER predictions_finish_once BEFORE UPDATE OR DELETE ON predictions.predictions
    FOR EACH ROW EXECUTE FUNCTION predictions.prediction_finishes_once();

-- The audio of a successful prediction, kept until expire_time (the retention), then deleted
-- by the workers' sweep. PostgreSQL is the default store (services/predictions/store.py,
-- PostgresOutputs); the audio is already compressed, so the column is stored out of line and
-- uncompressed, which lets substring() read a range without reading the whole value.
CREATE TABLE predictions.outputs (
    prediction_id text PRIMARY KEY REFERENCES predictions.predictions (id),
    content_type text NOT NULL CHECK (length(content_type) BETWEEN 1 AND 64),
    size bigint NOT NULL CHECK (size >= 0),
    data bytea NOT NULL,
    expire_time timestamptz NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outputs_size_is_data CHECK (size = octet_length(data)),
    CONSTRAINT outputs_expire_after_create CHECK (expire_time > create_time)
);
ALTER TABLE predictions.outputs ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE INDEX outputs_by_expiry ON predictions.outputs (expire_time);

-- Stored audio is written once and only ever deleted.
CREATE FUNCTION predictions.output_written_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'output of % is written once: % refused', OLD.prediction_id, TG_OP
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER outputs_written_once BEFORE UPDATE ON predictions.outputs
    FOR EACH ROW EXECUTE FUNCTION predictions.output_written_once();

-- Each account's Standard Webhooks signing secret ("whsec_" and base64 of 32 random bytes),
-- created on first ask and replaced by a rotation. Kept as is: signing needs the secret itself.
CREATE TABLE predictions.webhook_secrets (
    account_id text PRIMARY KEY CHECK (length(account_id) BETWEEN 1 AND 128),
    secret text NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/]{43}=$'),
    create_time timestamptz NOT NULL DEFAULT now()
);
