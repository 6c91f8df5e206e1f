//! The allocator setting the `medret` binary and the benchmarks run with.
//!
//! Why: a DenseNet step allocates and frees activations and gradients of tens of
//! megabytes each, hundreds of times. glibc's malloc hands every block over 32 MiB back to
//! the kernel on free, so the next step faults each 4 KiB page in again, zeroed: a tenth
//! of a DenseNet-121 training step (perf, `bench/densenet.sh`). The binaries use mimalloc
//! (`#[global_allocator]`, declared where `main` is), and [`keep_freed_memory`] turns off
//! its purging of freed memory, which otherwise returns it to the OS after 10 ms. The cost
//! is that the process keeps its peak footprint, which a training or serving process
//! reaches again at the next batch anyway.

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3); libmimalloc-sys names no constant.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to purge freed memory, unless `MIMALLOC_PURGE_DELAY` says
/// otherwise. Harmless in a process whose global allocator is not mimalloc.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// mimalloc's default purge delay (ms): freed memory goes back to the OS shortly after.
const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Lets mimalloc return freed memory to the OS again (its default), unless
/// `MIMALLOC_PURGE_DELAY` says otherwise: for `medret serve`, where a burst of large
/// uploads is decoded on many blocking threads, each of whose heaps would otherwise keep
/// its peak for good (measured: 16 uploads of 8192 x 8192 pixels one at a time left a
/// peak of 5.8 GB instead of the 2.4 GB one of them takes).
pub fn return_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, DEFAULT_PURGE_DELAY_MS) };
    }
}
