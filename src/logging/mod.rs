//! Log lines go to stderr through a buffer that a background thread writes out every
//! [`FLUSH_EVERY`], or sooner once [`WAKE_AT`] bytes wait: a busy gateway makes one `write` per
//! batch, and a request never wakes another thread to log its line. A slow stderr never blocks
//! a request: past [`MAX_BUFFERED`] bytes, lines are dropped and counted, and the count is
//! written out when there is room again. The returned guard writes what is left at exit.

pub mod json;
pub mod text;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The writer is woken early once this many bytes wait.
const WAKE_AT: usize = 64 * 1024;
/// Past this many waiting bytes, lines are dropped (and counted).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

/// Where the log subscriber writes; cheap to clone.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
    writer: std::thread::Thread,
}

/// Writes what is left when dropped (at exit).
pub struct FlushGuard {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl BatchedStderr {
    /// Starts the writer thread; keep the guard until exit.
    pub fn start() -> std::io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("keygate-log".into())
            .spawn(move || run(&for_thread))?;
        Ok((
            Self {
                shared: shared.clone(),
                writer: handle.thread().clone(),
            },
            FlushGuard {
                shared,
                handle: Some(handle),
            },
        ))
    }
}

fn run(shared: &Shared) {
    let mut out = Vec::with_capacity(WAKE_AT * 2);
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let stopping = shared.stop.load(Ordering::Acquire);
        std::mem::swap(
            &mut out,
            &mut shared.buf.lock().unwrap_or_else(PoisonError::into_inner),
        );
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "keygate: {dropped} log lines were dropped: stderr was too slow"
            );
        }
        if !out.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&out);
            let _ = stderr.flush();
            out.clear();
        }
        if stopping {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Write for BatchedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let waiting = {
            let mut buf = self
                .shared
                .buf
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if buf.len() + line.len() > MAX_BUFFERED {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(line.len());
            }
            buf.extend_from_slice(line);
            buf.len()
        };
        if waiting >= WAKE_AT && waiting - line.len() < WAKE_AT {
            self.writer.unpark();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = BatchedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A log writer for tests that keeps what it is given.
#[cfg(test)]
pub(crate) mod captured {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Logs `events` through `ours`, then through `theirs` (each built around the writer it
    /// is given), and checks that they wrote the same lines but for the time stamps' values
    /// (the two run at different instants). A stamp starts at byte `stamp_at` of its line; it
    /// is checked for shape and set aside. `check` sees every line of both.
    pub fn assert_same_lines<A, B>(
        ours: impl Fn(Captured) -> A,
        theirs: impl Fn(Captured) -> B,
        stamp_at: usize,
        check: impl Fn(&str),
        events: impl Fn(),
    ) where
        A: tracing::Subscriber + Send + Sync + 'static,
        B: tracing::Subscriber + Send + Sync + 'static,
    {
        let (a, b) = (Captured::default(), Captured::default());
        tracing::subscriber::with_default(ours(a.clone()), &events);
        tracing::subscriber::with_default(theirs(b.clone()), &events);
        let (ours, theirs) = (a.text(), b.text());
        assert_eq!(
            ours.lines().count(),
            theirs.lines().count(),
            "{ours}\n{theirs}"
        );
        assert!(!ours.is_empty());
        let stamp = stamp_at..stamp_at + 27;
        for (a, b) in ours.lines().zip(theirs.lines()) {
            for line in [a, b] {
                assert!(
                    humantime::parse_rfc3339(&line[stamp.clone()]).is_ok(),
                    "{line}"
                );
                check(line);
            }
            assert_eq!(&a[..stamp.start], &b[..stamp.start]);
            assert_eq!(&a[stamp.end..], &b[stamp.end..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_in_order_and_bounded() {
        let (mut w, guard) = BatchedStderr::start().unwrap();
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        {
            let buf = w.shared.buf.lock().unwrap();
            assert!(buf.is_empty() || buf.ends_with(b"one\ntwo\n"));
        }
        let big = vec![b'x'; MAX_BUFFERED];
        w.write_all(&big).unwrap();
        w.write_all(&big).unwrap();
        assert!(w.shared.buf.lock().unwrap().len() <= MAX_BUFFERED);
        drop(guard);
    }
}
