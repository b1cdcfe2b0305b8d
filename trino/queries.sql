-- Example queries over an archive (catalog `archive` = trino/iceberg-*.properties,
-- namespace `archive`, table `sensor_readings`).

-- Rows per day, pruned to the partitions of January.
SELECT date_trunc('day', recorded_at) AS day, count(*) AS readings, avg(value) AS avg_value
FROM archive.archive.sensor_readings
WHERE recorded_at >= TIMESTAMP '2024-01-01 00:00:00 UTC' AND recorded_at < TIMESTAMP '2024-02-01 00:00:00 UTC'
GROUP BY 1 ORDER BY 1;

-- Every archive batch: one snapshot each, with permafrost's properties.
SELECT snapshot_id, committed_at, operation,
       summary['permafrost.batch-id']     AS batch_id,
       summary['permafrost.window-start'] AS window_start,
       summary['permafrost.window-end']   AS window_end,
       summary['permafrost.rows']         AS rows,
       summary['total-records']           AS total_records
FROM archive.archive."sensor_readings$snapshots"
ORDER BY committed_at DESC;

-- Per-partition detail.
SELECT partition, record_count, file_count, total_size
FROM archive.archive."sensor_readings$partitions"
ORDER BY partition;

-- Time travel: the archive as of one batch, or as of a point in time.
SELECT count(*) FROM archive.archive.sensor_readings FOR VERSION AS OF 1234567890123456789;
SELECT count(*) FROM archive.archive.sensor_readings FOR TIMESTAMP AS OF TIMESTAMP '2024-03-01 00:00:00 UTC';
