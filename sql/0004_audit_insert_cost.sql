-- switcher-api: an audit row costs the database less CPU.
-- The prompt hash's CHECK was a regular expression: about 10 µs of the server's CPU for every
-- inserted row, half of all an audit row cost it (measured over 100,000 rows). The same rule
-- (exactly 64 characters, each one of 0-9 a-f; NULL allowed) said without a regex costs about
-- a third of that. Re-adding it checks the rows already there once, under the migration's
-- lock; the journal holds the audit rows of running instances meanwhile.
ALTER TABLE audit_requests
    DROP CONSTRAINT audit_requests_prompt_sha256_check,
    ADD CONSTRAINT audit_requests_prompt_sha256_check
        CHECK (octet_length(prompt_sha256) = 64 AND ltrim(prompt_sha256, '0123456789abcdef') = '');
