-- switcher-api: the operator's side: switch history with rollback, agent keys, request paging.

-- A rollback is a switch like any other; `rollback_of` names the switch it undid (a rollback
-- of the latest switch) or returned to (a rollback to a chosen switch). A name, not a
-- foreign key, like the rest of the audit.
ALTER TABLE audit_switches ADD COLUMN rollback_of BIGINT;

-- History is read per agent, newest first by id (the order in which switches took effect),
-- and a rollback reads the agent's latest switch the same way.
DROP INDEX audit_switches_agent_id_idx;
CREATE INDEX audit_switches_agent_id_id_idx ON audit_switches (agent_id, id);

-- `GET /admin/requests` pages newest first by id, for one agent or for all (the primary
-- key serves the latter).
DROP INDEX audit_requests_agent_id_idx;
CREATE INDEX audit_requests_agent_id_id_idx ON audit_requests (agent_id, id);

-- Keys of one agent each. Only the SHA-256 of a key is kept; the key is shown once.
CREATE TABLE agent_keys (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id     TEXT NOT NULL CHECK (length(agent_id) BETWEEN 1 AND 128),
    name         TEXT CHECK (length(name) BETWEEN 1 AND 128),
    key_sha256   BYTEA NOT NULL CHECK (length(key_sha256) = 32),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    CONSTRAINT agent_keys_key_sha256_key UNIQUE (key_sha256)
);
CREATE INDEX agent_keys_agent_id_idx ON agent_keys (agent_id, id);

-- Keys are part of every instance's routing state. `last_used_at` is not, and is written
-- in the background about once a minute per key: updates of it alone announce nothing.
CREATE TRIGGER agent_keys_notify
    AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF agent_id, key_sha256 ON agent_keys
    FOR EACH STATEMENT EXECUTE FUNCTION switcher_notify_change();
