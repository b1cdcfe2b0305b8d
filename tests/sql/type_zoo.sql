-- A "type zoo": one column per supported Postgres type, and rows of edge
-- values. Used by tests/it/types.rs; every value is compared, after archiving,
-- with what PyIceberg and DuckDB read back.
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünïcödé');
CREATE TYPE reading AS (x double precision, tag text, at timestamptz, vals integer[]);
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN short_text AS varchar(10);

CREATE TABLE zoo (
    id          bigint PRIMARY KEY,
    ts          timestamptz NOT NULL,
    c_int2      smallint,
    c_int4      integer,
    c_int8      bigint,
    c_oid       oid,
    c_float4    real,
    c_float8    double precision,
    c_num       numeric(12,3),
    c_num38     numeric(38,10),
    c_numfree   numeric,
    c_num50     numeric(50,5),
    c_money     money,
    c_bool      boolean,
    c_text      text,
    c_varchar   varchar(20),
    c_char      char(5),
    c_name      name,
    c_qchar     "char",
    c_citext    citext,
    c_enum      mood,
    c_bytea     bytea,
    c_uuid      uuid,
    c_date      date,
    c_time      time,
    c_timetz    timetz,
    c_ts        timestamp,
    c_tstz      timestamptz,
    c_interval  interval,
    c_json      json,
    c_jsonb     jsonb,
    c_inet      inet,
    c_cidr      cidr,
    c_macaddr   macaddr,
    c_macaddr8  macaddr8,
    c_bit       bit(4),
    c_varbit    varbit(10),
    c_domain    positive_int,
    c_dtext     short_text,
    c_xml       xml,
    c_int_arr   integer[],
    c_text_arr  text[],
    c_num_arr   numeric(10,2)[],
    c_tstz_arr  timestamptz[],
    c_inet_arr  inet[],
    c_comp      reading,
    c_comp_arr  reading[]
);
CREATE INDEX ON zoo (ts);

-- Row 1: ordinary values.
INSERT INTO zoo VALUES (
    1, '2024-01-10 12:00:00+00', 1, 2, 3, 4, 1.5, 2.25, 123456789.123, 1234567890123456789012345678.0123456789,
    3.14159265358979323846264338327950288419716939937510, 12345678901234567890123456789012345678901234.56789,
    '12.34', true, 'hello', 'varchar', 'ab', 'name', 'q', 'CiText', 'happy', '\x0001ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '2024-01-10', '12:34:56.789', '12:34:56.789+02', '2024-01-10 12:34:56.789', '2024-01-10 12:34:56.789+01',
    '1 year 2 mons 3 days 04:05:06.789', '{"a": [1, 2.50, "x"],  "b": null}', '{"a": [1, 2.50, "x"], "b": null}',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'1010', B'101',
    7, 'short', '<a b="c">text</a>', ARRAY[1, 2, 3], ARRAY['a', 'b c', '"quoted"', ''], ARRAY[1.10, 2.25]::numeric(10,2)[],
    ARRAY['2024-01-10 00:00:00+00', '2024-03-31 01:30:00+00']::timestamptz[], ARRAY['::1', '10.1.2.3/32']::inet[],
    ROW(1.5, 'tag', '2024-01-10 00:00:00+00', ARRAY[1, NULL, 3])::reading,
    ARRAY[ROW(2.5, 'b', NULL, ARRAY[]::integer[])::reading, NULL]::reading[]
);

-- Row 2: NULL in every nullable column.
INSERT INTO zoo (id, ts) VALUES (2, '2024-01-10 13:00:00+00');

-- Row 3: extremes.
INSERT INTO zoo VALUES (
    3, '2024-01-10 14:00:00+00', -32768, -2147483648, -9223372036854775808, 4294967295,
    'NaN', '-Infinity', -999999999.999, -9999999999999999999999999999.9999999999,
    'NaN', '-12345678901234567890123456789012345678901234.5', '-92233720368547758.08', false,
    repeat('long ünïcödé text ✓ ', 5000), '', '     ', repeat('n', 63), E'\\001', 'ÄÖÜ',
    'ünïcödé', decode(repeat('ff00', 300000), 'hex'), '00000000-0000-0000-0000-000000000000',
    '0001-01-01', '00:00:00', '23:59:59.999999-14:59', '1970-01-01 00:00:00', '2024-03-10 02:30:00-08',
    '-1 years -2 mons +3 days -04:05:06.000001', '[]', '{"ünïcödé": "✓", "n": 1e100}',
    '::ffff:1.2.3.4', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00:00:00', B'0000', B'',
    2147483647, '', '<x/>', ARRAY[NULL, NULL]::integer[], ARRAY[]::text[], ARRAY[-99999999.99]::numeric(10,2)[],
    ARRAY[NULL]::timestamptz[], ARRAY[]::inet[],
    ROW(NULL, NULL, NULL, NULL)::reading, ARRAY[]::reading[]
);

-- Row 4: maxima and DST.
INSERT INTO zoo (id, ts, c_int2, c_int4, c_int8, c_float4, c_float8, c_num, c_numfree, c_money, c_tstz, c_ts, c_date, c_time, c_interval, c_timetz)
VALUES (4, '2024-01-10 15:00:00+00', 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
        999999999.999, '-0.000000000000000000000000000000000000000000000001', '92233720368547758.07',
        '2024-10-27 01:30:00+00', '2262-04-11 23:47:16.854775', '5874897-12-31', '23:59:59.999999', '178000000 years', '00:00:00+15:59');
