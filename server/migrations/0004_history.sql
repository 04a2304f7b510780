-- History (`GetHistory`) read from the stored logs, filtered by time and section through
-- indexes. Set on append from the encoded row; rows stored before this version have them
-- NULL and are not part of the history.

-- Section changes among the events: the section (vantage.v1.Section number) and the event's
-- time; both NULL for other events.
ALTER TABLE vantage_events ADD COLUMN section smallint;
ALTER TABLE vantage_events ADD COLUMN at timestamptz;
CREATE INDEX vantage_events_history ON vantage_events (at, revision)
    WHERE section IS NOT NULL;

-- Each logged observation's section, target and observation time, so one series
-- (vantage, check, target) is read newest first from an index (the id orders equal times).
ALTER TABLE vantage_observation_log ADD COLUMN section smallint;
ALTER TABLE vantage_observation_log ADD COLUMN target text;
ALTER TABLE vantage_observation_log ADD COLUMN observed_at timestamptz;
CREATE INDEX vantage_observation_log_series
    ON vantage_observation_log (vantage, check_id, target, observed_at, id);
