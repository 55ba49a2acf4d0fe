//! Moves usage events off the request path: `record` is a non-blocking `try_send` into a
//! bounded channel; a dedicated thread wakes at least every `flush_every` (and early when
//! many events are queued) and writes what it finds to the ledger in one batch. A full channel is counted and logged, never silent. `shutdown` flushes
//! everything queued and waits for the thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use super::Ledger;
use crate::upstream::Usage;

/// One settled request, as the ledger records it.
#[derive(Debug, Clone)]
pub struct UsageEvent {
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

enum Msg {
    Event(Box<UsageEvent>),
    Flush(mpsc::Sender<()>),
}

/// Events kept for a retry when the ledger cannot be written; older ones are dropped beyond it.
const MAX_PENDING: usize = 200_000;
/// The writer is woken early each time this many events are queued, so that a burst cannot
/// fill the queue within one flush interval.
const WAKE_EVERY: usize = 8192;

pub struct Recorder {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Unix milliseconds since which usage has been waiting to be written; 0 when none waits.
    unflushed_since: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    writer: std::thread::Thread,
}

impl Recorder {
    pub fn start(ledger: Ledger, capacity: usize, flush_every: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let unflushed_since = Arc::new(AtomicU64::new(0));
        let (d, q, w) = (dropped.clone(), queued.clone(), unflushed_since.clone());
        // The thread ends once every sender is gone, after writing what was queued.
        let handle = std::thread::Builder::new()
            .name("keygate-ledger".into())
            .spawn(move || run(ledger, rx, flush_every, d, q, w))?;
        Ok(Self {
            tx,
            dropped,
            unflushed_since,
            queued,
            writer: handle.thread().clone(),
        })
    }

    /// Queues an event without blocking. The writer sleeps between flushes instead of waking
    /// for every event, which keeps the ledger's cost per request small.
    pub fn record(&self, event: UsageEvent) {
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {
                // The writer may count the event out before it is counted in: wrap, never panic.
                let queued = self.queued.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                if queued.is_multiple_of(WAKE_EVERY) {
                    self.writer.unpark();
                }
            }
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

    /// How long the oldest usage not yet in the ledger has been waiting to be written (zero
    /// when the writer has caught up). It grows while writes fail.
    pub fn unflushed_for(&self) -> Duration {
        match self.unflushed_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(unix_millis().saturating_sub(since)),
        }
    }

    /// Events that could not be queued or written, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until everything queued before this call is in the ledger (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Msg::Flush(ack)).is_err() {
            return false;
        }
        self.writer.unpark();
        done.recv_timeout(timeout).is_ok()
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn write(
    ledger: &mut Ledger,
    pending: &mut Vec<UsageEvent>,
    dropped: &AtomicU64,
    unflushed_since: &AtomicU64,
) {
    if pending.is_empty() {
        return;
    }
    match ledger.write(pending) {
        Ok(_) => {
            pending.clear();
            unflushed_since.store(0, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, queued = pending.len(), "cannot write the usage ledger; will retry");
            if pending.len() > MAX_PENDING {
                let excess = pending.len() - MAX_PENDING;
                pending.drain(..excess);
                dropped.fetch_add(excess as u64, Ordering::Relaxed);
            }
        }
    }
}

fn run(
    mut ledger: Ledger,
    rx: mpsc::Receiver<Msg>,
    flush_every: Duration,
    dropped: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    unflushed_since: Arc<AtomicU64>,
) {
    let mut pending: Vec<UsageEvent> = Vec::new();
    let unflushed = &*unflushed_since;
    loop {
        std::thread::park_timeout(flush_every);
        loop {
            match rx.try_recv() {
                Ok(Msg::Event(e)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    if pending.is_empty() && unflushed.load(Ordering::Relaxed) == 0 {
                        unflushed.store(unix_millis().max(1), Ordering::Relaxed);
                    }
                    pending.push(*e);
                }
                Ok(Msg::Flush(ack)) => {
                    write(&mut ledger, &mut pending, &dropped, unflushed);
                    // Dropping the ack unanswered tells the caller the flush failed.
                    if pending.is_empty() {
                        let _ = ack.send(());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    write(&mut ledger, &mut pending, &dropped, unflushed);
                    return;
                }
            }
        }
        write(&mut ledger, &mut pending, &dropped, unflushed);
    }
}
