-- Dismissals with an end time (maintenance windows), a reason and who made them: a JSON list
-- of {section, until, reason, actor, at}, in the settings and in each audit row.
ALTER TABLE vantage_settings ADD COLUMN notes jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE vantage_settings_audit ADD COLUMN notes jsonb NOT NULL DEFAULT '[]'::jsonb;
