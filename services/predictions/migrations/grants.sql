-- What the predictions serving role may do (the service and its workers serve as one role):
-- the statements of store.py and what procrastinate's functions run on its behalf, no more.
-- services.common.postgres applies this as the schema's owner at every start, right after the
-- migrations and in their transaction, having first revoked everything the role held in the
-- schema; a migration that adds a column the store writes adds it here too.
--
-- The role owns nothing, so it can neither alter a table nor switch off the triggers that make
-- a prediction finish once. Predictions are never deleted; stored audio is never updated.
-- procrastinate's functions are SECURITY INVOKER and executable by everyone (PostgreSQL's
-- default for functions), so what they may touch is exactly what is granted on its tables.

GRANT USAGE ON SCHEMA predictions TO {role};

-- Created with what was asked (and the job that runs it); then finished once, settled once.
GRANT SELECT,
    INSERT (id, account_id, key_id, text, voice, speed, output_format, webhook_url, characters,
            hold_id, job_id),
    UPDATE (status, message, details, predict_time, finish_time, output_expire_time, settle_time)
    ON predictions.predictions TO {role};

-- Audio: written once, read in ranges, deleted after the retention.
GRANT SELECT, INSERT (prediction_id, content_type, size, data, expire_time), DELETE
    ON predictions.outputs TO {role};

-- A secret is created on first ask and replaced by a rotation (INSERT … ON CONFLICT DO UPDATE).
GRANT SELECT, INSERT (account_id, secret), UPDATE (secret, create_time)
    ON predictions.webhook_secrets TO {role};

-- Idempotency keys: claimed at create (an expired one taken over: INSERT … ON CONFLICT DO
-- UPDATE), deleted by the maintenance once past their 24 hours.
GRANT SELECT, INSERT (account_id, idempotency_key, fingerprint, prediction_id),
    UPDATE (fingerprint, prediction_id, create_time), DELETE
    ON predictions.idempotency_keys TO {role};

-- The queue. Jobs are deferred (INSERT), taken, retried and finished (UPDATE, the fetch's
-- SELECT … FOR UPDATE) and deleted once done; the events are written by the jobs' triggers and
-- go with their job (ON DELETE CASCADE runs as the table's owner); workers register, beat and
-- are pruned; periodic defers are unlinked from deleted jobs by a trigger.
GRANT SELECT, INSERT, UPDATE, DELETE ON predictions.procrastinate_jobs TO {role};
GRANT SELECT, INSERT ON predictions.procrastinate_events TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON predictions.procrastinate_workers TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON predictions.procrastinate_periodic_defers TO {role};
GRANT USAGE ON SEQUENCE predictions.procrastinate_jobs_id_seq,
    predictions.procrastinate_events_id_seq,
    predictions.procrastinate_periodic_defers_id_seq TO {role};
