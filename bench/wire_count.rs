//! A counting forwarder between sinks and Postgres: it passes every byte
//! on and counts, in the frontend's messages, the ones that make Postgres
//! answer — a simple query (`Q`, one round trip however many statements
//! it holds; a `COPY … FROM STDIN` waits once more, after its `CopyDone`,
//! `c`) and a `Sync` (`S`, the end of an extended-protocol round trip) —
//! and the statements executed (`Q` and `E`), and the same within
//! explicit transactions (a simple query starting `BEGIN` up to one
//! starting `COMMIT` or `ROLLBACK`: the sink's batch transactions). The
//! count comes from the wire, not from the sink's own bookkeeping.
//! Connections must not use TLS (`sslmode=disable`): an encrypted stream
//! is passed on uncounted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the frontends sent so far, over all connections.
#[derive(Default)]
pub(crate) struct WireCounts {
    queries: AtomicU64,
    syncs: AtomicU64,
    executes: AtomicU64,
    /// Explicit transactions ended, and the round trips and statements
    /// inside them (BEGIN and COMMIT included).
    transactions: AtomicU64,
    transaction_round_trips: AtomicU64,
    transaction_statements: AtomicU64,
    /// `COPY` statements inside them: one per table a batch stages.
    transaction_copies: AtomicU64,
    /// Statements prepared inside them (`P`, Parse): a connection's first
    /// use of a statement costs a round trip more.
    transaction_prepares: AtomicU64,
    /// Connections passed on uncounted (TLS).
    opaque: AtomicU64,
}

impl WireCounts {
    /// Round trips: simple queries, syncs and the ends of COPY data.
    pub(crate) fn round_trips(&self) -> u64 {
        self.queries.load(Ordering::Relaxed) + self.syncs.load(Ordering::Relaxed)
    }

    /// Transactions ended, with their round trips, statements, `COPY`s and
    /// preparations in all.
    pub(crate) fn transactions(&self) -> [u64; 5] {
        [
            &self.transactions,
            &self.transaction_round_trips,
            &self.transaction_statements,
            &self.transaction_copies,
            &self.transaction_prepares,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn opaque(&self) -> u64 {
        self.opaque.load(Ordering::Relaxed)
    }
}

/// The SSLRequest and GSSENCRequest codes of an untyped first message.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

/// Listens on a free local port and forwards each connection to
/// `upstream` (host:port); returns the port and the counts.
pub(crate) async fn start(upstream: String) -> anyhow::Result<(u16, Arc<WireCounts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let counts = Arc::new(WireCounts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (c, upstream) = (c.clone(), upstream.clone());
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(&upstream).await {
                    let _ = forward(client, server, &c).await;
                }
            });
        }
    });
    Ok((port, counts))
}

/// One connection: the backend's bytes copied back as they come, the
/// frontend's read message by message.
async fn forward(client: TcpStream, server: TcpStream, counts: &WireCounts) -> anyhow::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let result = async {
        // The untyped start: the startup message, or an encryption request
        // (refused, and the client goes on in clear, or accepted, and the
        // rest is unreadable): passed on uncounted.
        let len = from_client.read_u32().await?;
        let mut msg = len.to_be_bytes().to_vec();
        msg.resize(len as usize, 0);
        from_client.read_exact(&mut msg[4..]).await?;
        to_server.write_all(&msg).await?;
        let code = msg
            .get(4..8)
            .map_or(0, |c| u32::from_be_bytes(c.try_into().unwrap()));
        if ENCRYPTION_REQUESTS.contains(&code) {
            counts.opaque.fetch_add(1, Ordering::Relaxed);
            tokio::io::copy(&mut from_client, &mut to_server).await?;
            return anyhow::Ok(());
        }
        // Round trips, statements, COPYs and preparations of the open
        // transaction.
        let mut tx: Option<[u64; 4]> = None;
        loop {
            let kind = from_client.read_u8().await?;
            let len = from_client.read_u32().await?;
            msg.clear();
            msg.push(kind);
            msg.extend_from_slice(&len.to_be_bytes());
            msg.resize(1 + len as usize, 0);
            from_client.read_exact(&mut msg[5..]).await?;
            match kind {
                b'Q' => {
                    counts.queries.fetch_add(1, Ordering::Relaxed);
                    let sql = &msg[5..];
                    let starts =
                        |w: &[u8]| sql.len() >= w.len() && sql[..w.len()].eq_ignore_ascii_case(w);
                    if starts(b"BEGIN") {
                        tx = Some([0; 4]);
                    }
                    if let Some([trips, statements, copies, _]) = &mut tx {
                        *trips += 1;
                        *statements += 1;
                        *copies += u64::from(starts(b"COPY"));
                    }
                    if starts(b"COMMIT") || starts(b"ROLLBACK") {
                        if let Some([trips, statements, copies, prepares]) = tx.take() {
                            counts.transactions.fetch_add(1, Ordering::Relaxed);
                            for (c, n) in [
                                (&counts.transaction_round_trips, trips),
                                (&counts.transaction_statements, statements),
                                (&counts.transaction_copies, copies),
                                (&counts.transaction_prepares, prepares),
                            ] {
                                c.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                    }
                }
                // A Sync, or the end of COPY's data: the client waits.
                b'S' | b'c' => {
                    counts.syncs.fetch_add(1, Ordering::Relaxed);
                    if let Some([trips, ..]) = &mut tx {
                        *trips += 1;
                    }
                }
                b'E' => {
                    counts.executes.fetch_add(1, Ordering::Relaxed);
                    if let Some([_, statements, ..]) = &mut tx {
                        *statements += 1;
                    }
                }
                b'P' => {
                    if let Some([.., prepares]) = &mut tx {
                        *prepares += 1;
                    }
                }
                _ => {}
            }
            to_server.write_all(&msg).await?;
        }
    }
    .await;
    back.abort();
    result
}
