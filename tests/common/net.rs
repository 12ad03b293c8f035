//! Helpers shared by the integration tests and the benchmark
//! (`bench/bench.rs` includes this file): no test-only dependencies.

/// Minimal HTTP GET over a raw socket (no extra client dependency): the body
/// of a 200 answer, `None` otherwise.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    let (status, body) = http_get_status(port, path).await?;
    (status == 200).then_some(body)
}

/// The status and body of a GET, whatever the status.
pub async fn http_get_status(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The partition a key lives in (keyed partitioning, like a real producer:
/// FNV-1a of the key modulo the partition count).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let h = key
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    (h % partitions as u32) as i32
}
