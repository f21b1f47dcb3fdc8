-- What CreatePrediction counts under a key's lock (store.py, _ACTIVE_FOR_KEY): the key's
-- predictions still processing, queued or running. Partial, so it holds only the rows in flight,
-- not the history: a count reads a handful of entries whatever the key's past. Nothing to grant:
-- the serving role already reads predictions.
--
-- Migrations run in one transaction, where CONCURRENTLY is refused, so this build reads the
-- table once while writes to it wait. Where the table is too large for that pause, build the
-- same index by hand first (CREATE INDEX CONCURRENTLY, same name and definition); this then
-- finds it and does nothing.
CREATE INDEX IF NOT EXISTS predictions_processing_by_key ON predictions.predictions (key_id)
    WHERE status = 'processing';
