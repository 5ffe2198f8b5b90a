-- Claiming reads due messages `ORDER BY next_attempt_at, priority DESC, id LIMIT n`. With only
-- outbox_due (status, next_attempt_at), every claim sorted all rows due at the same instant — a
-- cron fan-out puts every message there — so each claim cost O(pending) and delivering a fan-out
-- was quadratic. This index is in the claim's order, so a claim reads about n rows.
CREATE INDEX outbox_claim ON outbox (status, next_attempt_at, priority DESC, id);
-- Its leading columns are outbox_due's, which it replaces.
DROP INDEX outbox_due;
