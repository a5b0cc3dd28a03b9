//! Allocator settings for training processes.
//!
//! A training step allocates and frees the same large activation and gradient buffers again and
//! again. glibc's `malloc` serves blocks above its mmap threshold with fresh `mmap`s and gives
//! freed memory back to the kernel, so every step pays page faults for memory it just released:
//! a flat profile of an SFT step (`rlhf-perf`, small size) had 23% of its samples in the kernel,
//! mostly page-fault handling. [`tune_allocator`] keeps such blocks in the heap instead; the
//! step then ran 20–25% faster (README, "Benchmarks").
//!
//! It changes process-wide settings, so a library never calls it on its own: the project's
//! binaries call it first thing, and a downstream program may.

/// Raises glibc's mmap threshold to its maximum (32 MiB on 64-bit), keeps up to 1 GiB of freed
/// memory instead of trimming it, and grows the heap 64 MiB at a time. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters (glibc takes its own lock); a
    // refused value leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Hands the memory the process has freed back to the kernel. The allocator keeps freed blocks
/// for reuse ([`tune_allocator`] keeps more of them, and each thread has its own arena), so the
/// activations the training steps free stay resident; a checkpoint or an export written from
/// another thread would then add its bytes on top of them, and the peak would be their sum
/// rather than the larger of the two. Called before writing a checkpoint or an export, and
/// before the memory estimate reads the resident set. A no-op off glibc.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}
