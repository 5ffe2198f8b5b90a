-- Trained models: every training run's outcome, promoted or not, so `GET /v1/models` and
-- `nudge report models` can show versions, metrics beside baselines and why a model was (not)
-- promoted. At most one row per (kind, goal) has status 'serving'.
-- Kept column-for-column identical to migrations/sqlite/0005_models.sql.
CREATE TABLE models (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,            -- send_time | channel | propensity
    goal        TEXT NOT NULL DEFAULT '', -- the goal event of a propensity model; '' otherwise
    version     BIGINT NOT NULL,          -- 1, 2, 3… per (kind, goal)
    status      TEXT NOT NULL,            -- serving | retired | rejected | insufficient
    reason      TEXT NOT NULL,            -- why it was promoted, rejected or not trained
    trained_at  BIGINT NOT NULL,
    node        TEXT NOT NULL,
    card        TEXT NOT NULL,            -- the ModelCard JSON (metrics, baselines, drift reference); '{}' when not trained
    artifact    TEXT,                     -- the Model JSON; NULL when not trained
    UNIQUE (kind, goal, version)
);
CREATE INDEX models_status ON models (kind, goal, status);

-- Feature drift of the model in service, measured at each training run: PSI per feature.
CREATE TABLE model_drift (
    model_id    BIGINT NOT NULL,
    measured_at BIGINT NOT NULL,
    psi         TEXT NOT NULL,            -- JSON [[feature, psi], …]
    PRIMARY KEY (model_id, measured_at)
);

-- Which send-time arm an assignment was in: predicted, fixed (send_time_test), explore, or the
-- fallback used; NULL for campaigns whose send time is not predicted.
ALTER TABLE assignments ADD COLUMN send_time_arm TEXT;
