-- switcher-api: the data plane serves from memory.
-- Every change to what routes a request is announced on channel `switcher_state`, inside the
-- transaction that makes it (Postgres delivers the notification at commit), so every
-- instance can reload its in-memory routing state. Statement triggers also cover SQL written
-- by hand.

CREATE FUNCTION switcher_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('switcher_state', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER profiles_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON profiles
    FOR EACH STATEMENT EXECUTE FUNCTION switcher_notify_change();
CREATE TRIGGER models_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON models
    FOR EACH STATEMENT EXECUTE FUNCTION switcher_notify_change();
CREATE TRIGGER agent_state_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON agent_state
    FOR EACH STATEMENT EXECUTE FUNCTION switcher_notify_change();

-- Audit rows now arrive from each instance's journal, in batches and possibly more than once
-- (a replay after a crash): (instance_id, seq) names a row, so a replay writes it once.
ALTER TABLE audit_requests
    ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat.completions'
        CONSTRAINT audit_requests_endpoint_known
        CHECK (endpoint IN ('chat.completions', 'messages', 'responses')),
    ADD COLUMN instance_id TEXT,
    ADD COLUMN seq BIGINT,
    ADD CONSTRAINT audit_requests_instance_seq_key UNIQUE (instance_id, seq);
