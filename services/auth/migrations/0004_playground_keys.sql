-- A session's playground key (MintPlaygroundKey): an API key like any other, bound to the
-- session it was minted for. It verifies only while that session lives (VerifyKey judges the
-- session in its one statement, as ResolveSession does), and goes with it when the session is
-- forgotten (auth.forget_old_sessions(), 30 days after its end: the cascade runs as the owner).
--
-- Its plaintext is derived from the session's token under the server secret
-- (services/auth/keys.py), so a session has one playground key per secret: minting again finds
-- it by key_hash, whose unique index decides between concurrent mints. session_id is not unique
-- on purpose: after the secret changes (which voids every key), the same session derives a new
-- key and gets a new row beside its dead one, instead of being held to a key that cannot verify.
ALTER TABLE auth.api_keys
    ADD COLUMN session_id text REFERENCES auth.sessions (id) ON DELETE CASCADE;

-- The cascade's lookup, when a session is forgotten.
CREATE INDEX api_keys_by_session ON auth.api_keys (session_id) WHERE session_id IS NOT NULL;

-- The per-account cap (AUTH_MAX_KEYS_PER_ACCOUNT) counts live keys other than playground keys,
-- and the key lists read those first: the index holds exactly them. (A playground key is never
-- revoked by its person, so the old index would have kept every one of them.)
DROP INDEX auth.api_keys_live_by_account_newest_first;
CREATE INDEX api_keys_live_by_account_newest_first
    ON auth.api_keys (account_id, create_time DESC, id DESC)
    WHERE revoke_time IS NULL AND session_id IS NULL;
