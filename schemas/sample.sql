-- Sample source tables used by `permafrost demo` and the test suite.
-- sensor_readings mirrors the seed tool's table, with a primary key, a numeric
-- and a jsonb payload; device_events is an hourly event table.

CREATE TABLE IF NOT EXISTS public.sensor_readings (
    id          bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL,
    sensor_id   integer NOT NULL,
    sensor_name text NOT NULL,
    value       double precision,
    unit        varchar(16) NOT NULL,
    quality     numeric(5,2),
    payload     jsonb
);
CREATE INDEX IF NOT EXISTS sensor_readings_recorded_at_idx ON public.sensor_readings (recorded_at);

CREATE TABLE IF NOT EXISTS public.device_events (
    occurred_at timestamptz NOT NULL,
    device_id   integer NOT NULL,
    event_type  text NOT NULL,
    severity    smallint NOT NULL,
    payload     jsonb
);
CREATE INDEX IF NOT EXISTS device_events_occurred_at_idx ON public.device_events (occurred_at);
