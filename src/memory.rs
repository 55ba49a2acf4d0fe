//! Giving freed memory back to the operating system after a config reload.
//!
//! A reload parses the file and builds a whole new snapshot while the old one still serves;
//! once the old one is dropped its memory is free inside the allocator but, with glibc, stays
//! resident (scattered between live allocations, and in the arena of the thread that did the
//! work). With 100,000 keys that is tens of megabytes per reload, so resident memory would
//! ratchet up. `malloc_trim` hands the free pages back; every reload runs on one thread (see
//! [`crate::reload`]), so its garbage stays in one arena.
//!
//! An edit through the admin API reads and rewrites the whole file: blocks of its size
//! (34 MB with 100,000 keys). glibc maps such blocks and unmaps them when freed, but raises
//! its mapping threshold to the size of each one freed, so the next edit's blocks came from
//! the heap instead, where they stayed resident between live allocations (77 MB grew to
//! 116–152 MB over ten edits). [`configure`] fixes the threshold.

/// Blocks from this size up are always mapped on their own and unmapped when freed. Nothing on
/// the request path allocates that much but a rare large body (glibc maps blocks from 128 KiB
/// up until its threshold has moved, so such a body was mapped before too).
const MAP_FROM: i32 = 4 << 20;

/// Sets the allocator up for a long-running gateway (glibc only; elsewhere nothing): a fixed
/// mapping threshold, so large transient blocks never stay resident. Call once at start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes no pointer; setting the threshold is safe at any time (glibc
    // takes its own lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAP_FROM);
        // Fixing the mapping threshold also fixes the trim threshold at its 128 KiB default,
        // which would give the heap's top back (and take it again) on ordinary request churn;
        // glibc's own moving threshold keeps it at twice the mapping threshold, so do that.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MAP_FROM);
    }
}

/// Returns the allocator's free pages to the operating system (glibc only; elsewhere nothing).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only walks glibc's own free lists, under
    // glibc's locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
