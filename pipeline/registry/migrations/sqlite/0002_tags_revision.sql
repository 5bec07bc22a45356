-- Tags searchable by index; a revision counter that every registry write increases, so the
-- server can reuse what it computed (sampling populations) until the content changes.
-- Keep identical across dialects.

CREATE TABLE environment_tags (
    env_id        TEXT NOT NULL,
    version       TEXT NOT NULL,
    tag           TEXT NOT NULL,
    PRIMARY KEY (env_id, version, tag),
    FOREIGN KEY (env_id, version) REFERENCES environments (env_id, version)
);
CREATE INDEX environment_tags_tag ON environment_tags (tag);

CREATE TABLE registry_revision (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    n             BIGINT NOT NULL
);
INSERT INTO registry_revision (id, n) VALUES (1, 0);

-- Difficulty bands group one policy's rollouts by task.
CREATE INDEX rollouts_policy_task ON rollouts (policy, task_id);
