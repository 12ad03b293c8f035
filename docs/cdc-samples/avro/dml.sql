insert into public.alltypes select 6, 'avro', n_plain, n_38_10, n_12_2, n_5_0, m, r, dp, i2, i4, i8, b, t, vc, vc_nolen, c3, tstz, tstz3, ts3, ts6, ts, ts0, d, tm, tm3, tmtz, iv, u, jb, js, x, ta, ia, na, tsa, ba, e, bt1, bt, vb, ip, cidr_, mac, hs, i4r, tsr, pt, dom, "CamelCol", "order" from public.alltypes where id = 2;
update public.alltypes set t = 'avro-updated', n_12_2 = 0.01 where id = 6;
delete from public.alltypes where id = 6;
insert into public."CamelTable" values (3, 'avro');
