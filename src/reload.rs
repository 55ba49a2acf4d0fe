//! Hot reload: the config file is watched (polled every 250 ms for a new modification time,
//! size or inode) and re-read on SIGHUP. A file that fails validation is refused: the previous
//! config stays in force, every problem is logged with its TOML path, and
//! `keygate_config_reloads_total{result="failure"}` counts it. A valid one becomes a new
//! snapshot, swapped in atomically; requests in flight finish on the snapshot they started with.
//! Listen addresses, server limits and the upstream connection settings apply at restart.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::state::{Gateway, Runtime};

const POLL: Duration = Duration::from_millis(250);
/// A change is read once the file has looked the same for this long.
const SETTLE: Duration = Duration::from_millis(100);

/// Re-reads the config file and, if it is valid, makes it the one in force. Reloads are
/// serialized, so one that read the file earlier can never swap in after one that read it later.
pub fn reload(gw: &Gateway, path: &Path) -> bool {
    let _one_at_a_time = gw
        .reload_lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Taken before reading: a change made while the file is read is seen by the watcher.
    *read_stamp(gw) = stamp(path);
    let result = &gw.metering.metrics.config_reloads;
    match crate::config::load(path) {
        Ok(config) => {
            let keys = config.keys.len();
            let next = Runtime::reloaded(config, &gw.runtime());
            // The old snapshot is freed here unless requests in flight still hold it.
            retire(gw.swap(next));
            result.with_label_values(&["success"]).inc();
            tracing::info!(target: "keygate::reload", path = %path.display(), keys, "config reloaded");
            true
        }
        Err(e) => {
            result.with_label_values(&["failure"]).inc();
            for problem in &e.problems {
                tracing::error!(target: "keygate::reload", path = %path.display(), "config reload refused: {problem}");
            }
            tracing::error!(target: "keygate::reload", "the previous config stays in force");
            false
        }
    }
}

/// How long a retired snapshot is waited for (requests in flight on it, a long stream).
const RETIRE_WAIT: Duration = Duration::from_secs(600);

/// Drops the previous snapshot once the requests still running on it have finished, then gives
/// the memory it held back to the operating system (see [`crate::memory`]).
fn retire(old: Arc<Runtime>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        drop(old);
        crate::memory::release_freed();
        return;
    };
    handle.spawn(async move {
        let since = tokio::time::Instant::now();
        while Arc::strong_count(&old) > 1 && since.elapsed() < RETIRE_WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Freeing 100,000 keys' worth of small allocations takes a moment: off the workers.
        let _ = tokio::task::spawn_blocking(move || {
            drop(old);
            crate::memory::release_freed();
        })
        .await;
    });
}

/// A reload's work, for the reload thread.
type Job = Box<dyn FnOnce() + Send>;

/// The one thread every reload runs on (started on first use). Reading and parsing a large
/// file must not hold up a worker that serves requests; and with glibc, each thread allocates
/// from an arena of its own, so doing every reload on one thread keeps a reload's garbage out
/// of the arenas the request path allocates from (where it slowed every malloc down) and in one
/// place, where it is reused by the next reload instead of piling up.
fn reload_thread() -> Option<&'static std::sync::mpsc::Sender<Job>> {
    static THREAD: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("keygate-reload".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        // A job that panics is answered `None` (its sender is dropped); the
                        // thread stays for the next one.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// [`reload`] on the reload thread (on the blocking pool if that thread cannot be had);
/// returns whether the new file is in force.
pub async fn reload_off_workers(gw: &Arc<Gateway>, path: &Path) -> bool {
    let (gw, path) = (gw.clone(), path.to_owned());
    on_reload_thread(move || reload(&gw, &path))
        .await
        .unwrap_or(false)
}

/// Runs `work` on the reload thread (on the blocking pool if that thread cannot be had).
/// `None` if the work panicked.
pub(crate) async fn on_reload_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // In the runtime's context, so the work can spawn (the old snapshot's retirement does).
    let runtime = tokio::runtime::Handle::current();
    let job: Job = Box::new(move || {
        let _context = runtime.enter();
        let _ = tx.send(work());
    });
    let unsent = match reload_thread() {
        Some(sender) => sender
            .send(job)
            .err()
            .map(|std::sync::mpsc::SendError(job)| job),
        None => Some(job),
    };
    if let Some(job) = unsent {
        drop(tokio::task::spawn_blocking(job));
    }
    rx.await.ok()
}

/// What identifies one version of the file: modification time, size and inode.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The file's current stamp. Take it before the first load, so that an edit made while the
/// gateway starts is not missed.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Waits until the file has stopped changing (a tool may still be writing it in place), for
/// at most a second, and returns its final stamp.
async fn settled(path: &Path, mut seen: Option<Stamp>) -> Option<Stamp> {
    for _ in 0..10 {
        tokio::time::sleep(SETTLE).await;
        let now = stamp(path);
        if now == seen {
            break;
        }
        seen = now;
    }
    seen
}

/// The SIGHUP listener; install it early, before the config is first read, so a SIGHUP sent
/// during start-up is not fatal.
pub fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); reloading on file changes only");
            None
        }
    }
}

/// The stamp of the file version the last reload read (or the first load, see [`watch`]).
fn last_read(gw: &Gateway) -> Option<Stamp> {
    *read_stamp(gw)
}

fn read_stamp(gw: &Gateway) -> std::sync::MutexGuard<'_, Option<Stamp>> {
    gw.read_stamp
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reloads on every change of the file and on SIGHUP, until `shutdown` resolves. A change is
/// a stamp other than the one of the version read last: `loaded` (taken before the config in
/// force was first read) until a reload reads another. So an edit that reloads by itself (the
/// admin API's) is not read a second time by the watcher.
pub async fn watch(
    gw: Arc<Gateway>,
    path: PathBuf,
    loaded: Option<Stamp>,
    mut hup: Option<tokio::signal::unix::Signal>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    {
        let mut read = read_stamp(&gw);
        if read.is_none() {
            *read = loaded;
        }
    }
    let mut tick = tokio::time::interval(POLL);
    tokio::pin!(shutdown);
    loop {
        let hup_signal = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            _ = hup_signal => {
                tracing::info!(target: "keygate::reload", "SIGHUP received");
                reload_off_workers(&gw, &path).await;
            }
            _ = tick.tick() => {
                let now = stamp(&path);
                if now.is_some() && now != last_read(&gw) {
                    // Unless another reload (an admin edit, SIGHUP) read it meanwhile.
                    let settled = settled(&path, now).await;
                    if settled != last_read(&gw) {
                        reload_off_workers(&gw, &path).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_answers_none_and_the_thread_takes_the_next_one() {
        let panicked = on_reload_thread(|| -> u8 { panic!("a reload that panics") }).await;
        assert_eq!(panicked, None);
        assert_eq!(on_reload_thread(|| 1_u8).await, Some(1));
        // Still the one thread: reloads never run side by side.
        let name = on_reload_thread(|| std::thread::current().name().map(str::to_owned)).await;
        assert_eq!(name.flatten().as_deref(), Some("keygate-reload"));
    }
}
