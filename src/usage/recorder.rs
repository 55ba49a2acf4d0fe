//! Moves usage events off the request path: `record` is a non-blocking `try_send` into a
//! bounded channel; a dedicated thread batches events into the ledger at least every
//! `flush_every`. A full channel is counted and logged, never silent. `shutdown` flushes
//! everything queued and waits for the thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use super::Ledger;
use crate::upstream::Usage;

/// One settled request, as the ledger records it.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub request_id: String,
    pub key_id: Arc<str>,
    pub model: Option<Arc<str>>,
    /// When the request started: its UTC day (and month) is where it counts.
    pub started: SystemTime,
    pub finished: SystemTime,
    pub error: bool,
    pub usage: Usage,
    pub cost_micros: u64,
    /// Usage was estimated because the upstream never reported it.
    pub estimated: bool,
    pub latency_ms: u64,
}

impl UsageEvent {
    pub fn request_id_of(id: &HeaderValue) -> String {
        id.to_str().unwrap_or_default().to_owned()
    }
}

enum Msg {
    Event(Box<UsageEvent>),
    Flush(mpsc::Sender<()>),
}

/// Events kept for a retry when the ledger cannot be written; older ones are dropped beyond it.
const MAX_PENDING: usize = 200_000;
const BATCH: usize = 2048;

pub struct Recorder {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    pub fn start(ledger: Ledger, capacity: usize, flush_every: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread_dropped = dropped.clone();
        // The thread ends once every sender is gone, after writing what was queued.
        std::thread::Builder::new()
            .name("keygate-ledger".into())
            .spawn(move || run(ledger, rx, flush_every, thread_dropped))?;
        Ok(Self { tx, dropped })
    }

    /// Queues an event without blocking.
    pub fn record(&self, event: UsageEvent) {
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::error!(
                        dropped_total = n,
                        "usage ledger queue full or closed: usage event dropped"
                    );
                }
            }
        }
    }

    /// Events that could not be queued or written, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until everything queued before this call is in the ledger (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.tx.send(Msg::Flush(ack)).is_ok() && done.recv_timeout(timeout).is_ok()
    }
}

fn run(
    mut ledger: Ledger,
    rx: mpsc::Receiver<Msg>,
    flush_every: Duration,
    dropped: Arc<AtomicU64>,
) {
    let mut pending: Vec<UsageEvent> = Vec::with_capacity(BATCH);
    let mut next_flush = Instant::now() + flush_every;
    let mut writes: u64 = 0;
    loop {
        let wait = next_flush.saturating_duration_since(Instant::now());
        let (flush_now, ack, stop) = match rx.recv_timeout(wait) {
            Ok(Msg::Event(e)) => {
                pending.push(*e);
                (pending.len() >= BATCH, None, false)
            }
            Ok(Msg::Flush(ack)) => (true, Some(ack), false),
            Err(RecvTimeoutError::Timeout) => (true, None, false),
            Err(RecvTimeoutError::Disconnected) => (true, None, true),
        };
        if flush_now {
            if !pending.is_empty() {
                match ledger.write(&pending) {
                    Ok(_) => pending.clear(),
                    Err(e) => {
                        tracing::error!(error = %e, queued = pending.len(), "cannot write the usage ledger; will retry");
                        if pending.len() > MAX_PENDING {
                            let excess = pending.len() - MAX_PENDING;
                            pending.drain(..excess);
                            dropped.fetch_add(excess as u64, Ordering::Relaxed);
                        }
                    }
                }
                writes += 1;
                if writes % 3600 == 1 {
                    if let Err(e) = ledger.prune(SystemTime::now()) {
                        tracing::warn!(error = %e, "cannot prune settled request ids");
                    }
                }
            }
            next_flush = Instant::now() + flush_every;
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
        if stop {
            return;
        }
    }
}
