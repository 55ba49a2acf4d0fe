//! Giving freed memory back to the operating system after a config reload.
//!
//! A reload parses the file and builds a whole new snapshot while the old one still serves;
//! once the old one is dropped its memory is free inside the allocator but, with glibc, stays
//! resident (scattered between live allocations, and in the arena of the thread that did the
//! work). With 100,000 keys that is tens of megabytes per reload, so resident memory would
//! ratchet up. `malloc_trim` hands the free pages back; every reload runs on one thread (see
//! [`crate::reload`]), so its garbage stays in one arena.

/// Returns the allocator's free pages to the operating system (glibc only; elsewhere nothing).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only walks glibc's own free lists, under
    // glibc's locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
