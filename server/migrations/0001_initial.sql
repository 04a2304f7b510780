-- vantage schema, version 1. Applied by `PgStore::connect` inside a transaction that holds
-- an advisory lock; never edit a released migration, add the next one instead.

-- Settings: one row.
CREATE TABLE vantage_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    dismissed text[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vantage_settings_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    dismissed text[] NOT NULL
);

-- Vantages. applied_seq belongs to instance_id.
CREATE TABLE vantage_vantages (
    name text PRIMARY KEY,
    region text NOT NULL DEFAULT '',
    version text NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}',
    instance_id text NOT NULL DEFAULT '',
    last_seen_at timestamptz,
    applied_seq bigint NOT NULL DEFAULT 0 CHECK (applied_seq >= 0)
);

-- The cluster-wide observation log: protobuf-encoded vantage.v1.Observation.
CREATE TABLE vantage_observation_log (
    id bigserial PRIMARY KEY,
    vantage text NOT NULL,
    instance_id text NOT NULL,
    check_id text NOT NULL,
    seq bigint NOT NULL,
    observation bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);

-- The latest observation per (vantage, check and target: `check_id` holds "<check>\x1f<target>").$
CREATE TABLE vantage_latest_observations (
    vantage text NOT NULL,
    check_id text NOT NULL,
    id bigint NOT NULL,
    instance_id text NOT NULL,
    observation bytea NOT NULL,
    PRIMARY KEY (vantage, check_id)
);

-- Watch events: protobuf-encoded vantage.v1.WatchEvent without its revision.
CREATE TABLE vantage_events (
    revision bigserial PRIMARY KEY,
    payload bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);

-- Registries (registry::RegistryStore).
CREATE TABLE vantage_provisioner_daemons (
    name text PRIMARY KEY,
    id text NOT NULL,
    organization_id text NOT NULL,
    version text NOT NULL,
    api_version text NOT NULL,
    provisioners text[] NOT NULL,
    tags jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);

CREATE TABLE vantage_workspace_proxies (
    name text PRIMARY KEY,
    id text NOT NULL,
    display_name text NOT NULL,
    icon_url text NOT NULL,
    url text NOT NULL,
    region text NOT NULL,
    derp_enabled boolean NOT NULL,
    derp_only boolean NOT NULL,
    version text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    source text NOT NULL CHECK (source IN ('config', 'registered'))
);
