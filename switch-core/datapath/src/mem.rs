//! Handing freed heap memory back to the kernel.
//!
//! Installing, dumping or restoring a million flows builds and frees a few hundred
//! bytes of temporaries per flow (parsed flows, rebuilt flows, journal text) in the
//! malloc arena of the thread that did it. glibc keeps freed memory in its arenas for
//! reuse and returns it only from the top of the main heap, so without help the
//! daemon's resident size would stay at the peak of its largest bundle. After such a
//! job the control side calls [`release_free_memory`]; the packet path never does.

/// Returns the free pages of every malloc arena to the kernel (glibc's
/// `malloc_trim(0)`, which walks all arenas). Costs a walk of the free lists, a few
/// milliseconds after a million-flow bundle; a no-op where the C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganizes the allocator's own free lists; it is
    // thread-safe (it takes each arena's lock) and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
