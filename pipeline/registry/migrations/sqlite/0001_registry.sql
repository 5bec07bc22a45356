-- The registry schema, SQLite dialect. Keep the logical schema identical to
-- ../postgres/0001_registry.sql (the store tests run the same suite against both).

CREATE TABLE environments (
    env_id        TEXT NOT NULL,
    version       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    description   TEXT NOT NULL,
    metadata      TEXT NOT NULL,          -- JSON: tags, license, provenance, tool specs, verifier, baselines
    seq           INTEGER NOT NULL,       -- registration order, for stable pagination
    PRIMARY KEY (env_id, version)
);
CREATE UNIQUE INDEX environments_seq ON environments (seq);

CREATE TABLE tasks (
    task_id       TEXT PRIMARY KEY,
    env_id        TEXT NOT NULL,
    env_version   TEXT NOT NULL,
    level         TEXT NOT NULL,
    seed          INTEGER NOT NULL,
    task_index    INTEGER NOT NULL,
    body          TEXT NOT NULL,          -- the task record (JSON)
    FOREIGN KEY (env_id, env_version) REFERENCES environments (env_id, version)
);

CREATE TABLE task_sets (
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,          -- sha256 over (split, position, task id) of every member
    PRIMARY KEY (name, version)
);

CREATE TABLE task_set_members (
    set_name      TEXT NOT NULL,
    set_version   TEXT NOT NULL,
    split         TEXT NOT NULL,
    position      INTEGER NOT NULL,
    task_id       TEXT NOT NULL REFERENCES tasks (task_id),
    PRIMARY KEY (set_name, set_version, split, position),
    FOREIGN KEY (set_name, set_version) REFERENCES task_sets (name, version)
);
CREATE INDEX task_set_members_task ON task_set_members (task_id);

CREATE TABLE rollouts (
    rollout_id    TEXT PRIMARY KEY,       -- the client's idempotency key
    task_id       TEXT NOT NULL REFERENCES tasks (task_id),
    policy        TEXT NOT NULL,
    sample_seed   INTEGER NOT NULL,
    reward        REAL NOT NULL,
    passed        BOOLEAN NOT NULL,
    masked        BOOLEAN NOT NULL,
    failure_kind  TEXT NOT NULL,
    verdict       TEXT NOT NULL           -- the verdict (JSON)
);
CREATE INDEX rollouts_task_policy ON rollouts (task_id, policy);
