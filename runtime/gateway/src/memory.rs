//! How tbgw uses the C allocator (glibc's malloc), which decides much of its
//! resident memory.
//!
//! glibc gives each thread that meets contention an arena of its own (up to
//! eight per core) and keeps what is freed in each for reuse. The gateway's
//! threads (tokio workers, converter workers, the store) all allocate on the
//! data path, so with the defaults a steady load ends up spread over a
//! dozen arenas, each holding its own high-water mark: 100,000 Modbus tags
//! a second held 70 MB, 36 MB of it in arenas mostly free. Two arenas hold
//! the same work in 52 MB for about 1% more CPU of one core (the modbus
//! bench). And start-up builds large transient JSON trees (73 MB for a
//! `modbus.json` of 100,000 tags), freed before the first poll.

/// Limit glibc to two malloc arenas. Call first thing in `main`, before any
/// thread starts; `MALLOC_ARENA_MAX` in the environment still wins.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets an allocator tunable; M_ARENA_MAX only caps
        // how many arenas later threads may create, and no memory is touched.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hand memory freed since start-up back to the system, so that the RSS is
/// what the gateway uses rather than what reading its configuration took.
pub fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; it has
    // no preconditions and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
