-- 1. insert with non-null values that stress exactness
insert into public.alltypes values (
  2, 'ключ 🔑', 123456789012345678901234567890.123456789, 1234567890123456789012345678.0123456789, -9999999999.99, -99999,
  '-92233720368547758.08', 0.1, 0.1, -32768, -2147483648, -9223372036854775808, false,
  E'héllo 世界 🎉 "q" \\ back\nnewline', 'ünïcödé-20-chars-xyz', 'x', 'é',
  '1899-12-31 23:59:59.999999-05', '2999-12-31 23:59:59.999+14', '1969-12-31 23:59:59.999', '2262-04-11 23:47:16.854775',
  '1900-01-01 00:00:00.000001', '2100-01-01 00:00:01', '0001-01-01', '23:59:59.999999', '00:00:00.001', '23:59:59.999999-14:59',
  '-1 year -2 mons +3 days -04:05:06.789', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{"n": 1.000000000000000000001, "s": "é", "z": null}', '{"b":1, "a":2, "a":3}', '<?xml version="1.0"?><r a="1">ü</r>',
  '{}', '{1,NULL,3}', '{NULL,-0.01}', '{}', '\x00ff10', 'happy', '0', '0101', '', '2001:db8::1/64',
  '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', '"k 1"=>"v", "n"=>NULL', 'empty', '(,2024-01-01 00:00:00+00]', '(-0.0,1e300)', 0, 'CAMEL ✓', -1);
-- 2. special values: NaN numerics/floats, 24:00, infinities
insert into public.alltypes (id, k, n_plain, n_38_10, n_12_2, r, dp, ta, ia, tm, tstz, ts, ts3, d)
  values (4, 'nan', 'NaN', 'NaN', 'NaN', 'NaN', 'Infinity', '{NULL}', '{NULL,NULL}', '24:00:00', 'infinity', '-infinity', 'infinity', '-infinity');
insert into public.alltypes (id, k, n_plain, r, dp, tstz, ts, d)
  values (5, 'inf', '-Infinity', '-Infinity', '-Infinity', '-infinity', 'infinity', 'infinity');
-- 3. insert with all nullable columns NULL
insert into public.alltypes (id, k) values (3, '');
-- 4. update
update public.alltypes set n_plain = 0.000000000000000000000000000001, t = 'updated', "order" = 6, iv = '1 mon', tm = '00:00' where id = 1 and k = 'a';
-- 5. delete (+ tombstone)
delete from public.alltypes where id = 3 and k = '';
-- other tables
insert into public."CamelTable" values (2, 'Ins');
insert into public."user" values (2, 'ins', 2);
update public."user" set "from" = 3 where id = 2;
delete from public."CamelTable" where "Id" = 2;
