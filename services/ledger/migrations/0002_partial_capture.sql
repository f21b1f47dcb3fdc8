-- Partial capture: Capture may spend part of a hold and return the rest in the same
-- transaction (a client that left midway pays for the audio it was given, atomically).
-- `captured` is what the capture spent: set exactly when the hold is captured, 1..amount.

ALTER TABLE ledger.holds ADD COLUMN captured bigint;

-- Holds captured before this migration were captured whole. Closed holds are otherwise frozen.
ALTER TABLE ledger.holds DISABLE TRIGGER holds_close_once;
UPDATE ledger.holds SET captured = amount WHERE state = 'captured';
ALTER TABLE ledger.holds ENABLE TRIGGER holds_close_once;

ALTER TABLE ledger.holds ADD CONSTRAINT holds_captured_when_captured
    CHECK ((state = 'captured') = (captured IS NOT NULL) AND captured BETWEEN 1 AND amount);

-- A partial capture writes a CAPTURE entry (the credits spent) and a RELEASE entry (the rest
-- returned) for one hold. Still: at most one spend and at most one return per hold.
DROP INDEX ledger.entries_one_close_per_hold;
CREATE UNIQUE INDEX entries_one_capture_per_hold ON ledger.entries (hold_id)
    WHERE kind = 'capture';
CREATE UNIQUE INDEX entries_one_return_per_hold ON ledger.entries (hold_id)
    WHERE kind IN ('release', 'expire');
