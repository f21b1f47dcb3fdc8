-- What a session is may not change once it is written, whoever writes: the database keeps it,
-- not only the serving role's column grants. Old sessions are forgotten; live keys are indexed
-- for the per-account cap (AUTH_MAX_KEYS_PER_ACCOUNT).

-- A session's identity and deadlines are fixed at sign-in: its id, token, person, create and
-- expire times never change. Its end, once set, is never cleared or moved, so a signed-out or
-- password-ended session cannot be reopened. Only last_seen_time moves freely, and end_time
-- from NULL once. The trigger fires for the owner too (a migration that must rewrite sessions
-- disables it first, as the owner may).
CREATE FUNCTION auth.session_keeps_its_identity() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.token_hash, NEW.user_id, NEW.create_time, NEW.expire_time)
        IS DISTINCT FROM (OLD.id, OLD.token_hash, OLD.user_id, OLD.create_time, OLD.expire_time)
    THEN
        RAISE EXCEPTION 'session %: its id, token, person, create and expire times never change',
            OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.end_time IS NOT NULL AND NEW.end_time IS DISTINCT FROM OLD.end_time THEN
        RAISE EXCEPTION 'session % ended at %: its end never changes', OLD.id, OLD.end_time
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sessions_keep_their_identity BEFORE UPDATE ON auth.sessions
    FOR EACH ROW EXECUTE FUNCTION auth.session_keeps_its_identity();

-- No session outlives 400 days from sign-in, whatever AUTH_SESSION_MAX_SECONDS says (the
-- setting is bounded to the same; services/auth/sessions.py, MAX_SESSION_SECONDS).
ALTER TABLE auth.sessions ADD CONSTRAINT sessions_last_at_most_400_days
    CHECK (expire_time - create_time <= interval '400 days');

-- When a session stops mattering: the earlier of its end and its absolute deadline (least()
-- ignores a NULL end). Indexed for auth.forget_old_sessions().
CREATE INDEX sessions_by_stop_time ON auth.sessions (least(end_time, expire_time));

-- Sessions ended or expired more than 30 days ago pile up with every sign-in. The serving role
-- may not DELETE; it may call this, which runs as the owner and deletes only those.
CREATE FUNCTION auth.forget_old_sessions() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    WITH forgotten AS (
        DELETE FROM auth.sessions WHERE least(end_time, expire_time) < now() - interval '30 days'
        RETURNING 1
    )
    SELECT count(*) FROM forgotten
$$;
-- Functions are executable by everyone unless revoked; grants.sql gives it to the serving role.
REVOKE ALL ON FUNCTION auth.forget_old_sessions() FROM PUBLIC;

-- CreateKey and CreateOwnKey count the account's live keys; ListKeys reads them newest first
-- before the revoked ones, which may be many more.
CREATE INDEX api_keys_live_by_account_newest_first
    ON auth.api_keys (account_id, create_time DESC, id DESC) WHERE revoke_time IS NULL;
