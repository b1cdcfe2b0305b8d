-- Generates :rows sensor readings spread evenly over the 60 days before now(),
-- and one device event per minute-ish over the same period (a tenth as many).
-- psql -v rows=1000000 -f schemas/sample-data.sql
INSERT INTO public.sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload)
SELECT now() - (i * (interval '60 days' / :rows)),
       (i % 8) + 1,
       'sensor-' || ((i % 8) + 1),
       round((20 + 10 * sin(i / 500.0))::numeric, 4)::float8,
       CASE WHEN i % 8 < 4 THEN 'celsius' ELSE 'percent' END,
       (i % 10000) / 100.0,
       jsonb_build_object('fw', 'v1.' || (i % 5), 'battery', i % 100)
FROM generate_series(1, :rows) AS i;

INSERT INTO public.device_events (occurred_at, device_id, event_type, severity, payload)
SELECT now() - (i * (interval '60 days' / (:rows / 10 + 1))),
       (i % 20) + 1,
       (ARRAY['boot', 'heartbeat', 'alarm', 'update'])[(i % 4) + 1],
       (i % 5)::smallint,
       jsonb_build_object('seq', i)
FROM generate_series(1, :rows / 10) AS i;
