-- Campaign results over time: one row per campaign per UTC day, the lift as of the end of that
-- day (cumulative since the first assignment), so analysts can see lift accumulate.
-- Kept column-for-column identical to migrations/sqlite/0003_lift_snapshots.sql.
CREATE TABLE lift_snapshots (
    campaign_id           TEXT NOT NULL,
    day                   TEXT NOT NULL,     -- UTC date, YYYY-MM-DD
    as_of                 BIGINT NOT NULL,   -- the report's window end (end of day, or when taken)
    treatment_users       BIGINT NOT NULL,
    treatment_conversions BIGINT NOT NULL,
    treatment_value       DOUBLE PRECISION, -- sum of goal values; NULL without goal.value
    holdout_users         BIGINT NOT NULL,
    holdout_conversions   BIGINT NOT NULL,
    holdout_value         DOUBLE PRECISION,
    report                TEXT NOT NULL,     -- the LiftReport JSON, as `nudge report lift --format json`
    node                  TEXT NOT NULL,     -- the node that took it
    taken_at              BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, day)           -- one node's snapshot per day: the first insert wins
);
