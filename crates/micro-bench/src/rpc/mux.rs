//! The multiplexed ceiling: a hand-written, pipelined TCP echo in the shape
//! of micro's mucp connection, with nothing else in it. Frames are
//! `[u32 length][u32 id][payload]` (the length counts the id). A client
//! connection has a writer task that takes every call queued, writes them
//! in one write, and a reader task that completes callers by id; the
//! server answers every complete frame it has buffered before one write.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

type Waiting = Arc<Mutex<HashMap<u32, oneshot::Sender<Bytes>>>>;

/// One shared connection; clones share it.
#[derive(Clone)]
pub(crate) struct Client {
    tx: mpsc::UnboundedSender<(Bytes, oneshot::Sender<Bytes>)>,
}

impl Client {
    /// Connects and starts the connection's writer and reader.
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, mut w) = s.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Bytes, oneshot::Sender<Bytes>)>();
        let waiting: Waiting = Arc::default();
        let waiting_w = waiting.clone();
        tokio::spawn(async move {
            let mut next_id = 0u32;
            let mut buf = BytesMut::with_capacity(64 * 1024);
            while let Some(first) = rx.recv().await {
                {
                    let mut waiting = waiting_w.lock().unwrap_or_else(|e| e.into_inner());
                    let mut push = |(payload, reply): (Bytes, oneshot::Sender<Bytes>)| {
                        next_id = next_id.wrapping_add(1);
                        waiting.insert(next_id, reply);
                        buf.put_u32(4 + payload.len() as u32);
                        buf.put_u32(next_id);
                        buf.extend_from_slice(&payload);
                    };
                    push(first);
                    while let Ok(more) = rx.try_recv() {
                        push(more);
                    }
                }
                if w.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(64 * 1024, r);
            loop {
                let Ok(len) = r.read_u32().await else { return };
                let Ok(id) = r.read_u32().await else { return };
                let mut payload = BytesMut::zeroed(len.saturating_sub(4) as usize);
                if r.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let reply = waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(reply) = reply {
                    let _ = reply.send(payload.freeze());
                }
            }
        });
        Ok(Client { tx })
    }

    /// One echo call.
    pub(crate) async fn call(&self, payload: Bytes) -> anyhow::Result<Bytes> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((payload, tx)).map_err(|_| anyhow::anyhow!("connection closed"))?;
        Ok(rx.await?)
    }
}

/// The server side of one connection: echoes every frame, writing once
/// for all the complete frames read together.
pub(crate) async fn serve(s: TcpStream) {
    let _ = s.set_nodelay(true);
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let Ok(len) = r.read_u32().await else { return };
        let start = out.len();
        out.extend_from_slice(&len.to_be_bytes());
        out.resize(start + 4 + len as usize, 0);
        if r.read_exact(&mut out[start + 4..]).await.is_err() {
            return;
        }
        let buffered = r.buffer();
        let whole_frame_next = buffered.len() >= 4
            && buffered.len() >= 4 + u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]) as usize;
        if !whole_frame_next {
            if w.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
