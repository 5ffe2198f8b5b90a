-- nudge schema, SQLite. Times are Unix milliseconds (BIGINT); JSON is TEXT.
-- Kept column-for-column identical to migrations/postgres/0001_init.sql.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id              TEXT PRIMARY KEY,          -- Segment userId, else anonymousId
    traits          TEXT NOT NULL DEFAULT '{}',
    email           TEXT,                      -- traits.email
    push_token      TEXT,                      -- traits.push_token or context.device.token
    timezone        TEXT,                      -- traits.timezone (IANA)
    unsubscribed_at BIGINT,                    -- unsubscribed from email through nudge
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE topic_optouts (
    user_id TEXT NOT NULL,
    topic   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (user_id, topic)
);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT NOT NULL UNIQUE,          -- Segment messageId: a resend is a no-op
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,                 -- track | identify
    name        TEXT,                          -- track event name
    properties  TEXT NOT NULL DEFAULT '{}',
    ts          BIGINT NOT NULL,               -- the event's own timestamp
    received_at BIGINT NOT NULL
);
CREATE INDEX events_user_name_ts ON events (user_id, name, ts);
CREATE INDEX events_name_ts ON events (name, ts);

-- A user entering a campaign. A pending `wait` is a row with a future due_at.
CREATE TABLE entries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id   TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    trigger_id    TEXT NOT NULL,               -- event messageId, or cron:<fire time>
    dedupe_key    TEXT NOT NULL UNIQUE,        -- replayed triggers and `reentry: never` collide here
    trigger_ts    BIGINT NOT NULL,
    trigger_event TEXT NOT NULL DEFAULT '{}',  -- {name, properties} for conditions and templates
    due_at        BIGINT NOT NULL,
    status        TEXT NOT NULL,               -- waiting | decided | cancelled | skipped
    reason        TEXT,
    lease_owner   TEXT,
    lease_until   BIGINT,
    lease_version BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    decided_at    BIGINT
);
CREATE INDEX entries_due ON entries (status, due_at);
CREATE INDEX entries_campaign_user ON entries (campaign_id, user_id, trigger_ts);

-- One per entry that passed unless/if/exclude_if: the arm and what was chosen (intent-to-treat).
CREATE TABLE assignments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id    BIGINT NOT NULL UNIQUE,
    campaign_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    arm         TEXT NOT NULL,                 -- treatment | holdout | control
    channel     TEXT,
    send_at     BIGINT,                        -- when it was (or would have been) sent
    status      TEXT NOT NULL,                 -- scheduled | delivered | held_out | suppressed | capped | failed
    reason      TEXT,
    assigned_at BIGINT NOT NULL
);
CREATE INDEX assignments_campaign ON assignments (campaign_id, assigned_at);
CREATE INDEX assignments_user ON assignments (user_id);

-- One per treatment assignment. Claimed with a lease; only the current lease_version may finish it.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,      -- also the Message-ID / push message id
    assignment_id   BIGINT NOT NULL,
    campaign_id     TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    channel         TEXT NOT NULL,
    priority        BIGINT NOT NULL DEFAULT 0,
    recipient       TEXT NOT NULL,
    payload         TEXT NOT NULL,             -- rendered message, JSON
    status          TEXT NOT NULL,             -- pending | sent | failed | capped | cancelled
    attempts        BIGINT NOT NULL DEFAULT 0,
    due_at          BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    lease_version   BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         BIGINT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_user ON outbox (user_id);

-- Links as rendered in a message: a click token names (message, index), never a URL.
CREATE TABLE links (
    outbox_id BIGINT NOT NULL,
    idx       BIGINT NOT NULL,
    url       TEXT NOT NULL,
    PRIMARY KEY (outbox_id, idx)
);

-- Frequency caps count these; written in the transaction that claims the message.
CREATE TABLE sends (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id   BIGINT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX sends_user_at ON sends (user_id, at);

-- Append-only: every decision and its reasons, readable per user.
CREATE TABLE message_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL,
    campaign_id TEXT,
    entry_id    BIGINT,
    outbox_id   BIGINT,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX message_log_user ON message_log (user_id, id);

-- A cron firing runs on exactly one node: the node whose insert wins fans it out.
CREATE TABLE cron_firings (
    campaign_id TEXT NOT NULL,
    fire_at     BIGINT NOT NULL,
    node        TEXT NOT NULL,
    entries     BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, fire_at)
);

-- Pause/resume through the API, on top of `enabled:` in the file.
CREATE TABLE campaign_state (
    campaign_id TEXT PRIMARY KEY,
    paused      BIGINT NOT NULL DEFAULT 0,
    updated_at  BIGINT NOT NULL
);
