-- Workspace proxies imported from an attached Coder deployment (`--coder-url`) are kept with
-- the source 'coder'.
ALTER TABLE vantage_workspace_proxies
    DROP CONSTRAINT IF EXISTS vantage_workspace_proxies_source_check;
ALTER TABLE vantage_workspace_proxies
    ADD CONSTRAINT vantage_workspace_proxies_source_check
    CHECK (source IN ('config', 'registered', 'coder'));
