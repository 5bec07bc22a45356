-- Curriculum draws count one policy's outcomes per task on every request: an index that holds
-- the outcome columns answers them without reading the rows (and their verdicts). Every SQLite
-- index ends in the rowid, which orders rollouts by insertion.
DROP INDEX rollouts_policy_task;
CREATE INDEX rollouts_policy_task_outcome ON rollouts (policy, task_id, masked, passed);
